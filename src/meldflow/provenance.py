"""What a result was made from: run identities, software versions, git commit and hardware.

A training run's identity is a digest of everything that determines its weights: the
resolved training options, the model (repo, resolved revision, the hash of every file) and
the training data (the content checksum of every shard or CSV it reads, dev and test
included, since dev picks the best epoch). Paths are not part of it (moving the results
folder changes nothing), and neither are the options that change how a run computes but
not what (those defined with ``identity=False``). A checkpoint resumes only into a run of
the same identity; a run folder that holds another identity is moved aside first
(``claim_run_dir``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import platform
import shutil
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from meldflow import MeldflowError, __version__
from meldflow.storage import sha256_file, write_text

log = logging.getLogger(__name__)

RUN_FILE = "run.json"
LEGACY_RUN = ("checkpoint", "best", "metrics.json")


def data_checksums(paths: list[str] | None, csv: str | None) -> list[str]:
    """SHA-256 of each file a split is read from (sorted, so their order does not count)."""
    files = list(paths or []) + ([csv] if csv else [])
    missing = [f for f in files if not Path(f).is_file()]
    if missing:
        raise MeldflowError(f"training data not found: {', '.join(missing)}")
    return sorted(sha256_file(f) for f in files)


def run_identity(cfg: Any, streams: int, model_revision: str,
                 model_files: dict[str, str]) -> dict:
    """{"digest", "parts"} of a training run (see the module docstring)."""
    options = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)
               if f.metadata.get("identity", True)}  # option metadata: meldflow.options
    options["streams"] = streams
    parts = {
        "options": options,
        "model": {"repo": cfg.florence_repo, "revision": model_revision, "files": model_files},
        "data": {split: data_checksums(getattr(cfg, split), getattr(cfg, f"{split}_csv"))
                 for split in ("train", "dev", "test")},
    }
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
    return {"digest": digest, "parts": parts}


def describe_difference(old: dict, new: dict) -> str:
    """What changed between two identities, in words."""
    if not old.get("parts"):
        return "the folder holds a run from before run identities were recorded"
    said = []
    o, n = old["parts"]["options"], new["parts"]["options"]
    for key in sorted(set(o) | set(n)):
        if o.get(key) != n.get(key):
            said.append(f"{key} {o.get(key)!r} -> {n.get(key)!r}")
    om, nm = old["parts"]["model"], new["parts"]["model"]
    if (om["repo"], om["revision"]) != (nm["repo"], nm["revision"]):
        said.append(f"model {om['repo']}@{om['revision'][:12]} -> {nm['repo']}@"
                    f"{nm['revision'][:12]}")
    elif om["files"] != nm["files"]:
        said.append("model files changed")
    for split in ("train", "dev", "test"):
        if old["parts"]["data"].get(split) != new["parts"]["data"].get(split):
            said.append(f"{split} data changed")
    return "; ".join(said) or "identity changed"


def read_run(out: Path) -> dict | None:
    """The run record of ``out``; None when there is none, or when it is damaged (cut
    short, edited): then the folder counts as another run's, is archived whole and the run
    starts fresh (claim_run_dir), with a warning, rather than blocking every rerun."""
    path = out / RUN_FILE
    if not path.is_file():
        return None
    try:
        run = json.loads(path.read_text())
        if not isinstance(run, dict) or "digest" not in run:
            raise ValueError("no run digest in it")
        return run
    except (ValueError, OSError) as exc:
        log.warning("%s is damaged (%s): the run in %s is taken as another run's (archived) "
                    "and this one starts fresh", path, exc, out)
        return None


def record_in_run(out: Path, key: str, entry: dict) -> None:
    """Append ``entry`` to the list ``key`` of the run's run.json (what happened to it)."""
    run = read_run(out) or {}
    run[key] = [*run.get(key, []), entry]
    write_text(json.dumps(run, indent=1), out / RUN_FILE)


def archive_dir(out: Path, digest: str) -> Path:
    """Where a superseded run of ``out`` goes: ``{out}-archive/{time}-{digest[:12]}``."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return out.with_name(f"{out.name}-archive") / f"{stamp}-{digest[:12] or 'unknown'}"


def claim_run_dir(out: Path, identity: dict) -> Path | None:
    """Make ``out`` the folder of the run ``identity``; returns where an older run went.

    Same identity: nothing moves (a requeue or restart resumes). Another identity, or a
    run from before identities were recorded: everything in ``out`` moves to
    :func:`archive_dir`, with a log line that says what differs.
    """
    out.mkdir(parents=True, exist_ok=True)
    old = read_run(out)
    if old is not None and old["digest"] == identity["digest"]:
        return None
    moved = None
    # With no run.json, only a run's own products mean a run was here (a fresh submitit
    # job finds its log folder already made).
    entries = list(out.iterdir())
    if old is None and not any((out / name).exists() for name in LEGACY_RUN):
        entries = []
    if entries:
        moved = archive_dir(out, (old or {}).get("digest", ""))
        moved.mkdir(parents=True)
        for p in entries:
            shutil.move(str(p), moved / p.name)
        log.warning("%s held another training run (%s); it was moved to %s and this run "
                    "starts fresh", out, describe_difference(old or {}, identity), moved)
    write_text(json.dumps({"digest": identity["digest"], "parts": identity["parts"],
                           "preprocessing": identity.get("preprocessing"),
                           "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, indent=1),
               out / RUN_FILE)
    return moved


def _git_commit() -> dict | None:
    src = Path(__file__).resolve().parents[2]
    if not (src / ".git").exists():
        return None
    try:
        commit = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], check=True,
                                capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(src), "status", "--porcelain",
                                "--untracked-files=no"], check=True, capture_output=True,
                               text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "uncommitted_changes": bool(dirty)}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(world: int = 1) -> dict:
    """meldflow and library versions, the git commit and the hardware of this process."""
    versions = {"meldflow": __version__, "python": platform.python_version()}
    for pkg in ("torch", "transformers", "tokenizers", "huggingface-hub", "submitit",
                "faster-whisper", "ctranslate2", "pyarrow", "numpy"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    hardware = {"host": platform.node(), "cpu": _cpu_model(), "cpus": os.cpu_count(),
                "world_size": world}
    try:
        import torch

        if torch.cuda.is_available():
            hardware["gpus"] = [torch.cuda.get_device_name(i)
                                for i in range(torch.cuda.device_count())]
    except ImportError:
        pass
    slurm = {k: os.environ[k] for k in ("SLURM_JOB_ID", "SLURM_JOB_NODELIST", "SLURM_NNODES")
             if k in os.environ}
    if slurm:
        hardware["slurm"] = slurm
    return {"versions": versions, "git": _git_commit(), "hardware": hardware}
