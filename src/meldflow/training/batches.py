"""Rows into model inputs, and each optimizer step's micro-batches on this rank.

The plan of an epoch (``meldflow.training.dataset.plan_epoch``) deals whole row groups to streams;
a step takes the next ``local_batch`` picks of every stream. Each micro-batch carries its
own augmentation seed, so any number of loader workers (each taking whole micro-batches)
gives exactly the batches of the single-process reader.
"""

from __future__ import annotations

import os
import random
import signal
from dataclasses import dataclass

from meldflow.labels import EMOTIONS
from meldflow.training.dataset import Source, frames_image, label_index, prompt

MODEL_INPUTS = ("input_ids", "attention_mask", "pixel_values")
Pick = tuple  # (Unit, row in unit, weight): one sample of the plan


class Encoder:
    """Turns rows into model inputs: the prompt text and, for vision, the frame grid."""

    def __init__(self, processor, cfg, source: Source):
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


def to_device(batch, device) -> dict:
    """The model's inputs of an encoded batch, on ``device``."""
    return {k: batch[k].to(device) for k in MODEL_INPUTS if k in batch}


def class_weights(labels: list[str]) -> dict[str, float]:
    """Inverse-frequency weights, normalised to mean 1 over the training rows."""
    counts = {e: labels.count(e) for e in EMOTIONS}
    raw = {e: (len(labels) / (len(EMOTIONS) * c) if c else 0.0) for e, c in counts.items()}
    mean = sum(raw[lab] for lab in labels) / max(1, len(labels))
    return {e: w / mean for e, w in raw.items()} if mean else raw


@dataclass
class Step:
    """One optimizer step as this rank sees it."""

    index: int  # within the epoch
    micro: list[tuple[list[Pick], int]]  # this rank's micro-batches: (picks, augment seed)
    emotion_norm: float  # weighted sample count of the whole global batch
    sentiment_norm: float


def epoch_steps(plan: list[list[Pick]], first: int, last: int, local_batch: int, rank: int,
                world: int, grad_accum: int, seed: int, epoch: int,
                emotion_weight) -> list[Step]:
    """Steps ``first``..``last`` of an epoch's ``plan`` for ``rank``.

    The normalisers cover the whole global batch (every stream), so N ranks sum to what
    one process computes; they come from the plan, with no communication.
    ``emotion_weight(unit, row)`` is the class weight of a sample.
    """
    streams = len(plan)
    mine = list(range(rank, streams, world))
    steps = []
    for step in range(first, last):
        window = slice(step * local_batch, (step + 1) * local_batch)
        picks = [p for s in mine for p in plan[s][window]]
        micro = max(1, len(picks) // grad_accum)
        norm = sum(w * emotion_weight(u, r)
                   for s in range(streams) for u, r, w in plan[s][window]) or 1.0
        norm_s = sum(w for s in range(streams) for _, _, w in plan[s][window]) or 1.0
        steps.append(Step(step, [(picks[m:m + micro], hash((seed, epoch, step, rank, m)))
                                 for m in range(0, len(picks), micro)], norm, norm_s))
    return steps


class MicroBatches:
    """Map-style dataset: item i is micro-batch i of ``jobs``, read and encoded."""

    def __init__(self, encoder: Encoder, source: Source, jobs: list):
        self.encoder, self.source, self.jobs = encoder, source, jobs

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, i: int) -> dict:
        picks, seed = self.jobs[i]
        self.source.reserve(len({u for u, _, _ in picks}))
        rows = [self.source.rows(u)[r] for u, r, _ in picks]
        rng = random.Random(seed) if self.encoder.cfg.augment else None
        batch = self.encoder.inputs(rows, rng)
        labels = [label_index(r) for r in rows]
        return {"batch": {k: batch[k] for k in MODEL_INPUTS if k in batch},
                "emotion": [e for e, _ in labels], "sentiment": [s for _, s in labels],
                "weight": [w for _, _, w in picks]}


def _worker_init(_: int) -> None:
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
