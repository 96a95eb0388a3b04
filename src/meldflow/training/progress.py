"""What a running training shows: progress lines in its log (steps/s, time left) and, from
rank 0, TensorBoard event files in ``{out}/tensorboard`` (loss, learning rate, throughput,
dev metrics per epoch, the confusion matrices at the end), flushed every few seconds so
that ``tensorboard --logdir results/train`` follows the job while it runs, offline.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

log = logging.getLogger("meldflow.training")

EVENTS_DIR = "tensorboard"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class Progress:
    """Progress of one rank's run; only rank 0 logs lines and writes events."""

    def __init__(self, out: Path, rank: int, total: int, start_step: int, global_batch: int,
                 every_s: float = 30.0):
        self.rank, self.total, self.global_batch = rank, total, global_batch
        self.first, self.every_s = start_step, every_s
        self.started = self.last_line = time.monotonic()
        self.interval = max(1, total // 20)  # about 20 lines per run, or one per every_s
        self.writer = None
        if rank == 0:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # a bare PyTorch install (pyproject.toml pins tensorboard)
                log.warning("tensorboard is not installed: no event files for this run")
                return
            # purge_step: a resumed run's new events replace those written after its
            # checkpoint (at start_step, included in it), and a run that starts afresh
            # (no checkpoint verified) replaces them all, so the curves never double back.
            self.writer = SummaryWriter(str(out / EVENTS_DIR), flush_secs=5,
                                        purge_step=start_step + 1)

    def step(self, step: int, epoch: int, loss: float, lr: float) -> None:
        if self.rank != 0:
            return
        now = time.monotonic()
        rate = (step - self.first) / max(now - self.started, 1e-9)  # steps/s in this process
        if self.writer is not None:
            self.writer.add_scalar("train/loss", loss, step)
            self.writer.add_scalar("train/learning_rate", lr, step)
            self.writer.add_scalar("train/samples_per_s", rate * self.global_batch, step)
        if step == self.total or step % self.interval == 0 or now - self.last_line >= \
                self.every_s:
            self.last_line = now
            left = (self.total - step) / rate if rate > 0 else float("nan")
            log.info("step %d/%d (epoch %d) loss %.4f lr %.2e | %.2f steps/s, %.1f samples/s "
                     "| %s left", step, self.total, epoch + 1, loss, lr, rate,
                     rate * self.global_batch, _duration(left) if left == left else "?")

    def dev(self, step: int, epoch: int, metrics: dict) -> None:
        """Dev metrics at the end of an epoch (x axis: the step, like the loss)."""
        if self.writer is None:
            return
        for task in ("emotion", "sentiment"):
            for name in ("weighted_f1", "macro_f1", "accuracy"):
                self.writer.add_scalar(f"dev/{task}_{name}", metrics[task][name], step)
        self.writer.add_scalar("dev/epoch", epoch, step)
        self.writer.flush()

    def image(self, tag: str, png: Path, step: int) -> None:
        """A saved plot (the confusion matrices) as an image in TensorBoard."""
        if self.writer is None:
            return
        import numpy as np
        from PIL import Image

        with Image.open(png) as im:
            self.writer.add_image(tag, np.asarray(im.convert("RGB")), step, dataformats="HWC")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
