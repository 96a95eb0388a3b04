"""Training checkpoints that are verified, not trusted.

Owns ``{out}/checkpoint/``: ``state.pt`` (the newest) and ``previous.pt`` (the one before),
each beside a record ``state.json`` / ``previous.json`` with the SHA-256 and size of its
bytes, the run identity and the step. ``torch.load`` accepts a file whose tensor bytes
were changed (the zip format keeps no checksum it checks), so a damaged checkpoint would
otherwise resume into plausible-looking, wrong weights. Resuming checks the record first
and falls back from ``state.pt`` to ``previous.pt``, then to a fresh start, and says why.

Writing: the new checkpoint goes to a temporary name while its hash is computed from the
bytes as they are written (no second read of a multi-GB file); then the newest is renamed
to ``previous``, the new one into place, and its record written last. A crash at any point
leaves either a checkpoint whose record matches or one that is rejected, never one that
is trusted wrongly.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meldflow import MeldflowError
from meldflow.storage import raise_write_error, sha256_file, temporary_beside, write_text

log = logging.getLogger("meldflow.training")

CHECKPOINT_DIR = "checkpoint"
NEWEST, PREVIOUS = "state", "previous"  # newest first: the order resuming tries them


class _HashingWriter:
    """A file object for ``torch.save`` that hashes what passes through it."""

    def __init__(self, f):
        self.f, self.sha, self.size = f, hashlib.sha256(), 0
        self.error: OSError | None = None  # torch's zip writer hides it ("unexpected pos")

    def write(self, data) -> int:
        self.sha.update(data)
        self.size += len(data)
        try:
            return self.f.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.f.flush()


def _record_path(folder: Path, name: str) -> Path:
    return folder / f"{name}.json"


def _data_path(folder: Path, name: str) -> Path:
    return folder / f"{name}.pt"


def save(obj: dict, folder: Path, identity: str, step: int) -> Path:
    """Write ``obj`` as the newest checkpoint of run ``identity``; the newest so far
    becomes ``previous``. Returns the checkpoint's path."""
    import torch

    new = _data_path(folder, NEWEST)
    tmp = temporary_beside(new)
    try:
        with open(tmp, "wb") as f:
            writer = _HashingWriter(f)
            try:
                torch.save(obj, writer)
            except RuntimeError:
                if writer.error is None:
                    raise
                raise writer.error from None
            f.flush()
            os.fsync(f.fileno())
        if new.exists():  # the newest so far is kept, with its record, as the fallback
            os.replace(new, _data_path(folder, PREVIOUS))
            _record_path(folder, PREVIOUS).unlink(missing_ok=True)
            if _record_path(folder, NEWEST).exists():
                os.replace(_record_path(folder, NEWEST), _record_path(folder, PREVIOUS))
        os.replace(tmp, new)
    except OSError as exc:
        raise_write_error(exc, new)
    finally:
        tmp.unlink(missing_ok=True)
    record = {"file": new.name, "sha256": writer.sha.hexdigest(), "bytes": writer.size,
              "identity": identity, "step": step,
              "written": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_text(json.dumps(record, indent=1), _record_path(folder, NEWEST))
    return new


def check(folder: Path, name: str, identity: str) -> str | None:
    """Why checkpoint ``name`` in ``folder`` must not be resumed (``None``: it verifies).

    A checkpoint of another run is never resumed: like a damaged one it is passed over,
    and the log and run.json say so.
    """
    data, rec_path = _data_path(folder, name), _record_path(folder, name)
    try:
        record = json.loads(rec_path.read_text())
        expected = (record["sha256"], int(record["bytes"]), record["identity"])
    except FileNotFoundError:
        return "no checksum record beside it (an unfinished write, or older than meldflow's " \
               "checksums): it cannot be verified"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"its record {rec_path.name} is unreadable ({exc})"
    if expected[2] != identity:  # before size and hash: a record of another run
        return (f"it belongs to another run (identity {str(expected[2])[:12]}; this run is "
                f"{identity[:12]}): never resumed into a different configuration")
    size = data.stat().st_size
    if size != expected[1]:
        return f"{size} bytes where {expected[1]} were written (truncated or cut short)"
    if sha256_file(data) != expected[0]:
        return "its SHA-256 does not match the one recorded when it was written (damaged)"
    return None


@dataclass
class Resume:
    """What resuming found: the checkpoint to load (``None``: start fresh), and every
    checkpoint passed over, with why."""

    path: Path | None
    step: int
    rejected: list[dict]

    def as_record(self) -> dict:
        return {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "from": str(self.path.relative_to(self.path.parents[1])) if self.path else None,
                "step": self.step, "rejected": self.rejected}


def check_writable(*folders: Path) -> None:
    """Before training (and before a job is submitted): each folder that exists, and the
    checkpoint folder itself, can be written; else a MeldflowError now, not at the first
    save after a whole epoch."""
    for where in folders:
        if where.name != CHECKPOINT_DIR and not where.exists():
            continue
        try:
            temporary_beside(where / "probe").unlink()
        except OSError as exc:
            raise MeldflowError(f"cannot write in {where} ({exc.strerror}): make it writable "
                                f"(chmod u+w), or give another --out; nothing was trained") \
                from None


def prepare(folder: Path, *others: Path) -> list[dict]:
    """Before training: the folders can be written (``check_writable``), and temporary
    files a killed write left are removed. Returns what was removed, for the record."""
    check_writable(folder, *others)
    removed = []
    for stale in sorted(folder.glob(".*.tmp")):
        stale.unlink(missing_ok=True)
        removed.append({"file": f"{CHECKPOINT_DIR}/{stale.name}",
                        "why": "a temporary file of a write that was killed: removed"})
        log.warning("removed %s, left by a checkpoint write that was killed", stale)
    return removed


def find_resumable(folder: Path, identity: str) -> Resume:
    """The newest checkpoint of run ``identity`` in ``folder`` that verifies."""
    rejected = []
    for name in (NEWEST, PREVIOUS):
        data = _data_path(folder, name)
        if not data.is_file():
            if name == NEWEST and _data_path(folder, PREVIOUS).is_file():
                rejected.append({"file": f"{CHECKPOINT_DIR}/{data.name}",
                                 "why": "missing (its write was cut short, or it was deleted)"})
                log.warning("checkpoint %s is missing: trying the previous one", data)
            continue
        why = check(folder, name, identity)
        if why is None:
            step = json.loads(_record_path(folder, name).read_text())["step"]
            return Resume(data, step, rejected)
        rejected.append({"file": f"{CHECKPOINT_DIR}/{data.name}", "why": why})
        log.warning("checkpoint %s is not resumed: %s", data, why)
    return Resume(None, 0, rejected)


def load(path: Path) -> dict[str, Any]:
    """A verified checkpoint's content (on the CPU)."""
    import torch

    return torch.load(path, map_location="cpu", weights_only=False)
