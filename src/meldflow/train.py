"""Florence-2 fine-tuning for emotion and sentiment, launched through submitit.

Owns ``{out}/checkpoint/state.pt``, ``{out}/best/`` (save_pretrained model + processor),
``{out}/history.json``, ``{out}/metrics.json``, ``{out}/predictions_{split}.parquet`` and
the plots. Only global rank 0 writes.

The classifier is two linear heads (7 emotions, 3 sentiments) on the masked mean of
Florence-2's encoder states, which hold the image tokens and the prompt together. Why not
score label strings with the decoder: in our trials the tiny random model's decoder
learned only the label prior (text-only loss flat at the prior after 15 epochs on the
sample) while the heads fit in a few epochs; a head also needs one encoder pass per clip
instead of one decoder pass per label, and its softmax is a probability for every class.
The decoder and LM head are unused, so they are frozen (DDP needs every trainable weight
to get a gradient). ``best/`` holds the Florence-2 model and processor (save_pretrained)
and ``heads.safetensors``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import shutil
import time
from pathlib import Path

from meldflow import MeldflowError
from meldflow.dataset import Source, frames_image, label_index, plan_epoch, prompt
from meldflow.ingest import EMOTIONS, SENTIMENTS
from meldflow.options import LaunchConfig, TrainConfig  # noqa: F401 (re-exported)
from meldflow.probe import ClipError, check_clip_file
from meldflow.provenance import RUN_FILE, claim_run_dir, environment, read_run, run_identity
from meldflow.stage import FLORENCE_FILES, FLORENCE_TINY_REPO, verified_snapshot

log = logging.getLogger(__name__)
PAIRS = [(e, s) for e in EMOTIONS for s in SENTIMENTS]


# --- distributed set-up ---------------------------------------------------------------

def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def rank_world() -> tuple[int, int]:
    d = _dist()
    return (d.get_rank(), d.get_world_size()) if d else (0, 1)


def init_distributed() -> tuple[int, int, int]:
    """(rank, world, local_rank) from torchrun/submitit variables; gloo on CPU, NCCL on GPU."""
    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
    return rank, world, local


def barrier() -> None:
    d = _dist()
    if d:
        d.barrier()


# --- model ----------------------------------------------------------------------------

def florence_snapshot(hf_home: str | Path, repo_id: str,
                      revision: str = "main") -> tuple[Path, dict[str, str]]:
    """The staged, verified model folder and its file hashes; fails in seconds, naming
    ``meldflow stage``, if it is missing, incomplete or damaged."""
    hint = (f"run `meldflow stage --hf-home {hf_home} --models florence "
            + ("--tiny`" if repo_id == FLORENCE_TINY_REPO else f"--florence-repo {repo_id}`")
            + " first (on a node that reaches the Hub, for a real checkpoint)")
    return verified_snapshot(hf_home, repo_id, revision, FLORENCE_FILES, "Florence-2 model",
                             hint)


def load_florence(snap: Path):
    """Model and processor from a verified snapshot folder, never the network."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    from transformers import AutoProcessor, Florence2ForConditionalGeneration

    # The snapshot folder itself, not the repo id: a folder never touches the network,
    # even where huggingface_hub was imported before HF_HUB_OFFLINE was set.
    model = Florence2ForConditionalGeneration.from_pretrained(snap, local_files_only=True)
    processor = AutoProcessor.from_pretrained(snap, local_files_only=True)
    return model, processor


def identity_of(cfg: TrainConfig, world: int) -> dict:
    """The run identity of ``cfg`` trained by ``world`` processes (see meldflow.provenance)."""
    snap, files = florence_snapshot(cfg.hf_home, cfg.model_repo, cfg.revision)
    return run_identity(cfg, cfg.streams or world, snap.name, files)


class Encoder:
    """Turns rows into model inputs: the prompt text and, for vision, the frame grid."""

    def __init__(self, processor, cfg: TrainConfig, source: Source):
        self.processor, self.cfg, self.source = processor, cfg, source
        self.tok = processor.tokenizer
        ip = processor.image_processor.size
        self.image_size = (ip.get("width", ip.get("shortest_edge", 768)),
                           ip.get("height", ip.get("shortest_edge", 768)))

    def inputs(self, rows: list[dict], rng: random.Random | None = None):
        cfg = self.cfg
        texts = [prompt(r, self.source, cfg.text_source, cfg.context_turns)
                 if "text" in cfg.modalities else "" for r in rows]
        if "vision" in cfg.modalities:
            images = [frames_image(r.get("frames") or [], cfg.augment and rng is not None, rng,
                                   self.image_size) for r in rows]
            return self.processor(images=images, text=texts, return_tensors="pt", padding=True,
                                  truncation=True, max_length=200)
        return self.tok(texts, return_tensors="pt", padding=True, truncation=True,
                        max_length=200)


HEADS_FILE = "heads.safetensors"


def _emotion_heads_class():
    import torch

    class EmotionHeads(torch.nn.Module):
        """Florence-2 encoder states, mean-pooled over real tokens, into two classifiers."""

        def __init__(self, florence):
            super().__init__()
            self.florence = florence
            d = florence.config.text_config.d_model
            self.emotion = torch.nn.Linear(d, len(EMOTIONS))
            self.sentiment = torch.nn.Linear(d, len(SENTIMENTS))
            for module in (florence.get_decoder(), florence.get_output_embeddings()):
                for p in module.parameters():
                    p.requires_grad_(False)
            # The input embeddings are shared with the frozen decoder; keep them trainable.
            florence.get_input_embeddings().weight.requires_grad_(True)

        def encode(self, input_ids, attention_mask, pixel_values=None):
            f = self.florence
            embeds = f.get_input_embeddings()(input_ids)
            if pixel_values is not None:
                feats = f.get_image_features(pixel_values.to(embeds.dtype))
                mask = (input_ids == f.config.image_token_id).unsqueeze(-1).expand_as(embeds)
                embeds = embeds.masked_scatter(mask, feats.to(embeds.dtype))
            return f.get_encoder()(inputs_embeds=embeds,
                                   attention_mask=attention_mask).last_hidden_state

        def forward(self, input_ids, attention_mask, pixel_values=None):
            h = self.encode(input_ids, attention_mask, pixel_values)
            m = attention_mask.unsqueeze(-1).to(h.dtype)
            pooled = (h * m).sum(1) / m.sum(1).clamp(min=1)
            return self.emotion(pooled.float()), self.sentiment(pooled.float())

    return EmotionHeads


def build_heads(florence, heads_path: Path | None = None):
    """The classifier around ``florence``; loads trained heads from ``heads_path`` if given."""
    heads = _emotion_heads_class()(florence)
    if heads_path is not None:
        from safetensors.torch import load_file

        state = load_file(str(heads_path))
        heads.emotion.load_state_dict({k[8:]: v for k, v in state.items()
                                       if k.startswith("emotion.")})
        heads.sentiment.load_state_dict({k[10:]: v for k, v in state.items()
                                         if k.startswith("sentiment.")})
    return heads


def save_model(heads, processor, out: Path, cfg: TrainConfig | None = None) -> None:
    """Florence-2 + processor via save_pretrained, the heads beside them; atomically."""
    from safetensors.torch import save_file

    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    heads.florence.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    state = {f"emotion.{k}": v.detach().cpu().contiguous()
             for k, v in heads.emotion.state_dict().items()}
    state |= {f"sentiment.{k}": v.detach().cpu().contiguous()
              for k, v in heads.sentiment.state_dict().items()}
    save_file(state, str(tmp / HEADS_FILE))
    (tmp / "labels.json").write_text(json.dumps({"emotion": EMOTIONS, "sentiment": SENTIMENTS}))
    if cfg is not None:  # how to build inputs at prediction time
        (tmp / "meldflow_train.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=1))
    old = out.with_name(f".{out.name}.old{os.getpid()}")
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def load_trained(path: str | Path, device="cpu"):
    """(heads model, processor) saved by training; offline, from a plain folder."""
    from transformers import AutoProcessor, Florence2ForConditionalGeneration

    path = Path(path)
    if not (path / HEADS_FILE).is_file():
        raise MeldflowError(f"{path} is not a trained meldflow model (no {HEADS_FILE})")
    florence = Florence2ForConditionalGeneration.from_pretrained(path, local_files_only=True)
    processor = AutoProcessor.from_pretrained(path, local_files_only=True)
    return build_heads(florence, path / HEADS_FILE).to(device).eval(), processor


# --- training -------------------------------------------------------------------------

def _atomic_torch_save(obj, path: Path) -> None:
    import torch

    from meldflow.storage import atomic_path

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def class_weights(labels: list[str]) -> dict[str, float]:
    """Inverse-frequency weights, normalised to mean 1 over the training rows."""
    counts = {e: labels.count(e) for e in EMOTIONS}
    raw = {e: (len(labels) / (len(EMOTIONS) * c) if c else 0.0) for e, c in counts.items()}
    mean = sum(raw[lab] for lab in labels) / max(1, len(labels))
    return {e: w / mean for e, w in raw.items()} if mean else raw


def _rng_state() -> dict:
    import numpy as np
    import torch

    return {"python": random.getstate(), "numpy": np.random.get_state(),
            "torch": torch.get_rng_state()}


def _set_rng_state(state: dict) -> None:
    import numpy as np
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def _seed_all(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


MODEL_INPUTS = ("input_ids", "attention_mask", "pixel_values")


def _batch_to(batch, device) -> dict:
    return {k: batch[k].to(device) for k in MODEL_INPUTS if k in batch}


def resolve_workers(requested: int, device_type: str) -> int:
    """Loader worker processes per rank: ``requested``, or for -1 a choice by device.

    On a GPU the step is fast and JPEG decoding would starve it, so each rank takes up to
    4 of the CPUs it was given, one left for itself. On the CPU the step needs every core,
    and workers would only compete with it (see benchmarks/bench_train.py).
    """
    if requested >= 0:
        return requested
    if device_type != "cuda":
        return 0
    cpus = len(os.sched_getaffinity(0))
    if os.environ.get("SLURM_CPUS_PER_TASK", "").isdigit():
        cpus = min(cpus, int(os.environ["SLURM_CPUS_PER_TASK"]))
    return max(0, min(4, cpus - 1))


class MicroBatches:
    """Map-style dataset: item i is this rank's micro-batch i, read and encoded.

    Each item carries its own augmentation seed, so any number of loader workers (each
    taking whole items) gives exactly the batches of the single-process reader.
    """

    def __init__(self, encoder: Encoder, source: Source, jobs: list):
        self.encoder, self.source, self.jobs = encoder, source, jobs

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, i: int) -> dict:
        picks, seed = self.jobs[i]
        rows = [self.source.rows(u)[r] for u, r, _ in picks]
        rng = random.Random(seed) if self.encoder.cfg.augment else None
        batch = self.encoder.inputs(rows, rng)
        labels = [label_index(r) for r in rows]
        return {"batch": {k: batch[k] for k in MODEL_INPUTS if k in batch},
                "emotion": [e for e, _ in labels], "sentiment": [s for _, s in labels],
                "weight": [w for _, _, w in picks]}


def _worker_init(_: int) -> None:
    import signal

    import torch

    # SLURM signals every process of the step; only the main process may checkpoint and
    # requeue (submitit's handler is inherited through fork).
    for sig in (signal.SIGUSR2, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    torch.set_num_threads(1)


def micro_batches(encoder: Encoder, source: Source, jobs: list, workers: int = 0):
    """The encoded micro-batches of ``jobs`` in order, read by ``workers`` processes (0: here)."""
    data = MicroBatches(encoder, source, jobs)
    if workers <= 0 or len(jobs) < 2:
        return (data[i] for i in range(len(data)))
    import torch

    return torch.utils.data.DataLoader(data, batch_size=None, shuffle=False,
                                       num_workers=min(workers, len(jobs)),
                                       worker_init_fn=_worker_init, prefetch_factor=2)


def train(cfg: TrainConfig, identity: dict | None = None) -> dict:
    """Train (or resume) in this process, one DDP rank of ``WORLD_SIZE``; returns metrics.

    ``identity`` (computed here if not given) decides what may be resumed: only a
    checkpoint of the same run; a folder holding another run is moved aside first.
    """
    import torch
    import torch.nn.functional as F

    cfg.validate()
    out = Path(cfg.out)
    rank, world, local = init_distributed()
    device = torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
    # Rank 0 verifies and reads the cache first so that a broken cache fails once, clearly.
    if rank == 0:
        identity = identity or identity_of(cfg, world)
        claim_run_dir(out, identity)
        snap = florence_snapshot(cfg.hf_home, cfg.model_repo, cfg.revision)[0]
    barrier()
    identity = read_run(out)
    if rank != 0:
        snap = florence_snapshot(cfg.hf_home, cfg.model_repo, cfg.revision)[0]
    if (out / "metrics.json").is_file():
        log.info("training already finished: %s", out / "metrics.json")
        return json.loads((out / "metrics.json").read_text())
    _seed_all(cfg.seed)
    florence, processor = load_florence(snap)
    _seed_all(cfg.seed)  # the heads start identical on every rank and in every run
    model = build_heads(florence)
    if cfg.freeze_vision or "vision" not in cfg.modalities:
        # Unused weights must not be trainable under DDP; a frozen tower saves memory too.
        frozen = [florence.model.vision_tower]
        if "vision" not in cfg.modalities:
            frozen.append(florence.model.multi_modal_projector)
        for module in frozen:
            for p in module.parameters():
                p.requires_grad_(False)
    if cfg.grad_checkpointing:
        florence.gradient_checkpointing_enable()
    model.to(device)
    train_src = Source(cfg.train or None, cfg.train_csv, cfg.modalities, cfg.exclusions())
    if train_src.excluded:
        log.info("%d training rows left out (exclude_flags %s, exclude_max_wer %s)",
                 train_src.excluded, cfg.exclude_flags, cfg.exclude_max_wer)
    encoder = Encoder(processor, cfg, train_src)
    streams = cfg.streams or world
    if streams % world:
        raise MeldflowError(f"streams ({streams}) must be a multiple of the world size ({world})")
    if cfg.global_batch % (streams * cfg.grad_accum):
        raise MeldflowError("global_batch must divide by streams x grad_accum")
    local_batch = cfg.global_batch // streams
    unit_emotions = {u: [r["emotion"] for r in train_src.rows(u)] for u in train_src.units}
    all_labels = [e for u in train_src.units for e in unit_emotions[u]]
    weights = class_weights(all_labels) if cfg.class_weighting else dict.fromkeys(EMOTIONS, 1.0)
    steps_per_epoch = len(plan_epoch(train_src.units, streams, local_batch, cfg.seed, 0)[0]) \
        // local_batch
    total = steps_per_epoch * cfg.epochs
    if cfg.max_steps:
        total = min(total, cfg.max_steps)
    params = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    warm = max(1, int(cfg.warmup_ratio * total))

    def lr_factor(s: int) -> float:
        return (s + 1) / warm if s < warm else max(0.0, (total - s) / max(1, total - warm))

    sched = torch.optim.lr_scheduler.LambdaLR(optim, lr_factor)
    use_amp = device.type == "cuda" and cfg.bf16
    ddp = model
    if world > 1:
        ddp = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[local] if device.type == "cuda" else None)
    state = {"epoch": 0, "step_in_epoch": 0, "step": 0, "history": [], "best_f1": -1.0}
    ckpt = out / "checkpoint" / "state.pt"
    if ckpt.is_file():
        saved = torch.load(ckpt, map_location="cpu", weights_only=False)
        if saved.get("identity") != identity["digest"]:
            raise MeldflowError(
                f"{ckpt} belongs to another run (identity {str(saved.get('identity'))[:12]}, "
                f"this run is {identity['digest'][:12]}); it is never resumed into a different "
                f"configuration. Move {out} aside, or let `meldflow train` do it")
        model.load_state_dict(saved["model"])
        optim.load_state_dict(saved["optim"])
        sched.load_state_dict(saved["sched"])
        _set_rng_state(saved["rng"])
        state = saved["state"]
        log.info("resumed from %s at step %d", ckpt, state["step"])
    my_streams = list(range(rank, streams, world))
    dev_src = Source(cfg.dev or None, cfg.dev_csv, cfg.modalities) \
        if (cfg.dev or cfg.dev_csv) else None

    def save_checkpoint() -> None:
        if rank == 0:
            _atomic_torch_save({"model": model.state_dict(), "optim": optim.state_dict(),
                                "sched": sched.state_dict(), "rng": _rng_state(),
                                "state": state, "config": dataclasses.asdict(cfg),
                                "identity": identity["digest"]}, ckpt)
        barrier()

    model.train()
    started = time.monotonic()
    workers = resolve_workers(cfg.loader_workers, device.type)
    while state["step"] < total and state["epoch"] < cfg.epochs:
        plan = plan_epoch(train_src.units, streams, local_batch, cfg.seed, state["epoch"])
        first = state["step_in_epoch"]
        last = min(steps_per_epoch, first + total - state["step"])
        # This rank's micro-batches for the rest of the epoch, per step, in order.
        step_jobs = {}
        for step in range(first, last):
            picks = [p for s in my_streams
                     for p in plan[s][step * local_batch:(step + 1) * local_batch]]
            micro = max(1, len(picks) // cfg.grad_accum)
            step_jobs[step] = [(picks[m:m + micro], hash((cfg.seed, state["epoch"], step, rank, m)))
                               for m in range(0, len(picks), micro)]
        loaded = iter(micro_batches(encoder, train_src,
                                    [job for jobs in step_jobs.values() for job in jobs], workers))
        for step in range(first, steps_per_epoch):
            if state["step"] >= total:
                break
            window = slice(step * local_batch, (step + 1) * local_batch)
            # The normaliser covers the whole global batch, so N ranks sum to what one
            # process computes; it comes from the plan, with no communication.
            norm = sum(w * weights[unit_emotions[u][r]]
                       for s in range(streams) for u, r, w in plan[s][window]) or 1.0
            norm_s = sum(w for s in range(streams) for _, _, w in plan[s][window]) or 1.0
            optim.zero_grad(set_to_none=True)
            loss_sum = 0.0
            for _ in step_jobs[step]:
                item = next(loaded)
                batch = _batch_to(item["batch"], device)
                emo = torch.tensor(item["emotion"], device=device)
                sen = torch.tensor(item["sentiment"], device=device)
                w = torch.tensor(item["weight"], device=device)
                cw = torch.tensor([weights[EMOTIONS[e]] for e in item["emotion"]], device=device)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                    emo_logits, sen_logits = ddp(**batch)
                loss = ((F.cross_entropy(emo_logits.float(), emo, reduction="none") * w * cw)
                        .sum() / norm
                        + (F.cross_entropy(sen_logits.float(), sen, reduction="none") * w)
                        .sum() / norm_s)
                # DDP averages gradients over ranks: scale back up to the global sum.
                (loss * world).backward()
                loss_sum += float(loss.detach())
            optim.step()
            sched.step()
            state["step"] += 1
            state["step_in_epoch"] = step + 1
            if world > 1:
                t = torch.tensor([loss_sum], device=device)
                _dist().all_reduce(t)
                loss_sum = float(t)
            state["history"].append({"step": state["step"], "epoch": state["epoch"],
                                     "loss": loss_sum})
            if state["step"] % cfg.checkpoint_every == 0:
                save_checkpoint()
        else:
            state["epoch"] += 1
            state["step_in_epoch"] = 0
            if dev_src is not None and rank == 0:
                m = evaluate_split(model, processor, cfg, dev_src, device)["emotion"]
                state["history"].append({"epoch": state["epoch"],
                                         "dev_weighted_f1": m["weighted_f1"]})
                log.info("epoch %d: dev weighted F1 %.3f", state["epoch"], m["weighted_f1"])
                if m["weighted_f1"] > state["best_f1"]:
                    state["best_f1"] = m["weighted_f1"]
                    save_model(model, processor, out / "best", cfg)
                model.train()
            save_checkpoint()
            continue
        break  # max_steps reached inside the epoch
    save_checkpoint()
    log.info("rank %d: %d steps in %.1f s", rank, state["step"], time.monotonic() - started)
    result: dict = {}
    if rank == 0:
        if not (out / "best").is_dir():  # no dev set, or max_steps cut the epoch short
            save_model(model, processor, out / "best", cfg)
        result = finish(cfg, out, device, state, identity, world)
    barrier()
    return result


def predict_rows(model, processor, cfg: TrainConfig, source: Source, rows: list[dict],
                 device="cpu") -> tuple[list[list[float]], list[list[float]]]:
    """Class probabilities (emotion, sentiment) for ``rows``."""
    import torch

    model.eval()
    encoder = Encoder(processor, cfg, source)
    emo_p, sen_p = [], []
    with torch.no_grad():
        for i in range(0, len(rows), cfg.eval_batch):
            batch = _batch_to(encoder.inputs(rows[i:i + cfg.eval_batch]), device)
            e, s = model(**batch)
            emo_p += torch.softmax(e, -1).tolist()
            sen_p += torch.softmax(s, -1).tolist()
    return emo_p, sen_p


def evaluate_split(model, processor, cfg: TrainConfig, source: Source, device,
                   predictions: Path | None = None) -> dict:
    """Metrics for emotion and sentiment on one split; optionally writes predictions."""
    import pyarrow as pa

    from meldflow.evaluate import classification_metrics
    from meldflow.storage import write_table

    rows = [r for u in source.units for r in source.rows(u)]
    emo_p, sen_p = predict_rows(model, processor, cfg, source, rows, device)
    pred_e = [EMOTIONS[max(range(len(EMOTIONS)), key=p.__getitem__)] for p in emo_p]
    pred_s = [SENTIMENTS[max(range(len(SENTIMENTS)), key=p.__getitem__)] for p in sen_p]
    result = {
        "emotion": classification_metrics([r["emotion"] for r in rows], pred_e, EMOTIONS),
        "sentiment": classification_metrics([r["sentiment"] for r in rows], pred_s, SENTIMENTS),
    }
    if predictions is not None:
        cols = {
            "split": [r["split"] for r in rows], "dialogue_id": [r["dialogue_id"] for r in rows],
            "utterance_id": [r["utterance_id"] for r in rows],
            "emotion": [r["emotion"] for r in rows], "pred_emotion": pred_e,
            "sentiment": [r["sentiment"] for r in rows], "pred_sentiment": pred_s,
        }
        for j, e in enumerate(EMOTIONS):
            cols[f"p_emotion_{e}"] = [p[j] for p in emo_p]
        for j, s in enumerate(SENTIMENTS):
            cols[f"p_sentiment_{s}"] = [p[j] for p in sen_p]
        write_table(pa.table(cols), predictions)
    return result


def finish(cfg: TrainConfig, out: Path, device, state: dict, identity: dict,
           world: int = 1) -> dict:
    """Best model on dev and test: metrics.json (with what made it), predictions, plots."""
    from meldflow.evaluate import majority_baseline, plot_confusion, plot_curves
    from meldflow.storage import write_text

    model, processor = load_trained(out / "best", device)
    metrics = {"config": dataclasses.asdict(cfg), "steps": state["step"],
               "best_dev_weighted_f1": state["best_f1"],
               "run": {"identity": identity["digest"], **identity["parts"]},
               **environment(world)}
    train_labels = Source(cfg.train or None, cfg.train_csv, "text", cfg.exclusions()).labels()
    for split, paths, csv in (("dev", cfg.dev, cfg.dev_csv), ("test", cfg.test, cfg.test_csv)):
        if not (paths or csv):
            continue
        src = Source(paths or None, csv, cfg.modalities)
        m = evaluate_split(model, processor, cfg, src, device, out / f"predictions_{split}.parquet")
        m["majority_baseline"] = majority_baseline(train_labels, src.labels(), EMOTIONS)
        metrics[split] = m
        plot_confusion(m["emotion"], out / f"confusion_{split}.png",
                       f"{split}: emotion weighted F1 {m['emotion']['weighted_f1']:.3f}")
    write_text(json.dumps(state["history"], indent=1), out / "history.json")
    plot_curves(state["history"], out / "curves.png")
    write_text(json.dumps(metrics, indent=2), out / "metrics.json")
    # run.json keeps the headline figures too: Snakemake deletes metrics.json before a
    # rerun, and a superseded run folder is archived with its run.json.
    run = read_run(out) | {"finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                           "metrics": {s: metrics[s] for s in ("dev", "test") if s in metrics}}
    write_text(json.dumps(run, indent=1), out / RUN_FILE)
    return metrics


# --- launch ---------------------------------------------------------------------------

class TrainJob:
    """What submitit runs on every task; requeued on timeout or preemption."""

    def __init__(self, cfg: TrainConfig, identity: dict | None = None):
        self.cfg, self.identity = cfg, identity

    def __call__(self) -> dict:
        import submitit

        try:  # outside a submitit job (debug executor, plain call) there is one process
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        except RuntimeError:
            pass
        os.environ["HF_HOME"] = str(Path(self.cfg.hf_home).resolve())
        os.environ["HF_HUB_OFFLINE"] = "1"
        logging.basicConfig(level=logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        return train(self.cfg, self.identity)

    def checkpoint(self, *args, **kwargs):
        # Training saves its own checkpoints; requeueing only has to start it again.
        import submitit

        return submitit.helpers.DelayedSubmission(TrainJob(self.cfg, self.identity))


ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "UNKNOWN",
         "FINISHED", "INTERRUPTED", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE")


def _recorded_job(out: Path, executor: str, tasks: int):
    """The submitit job that ``{out}/job.json`` names, if it is still queued or running."""
    import submitit

    job_file = out / "job.json"
    if executor == "debug" or not job_file.is_file():
        return None
    info = json.loads(job_file.read_text())
    if info.get("executor") != executor:
        return None
    job = (submitit.SlurmJob if executor == "slurm" else submitit.local.local.LocalJob)(
        out / "submitit", info["job_id"], tasks=tuple(range(info.get("tasks", tasks))))
    return None if job.state.split()[0] in ENDED else job


def launch(cfg: TrainConfig, executor: str = "local", tasks: int = 2, nodes: int = 1,
           timeout_min: int = 60, slurm: dict | None = None, wait: bool = True):
    """Submit training through submitit and (by default) wait; records the job id.

    A finished run of the same identity returns its metrics, a running one is reattached,
    an interrupted one resumes; a run folder holding another identity is archived first.
    """
    import submitit

    from meldflow.storage import write_text

    cfg.validate()
    out = Path(cfg.out)
    identity = identity_of(cfg, 1 if executor == "debug" else tasks * nodes)
    old = read_run(out)
    if old is None or old["digest"] != identity["digest"]:
        running = _recorded_job(out, executor, tasks)
        if running is not None:
            raise MeldflowError(
                f"training job {running.job_id} of the previous configuration of {out} is "
                f"still running; wait for it or cancel it"
                + (f" (`scancel {running.job_id}`)" if executor == "slurm" else "")
                + ", then run again")
    claim_run_dir(out, identity)
    if (out / "metrics.json").is_file():
        return json.loads((out / "metrics.json").read_text())
    job = _recorded_job(out, executor, tasks)  # a restarted workflow reattaches
    if job is None:
        ex = submitit.AutoExecutor(folder=out / "submitit", cluster=executor)
        params: dict = {"timeout_min": timeout_min}
        if executor != "debug":
            params.update(tasks_per_node=tasks, nodes=nodes)
        if executor == "slurm":
            params.update({k: v for k, v in (slurm or {}).items() if v is not None})
        ex.update_parameters(**params)
        job = ex.submit(TrainJob(cfg, identity))
        write_text(json.dumps({"job_id": job.job_id, "executor": executor, "tasks": tasks,
                               "identity": identity["digest"]}), out / "job.json")
        log.info("submitted training job %s (%s, %d task(s)), run %s", job.job_id, executor,
                 1 if executor == "debug" else tasks * nodes, identity["digest"][:12])
    if not wait:
        return job
    results = job.results() if executor != "debug" else [job.result()]
    return results[0]


def predict(model_dir: str | Path, clips: list[str] | None = None,
            texts: list[str] | None = None, device: str = "cpu") -> list[dict]:
    """Emotion and sentiment probabilities for new clips and/or utterances.

    ``texts`` are "Speaker: line" (or just the line); clips are framed like the training
    data. Which of the two the model reads follows its training modalities.
    """
    from meldflow.frames import extract_frames

    model_dir = Path(model_dir)
    cfg_path = model_dir / "meldflow_train.json"
    if not cfg_path.is_file():
        raise MeldflowError(f"{model_dir} has no meldflow_train.json: not a trained model")
    cfg = TrainConfig.from_json(cfg_path)
    clips, texts = list(clips or []), list(texts or [])
    n = max(len(clips), len(texts))
    if n == 0:
        raise MeldflowError("give clips, texts or both")
    blank = [i + 1 for i, t in enumerate(texts) if not t.strip()]
    if blank:
        raise MeldflowError(f"--text: utterance(s) {', '.join(map(str, blank))} are empty; "
                            f'give "Speaker: line" or just the line')
    for clip in clips:
        try:
            check_clip_file(clip)
        except ClipError as exc:
            raise MeldflowError(f"--clips: {exc}") from None
    if clips and texts and len(clips) != len(texts):
        raise MeldflowError(f"{len(clips)} clips but {len(texts)} texts")
    if "vision" in cfg.modalities and not clips:
        raise MeldflowError(f"this model reads frames ({cfg.modalities}): give clips")
    if cfg.modalities == "text" and not texts:
        raise MeldflowError("this model reads text only: give texts")
    model, processor = load_trained(model_dir, device)
    rows, names = [], []
    for i in range(n):
        text = texts[i] if texts else ""
        speaker, _, line = text.partition(": ") if ": " in text else ("", "", text)
        frames = []
        if clips and "vision" in cfg.modalities:
            res = extract_frames(clips[i])  # same defaults as the workflow
            if res.status != "ok":
                raise MeldflowError(f"{clips[i]}: {res.status} ({res.reason})")
            frames = res.frames
        rows.append({"dialogue_id": -1, "utterance_id": i, "speaker": speaker or "Speaker",
                     "utterance": line, "transcript": line, "frames": frames})
        names.append(clips[i] if clips else text)

    class _NoContext:
        context: dict = {}

    emo_p, sen_p = predict_rows(model, processor, cfg, _NoContext(), rows, device)
    out = []
    for name, pe, ps in zip(names, emo_p, sen_p, strict=True):
        out.append({"input": name,
                    "emotion": EMOTIONS[max(range(len(pe)), key=pe.__getitem__)],
                    "sentiment": SENTIMENTS[max(range(len(ps)), key=ps.__getitem__)],
                    "p_emotion": dict(zip(EMOTIONS, (round(p, 4) for p in pe), strict=True)),
                    "p_sentiment": dict(zip(SENTIMENTS, (round(p, 4) for p in ps),
                                            strict=True))})
    return out
