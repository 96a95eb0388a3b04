"""One rank's training run, read top to bottom.

``train()`` is the whole loop; ``Recipe`` holds its parts as named methods (set-up, a
train step, the end of an epoch, checkpoints), the shape of torchtune's recipes. Only
global rank 0 writes: ``{out}/checkpoint/`` (verified before it is resumed, see
``meldflow.training.checkpoint``), ``{out}/best/``, ``{out}/tensorboard/``, ``history.json``,
``metrics.json``, predictions and plots.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import time
from collections.abc import Iterator
from pathlib import Path

from meldflow import MeldflowError
from meldflow.labels import EMOTIONS
from meldflow.provenance import claim_run_dir, read_run, record_in_run
from meldflow.training import checkpoint
from meldflow.training.batches import (
    Encoder,
    Step,
    class_weights,
    epoch_steps,
    micro_batches,
    resolve_workers,
    to_device,
)
from meldflow.training.classifier import EmotionClassifier, load_florence
from meldflow.training.dataset import Source, plan_epoch
from meldflow.training.distributed import (
    barrier,
    broadcast_from_rank0,
    device_of,
    init_distributed,
    sum_over_ranks,
)
from meldflow.training.identity import identity_of, run_snapshot
from meldflow.training.progress import Progress
from meldflow.training.scoring import score_split, write_results
from meldflow.training.train_options import TrainConfig

log = logging.getLogger("meldflow.training")


def train(cfg: TrainConfig, identity: dict | None = None) -> dict:
    """Train (or resume) in this process, one DDP rank of ``WORLD_SIZE``; returns metrics.

    ``identity`` (computed here if not given) decides what may be resumed: only a
    checkpoint of the same run; a folder holding another run is moved aside first.
    """
    run = Recipe(cfg, identity)
    if run.finished:
        log.info("training already finished: %s", run.out / "metrics.json")
        return json.loads((run.out / "metrics.json").read_text())
    run.setup()
    while not run.done:
        steps = run.epoch_plan()
        batches = run.read(steps)
        for step in steps:
            run.train_step(step, batches)
        if run.epoch_complete:  # not when max_steps ends the run inside an epoch
            run.end_epoch()
    return run.finish()


class Recipe:
    """The parts of one rank's run; ``train()`` calls them in order."""

    def __init__(self, cfg: TrainConfig, identity: dict | None = None):
        self.cfg, self.out = cfg, Path(cfg.out)
        self.rank, self.world, local = init_distributed()
        self.device = device_of(local)
        self.checkpoints = self.out / checkpoint.CHECKPOINT_DIR
        resume = None
        if self.rank == 0:  # the model was verified once, where the identity was computed
            claim_run_dir(self.out, identity or identity_of(cfg, self.world))
            resume = self.find_checkpoint()
        # Every rank resumes from the checkpoint rank 0 verified.
        self.resume_from = broadcast_from_rank0(resume)
        self.identity = read_run(self.out)
        self.snapshot = run_snapshot(self.identity, cfg.hf_home)
        self.finished = (self.out / "metrics.json").is_file()
        self.state = {"epoch": 0, "step_in_epoch": 0, "step": 0, "history": [], "best_f1": -1.0}

    # --- set-up ---------------------------------------------------------------------------

    def setup(self) -> None:
        """Model, data, optimizer and schedule, then this run's checkpoint if there is one."""
        import torch

        cfg = self.cfg
        seed_all(cfg.seed)
        florence, self.processor = load_florence(self.snapshot)
        seed_all(cfg.seed)  # the heads start identical on every rank and in every run
        self.model = EmotionClassifier(florence)
        self.model.freeze_unused(cfg.modalities, cfg.freeze_vision)
        if cfg.grad_checkpointing:
            florence.activation_checkpointing_enable()
        self.model.to(self.device)
        self.setup_data()
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optim = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        # a plain function: LambdaLR keeps its state_dict free of it
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.optim, lambda s: self.lr_factor(s))
        self.use_amp = self.device.type == "cuda" and cfg.bf16
        self.ddp = self.model
        if self.world > 1:
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda"
                else None)
        if self.resume_from is not None:
            self.load_checkpoint(Path(self.resume_from))
        self.progress = Progress(self.out, self.rank, self.total, self.state["step"],
                                 cfg.global_batch)
        self.model.train()
        self.started = time.monotonic()

    def setup_data(self) -> None:
        """The training rows, the epoch geometry and the class weights; dev for epoch ends."""
        cfg = self.cfg
        self.train_src = Source(cfg.train or None, cfg.train_csv, cfg.modalities,
                                cfg.exclusions())
        if self.train_src.excluded:
            log.info("%d training rows left out (exclude_flags %s, exclude_max_wer %s)",
                     self.train_src.excluded, cfg.exclude_flags, cfg.exclude_max_wer)
        self.encoder = Encoder(self.processor, cfg, self.train_src)
        self.streams = cfg.streams or self.world
        if self.streams % self.world:
            raise MeldflowError(f"streams ({self.streams}) must be a multiple of the world "
                                f"size ({self.world})")
        if cfg.global_batch % (self.streams * cfg.grad_accum):
            raise MeldflowError("global_batch must divide by streams x grad_accum")
        self.local_batch = cfg.global_batch // self.streams
        units = self.train_src.units
        self.emotions = {u: self.train_src.unit_labels(u) for u in units}
        self.weights = (class_weights([e for u in units for e in self.emotions[u]])
                        if cfg.class_weighting else dict.fromkeys(EMOTIONS, 1.0))
        self.steps_per_epoch = len(plan_epoch(units, self.streams, self.local_batch, cfg.seed,
                                              0)[0]) // self.local_batch
        self.total = self.steps_per_epoch * cfg.epochs
        if cfg.max_steps:
            self.total = min(self.total, cfg.max_steps)
        self.dev_src = (Source(cfg.dev or None, cfg.dev_csv, cfg.modalities)
                        if (cfg.dev or cfg.dev_csv) else None)
        self.workers = resolve_workers(cfg.loader_workers, self.device.type)

    def lr_factor(self, s: int) -> float:
        """Linear warm-up over ``warmup_ratio`` of the steps, then linear decay to 0."""
        warm = max(1, int(self.cfg.warmup_ratio * self.total))
        return (s + 1) / warm if s < warm else max(0.0, (self.total - s) / max(1, self.total
                                                                                - warm))

    # --- the loop's parts -----------------------------------------------------------------

    @property
    def done(self) -> bool:
        return self.state["step"] >= self.total or self.state["epoch"] >= self.cfg.epochs

    @property
    def epoch_complete(self) -> bool:
        return self.state["step_in_epoch"] >= self.steps_per_epoch

    def epoch_plan(self) -> list[Step]:
        """This rank's remaining steps of the current epoch, up to the run's total."""
        st, cfg = self.state, self.cfg
        plan = plan_epoch(self.train_src.units, self.streams, self.local_batch, cfg.seed,
                          st["epoch"])
        first = st["step_in_epoch"]
        last = min(self.steps_per_epoch, first + self.total - st["step"])
        return epoch_steps(plan, first, last, self.local_batch, self.rank, self.world,
                           cfg.grad_accum, cfg.seed, st["epoch"],
                           lambda u, r: self.weights[self.emotions[u][r]])

    def read(self, steps: list[Step]) -> Iterator[dict]:
        """The encoded micro-batches of ``steps`` in order (from loader workers if any)."""
        jobs = [job for step in steps for job in step.micro]
        return iter(micro_batches(self.encoder, self.train_src, jobs, self.workers))

    def loss(self, item: dict, step: Step):
        return classification_loss(self.ddp, item, self.weights, step.emotion_norm,
                                   step.sentiment_norm, self.device, self.use_amp)

    def train_step(self, step: Step, batches: Iterator[dict]) -> float:
        """One optimizer step over this rank's micro-batches (taken from ``batches``);
        returns the global batch's loss."""
        st = self.state
        self.optim.zero_grad(set_to_none=True)
        loss_sum = 0.0
        for _ in step.micro:
            loss = self.loss(next(batches), step)
            # DDP averages gradients over ranks: scale back up to the global sum.
            (loss * self.world).backward()
            loss_sum += float(loss.detach())
        lr = self.sched.get_last_lr()[0]
        self.optim.step()
        self.sched.step()
        st["step"] += 1
        st["step_in_epoch"] = step.index + 1
        loss_sum = sum_over_ranks(loss_sum, self.device)
        st["history"].append({"step": st["step"], "epoch": st["epoch"], "loss": loss_sum})
        self.progress.step(st["step"], st["epoch"], loss_sum, lr)
        if st["step"] % self.cfg.checkpoint_every == 0:
            self.save_checkpoint()
        return loss_sum

    def end_epoch(self) -> None:
        """Dev metrics (rank 0), the best model so far kept in ``best/``, a checkpoint."""
        st = self.state
        st["epoch"] += 1
        st["step_in_epoch"] = 0
        if self.dev_src is not None and self.rank == 0:
            m = score_split(self.model, self.processor, self.cfg, self.dev_src, self.device)
            e = m["emotion"]
            st["history"].append({"epoch": st["epoch"], "dev_weighted_f1": e["weighted_f1"],
                                  "dev_macro_f1": e["macro_f1"], "dev_accuracy": e["accuracy"]})
            log.info("epoch %d: dev weighted F1 %.3f, macro F1 %.3f, accuracy %.3f",
                     st["epoch"], e["weighted_f1"], e["macro_f1"], e["accuracy"])
            self.progress.dev(st["step"], st["epoch"], m)
            if e["weighted_f1"] > st["best_f1"]:
                st["best_f1"] = e["weighted_f1"]
                self.save_best()
            self.model.train()
        self.save_checkpoint()

    def finish(self) -> dict:
        """The last checkpoint; then (rank 0) the best model on dev and test."""
        self.save_checkpoint()
        log.info("rank %d: %d steps in %.1f s (%s)", self.rank, self.state["step"],
                 time.monotonic() - self.started, self.device.type if self.device.type != "cpu"
                 else f"cpu, {torch_threads()} compute threads")
        result: dict = {}
        if self.rank == 0:
            if not (self.out / "best").is_dir():  # no dev set, or max_steps cut the epoch
                self.save_best()
            result = write_results(self.cfg, self.out, self.device, self.state, self.identity,
                                   self.world, self.progress)
        self.progress.close()
        barrier()
        return result

    # --- checkpoints ----------------------------------------------------------------------

    def save_best(self) -> None:
        """The model as it is now, in ``best/``, with what predict needs to use it."""
        self.model.save(self.processor, self.out / "best", dataclasses.asdict(self.cfg),
                        self.identity.get("preprocessing"))

    def find_checkpoint(self) -> str | None:
        """(Rank 0) the newest checkpoint of this run that verifies; what was passed over,
        and why, goes to the log and to run.json."""
        if (self.out / "metrics.json").is_file():
            return None
        removed = checkpoint.prepare(self.checkpoints, self.out / "best")
        found = checkpoint.find_resumable(self.checkpoints, read_run(self.out)["digest"])
        passed_over, found.rejected = found.rejected, removed + found.rejected
        if found.rejected:
            record_in_run(self.out, "resumes", found.as_record())
        if passed_over:
            if found.path is None:
                log.warning("no checkpoint of this run verifies: training starts fresh")
            else:
                log.warning("resuming from the previous checkpoint %s (step %d) instead",
                            found.path, found.step)
        return str(found.path) if found.path else None

    def save_checkpoint(self) -> None:
        if self.rank == 0:
            checkpoint.save({"model": self.model.state_dict(), "optim": self.optim.state_dict(),
                             "sched": self.sched.state_dict(), "rng": rng_state(),
                             "state": self.state, "config": dataclasses.asdict(self.cfg),
                             "identity": self.identity["digest"]},
                            self.checkpoints, self.identity["digest"], self.state["step"])
        barrier()

    def load_checkpoint(self, path: Path) -> None:
        saved = checkpoint.load(path)
        self.model.load_state_dict(saved["model"])
        self.optim.load_state_dict(saved["optim"])
        self.sched.load_state_dict(saved["sched"])
        set_rng_state(saved["rng"])
        self.state = saved["state"]
        log.info("resumed from %s at step %d (its SHA-256 verified)", path, self.state["step"])


def classification_loss(model, item: dict, weights: dict[str, float], emotion_norm: float,
                        sentiment_norm: float, device, use_amp: bool = False):
    """Class-weighted emotion loss plus sentiment loss of one micro-batch, each as its share
    of the global batch's weighted mean (``*_norm``: the global batch's weighted count)."""
    import torch
    import torch.nn.functional as F

    emo = torch.tensor(item["emotion"], device=device)
    sen = torch.tensor(item["sentiment"], device=device)
    w = torch.tensor(item["weight"], device=device)
    cw = torch.tensor([weights[EMOTIONS[e]] for e in item["emotion"]], device=device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
        emo_logits, sen_logits = model(**to_device(item["batch"], device))
    return ((F.cross_entropy(emo_logits.float(), emo, reduction="none") * w * cw).sum()
            / emotion_norm
            + (F.cross_entropy(sen_logits.float(), sen, reduction="none") * w).sum()
            / sentiment_norm)


def seed_all(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    import numpy as np
    import torch

    return {"python": random.getstate(), "numpy": np.random.get_state(),
            "torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    import numpy as np
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()
