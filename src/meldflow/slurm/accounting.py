"""What SLURM knows of a run's jobs: sacct (accounting) and squeue (the controller).

Snakemake's SLURM plugin names every job of a run after the run's UUID (found in the
newest Snakemake log) and puts ``rule_<rule>_wildcards_<values>`` in the job comment.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from meldflow import MeldflowError

SACCT_FIELDS = ["JobIDRaw", "JobID", "JobName%200", "Comment%300", "State%40", "ExitCode",
                "ElapsedRaw", "TotalCPU", "AllocCPUS", "ReqMem", "MaxRSS", "Submit",
                "NodeList%200", "AllocTRES%300", "Timelimit"]


RUN_ID = re.compile(r"SLURM run ID: (\S+)")


def latest_run_id(workdir: str | Path = ".") -> str | None:
    """The SLURM run ID of the newest Snakemake log in ``workdir`` that has one."""
    logs = sorted(Path(workdir, ".snakemake", "log").glob("*.snakemake.log"),
                  key=lambda p: p.stat().st_mtime, reverse=True)
    for log in logs:
        m = RUN_ID.search(log.read_text(errors="replace"))
        if m:
            return m.group(1)
    return None


def run_command(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise MeldflowError(f"{' '.join(cmd[:2])} failed: {proc.stderr.strip()}")
    return proc.stdout


def sacct_records(names: list[str] | None = None, job_ids: list[str] | None = None,
                  days: int = 7) -> list[dict]:
    """sacct lines (allocations and steps) for job names or job ids: one sacct call."""
    cmd = ["sacct", "-P", "-n", "--format=" + ",".join(SACCT_FIELDS),
           "--starttime", f"now-{days}days"]
    if names:
        cmd += ["--name", ",".join(names)]
    if job_ids:
        cmd += ["--jobs", ",".join(job_ids)]
    fields = [f.split("%")[0] for f in SACCT_FIELDS]
    return [dict(zip(fields, line.split("|", len(fields) - 1), strict=False))
            for line in run_command(cmd).splitlines() if line.strip()]


SQUEUE_FIELDS = {"JobIDRaw": "%i", "JobName": "%j", "State": "%T", "NodeList": "%N",
                 "Reason": "%r", "Gres": "%b", "Submit": "%V", "Comment": "%k"}


def squeue_jobs() -> dict[str, dict]:
    """Every queued or running job of this user, from the controller (one squeue call):
    job id -> its fields in sacct's names. squeue has a job's comment (Snakemake's rule
    and wildcards) from submission; accounting stores it only when the job ends."""
    fmt = "|".join(SQUEUE_FIELDS.values())  # the comment last: it may hold "|"
    jobs = {}
    for line in run_command(["squeue", "-h", "--me", "-o", fmt]).splitlines():
        values = line.split("|", len(SQUEUE_FIELDS) - 1)
        if len(values) == len(SQUEUE_FIELDS):
            job = dict(zip(SQUEUE_FIELDS, values, strict=True))
            jobs[job["JobIDRaw"]] = job
    return jobs


def to_mb(text: str) -> float | None:
    """sacct memory (``1500M``, ``2G``, ``812K``, ``2000Mn``) in MB."""
    m = re.match(r"^([\d.]+)([KMGT]?)", text or "")
    if not m or not m.group(1):
        return None
    scale = {"": 1 / 2**20, "K": 1 / 1024, "M": 1, "G": 1024, "T": 2**20}[m.group(2)]
    return float(m.group(1)) * scale


def to_seconds(text: str) -> float:
    """sacct durations: ``[D-]HH:MM:SS[.fff]`` or ``MM:SS.fff``."""
    if not text:
        return 0.0
    days = 0
    if "-" in text:
        d, text = text.split("-", 1)
        days = int(d)
    parts = [float(p) for p in text.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0.0)
    return days * 86400 + parts[0] * 3600 + parts[1] * 60 + parts[2]


def gpus_in(tres: str) -> int | None:
    """GPUs in an AllocTRES string (``cpu=4,mem=16G,node=1,gres/gpu=2``), else None."""
    m = re.search(r"gres/gpu(?::[^=,]+)?=(\d+)", tres or "")
    return int(m.group(1)) if m else None
