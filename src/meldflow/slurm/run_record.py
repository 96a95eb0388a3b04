"""What each Snakemake run of a project did, as it happened: ``.snakemake/meldflow/runs/``.

The logger plugin ``meldflow`` (``snakemake_logger_plugin_meldflow``, on in the SLURM
profile) keeps one record per run from Snakemake's own events, not from its log text: when
it started, its SLURM run id (the name of every job it submits), every job it submitted
(Snakemake's job id, rule, wildcards, local or not, how it ended), its progress, a
heartbeat the running Snakemake refreshes, and how it ended. ``meldflow status`` shows the
latest run that submitted jobs, and marks jobs that no running Snakemake watches any more
(a run that never ended whose heartbeat missed ``MISSED_BEATS`` beats: Snakemake was
killed, or its node went down).
A heartbeat rather than a process id, so that status may run on another login node.

Kept to the standard library: Snakemake imports the plugin in every process it starts.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import time
from pathlib import Path

RUNS_DIR = Path(".snakemake") / "meldflow" / "runs"
# Seconds between heartbeats (recorded in each run; MELDFLOW_HEARTBEAT_S shortens it for
# tests); a run that never ended counts as dead after MISSED_BEATS of them.
HEARTBEAT_S = float(os.environ.get("MELDFLOW_HEARTBEAT_S", "30"))
MISSED_BEATS = 3
SLURM_RUN_ID = "SLURM run ID: "  # what the SLURM plugin says when it starts


class RunRecord:
    """One Snakemake run, built from its logger events and written to ``path``."""

    def __init__(self, folder: Path, workflow_id: str) -> None:
        now = time.time()
        self.data: dict = {
            "workflow_id": workflow_id, "slurm_run_id": None, "host": socket.gethostname(),
            "started": now, "heartbeat": now, "heartbeat_s": HEARTBEAT_S, "ended": None,
            "errors": 0,
            "done": 0, "total": None, "jobs": {}}
        self.path = folder / f"{time.strftime('%Y%m%d-%H%M%S', time.localtime(now))}-" \
                             f"{workflow_id[:8]}.json"

    def job_info(self, jobid: int, rule: str, wildcards: dict, local: bool) -> None:
        """A try of a job that Snakemake starts (here, or submitted to the cluster); a
        resubmission is another try of the same job id."""
        job = self.data["jobs"].setdefault(str(jobid), {
            "rule": rule, "wildcards": {k: str(v) for k, v in (wildcards or {}).items()},
            "local": bool(local), "tries": []})
        job["tries"].append({"submitted": time.time(), "ended": None, "ok": None})

    def job_ended(self, jobid: int, ok: bool) -> None:
        job = self.data["jobs"].get(str(jobid))
        if job is not None and job["tries"]:
            job["tries"][-1].update(ended=time.time(), ok=ok)
        if not ok:
            self.data["errors"] += 1

    def progress(self, done: int, total: int) -> None:
        self.data["done"], self.data["total"] = done, total

    def beat(self) -> None:
        self.data["heartbeat"] = time.time()

    def end(self) -> None:
        self.data["ended"] = self.data["heartbeat"] = time.time()

    def write(self) -> None:
        """Atomically, with the mode the umask gives (status may run as a colleague): the
        temporary file is created by open() with 0666, which the kernel masks."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "w") as f:
            json.dump(self.data, f)
        os.replace(tmp, self.path)


def read_runs(workdir: str | Path) -> list[dict]:
    """Every run record of ``workdir``, oldest first (a damaged one is left out)."""
    out = []
    for path in sorted((Path(workdir) / RUNS_DIR).glob("*.json")):
        try:
            run = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(run, dict) and "started" in run:
            out.append(run | {"file": str(path)})
    return sorted(out, key=lambda r: r["started"])


# Local rules that submit a cluster job of their own: training's (through submitit).
SUBMITTING_RULES = ("train",)


def submitted(run: dict) -> int:
    """How many cluster jobs the run submitted, every try counted: its jobs that are not
    local rules, and its training rules' tries (each may have queued a training job)."""
    return sum(len(job["tries"]) for job in run["jobs"].values()
               if not job["local"] or job["rule"] in SUBMITTING_RULES)


def record_summary(run: dict) -> str:
    """What a run record knows of its cluster jobs' tries, in one line."""
    tries = [t for job in run["jobs"].values()
             if not job["local"] or job["rule"] in SUBMITTING_RULES for t in job["tries"]]
    ok = sum(t["ok"] is True for t in tries)
    failed = sum(t["ok"] is False for t in tries)
    return (f"the run record says: {len(tries)} job(s) submitted, {ok} ended ok, {failed} "
            f"failed, {len(tries) - ok - failed} not seen to end")


def alive(run: dict, now: float | None = None) -> bool:
    """Whether a Snakemake runs ``run`` now: it has not ended and its heartbeat is fresh.
    Jobs still queued or running under a run that is not alive are watched by nobody."""
    late = (now or time.time()) - run["heartbeat"]
    return run["ended"] is None and late <= MISSED_BEATS * run.get("heartbeat_s", HEARTBEAT_S)


LOCKS_DIR = Path(".snakemake") / "locks"


def stale_lock(workdir: str | Path, now: float | None = None) -> tuple[list[Path], str | None]:
    """(Snakemake's lock files in ``workdir``, what is known of their holder).

    The holder is the latest run whose record started before the locks were written and
    beat after. Its state: ``alive``; ``dead`` (it never ended and missed its heartbeats:
    Snakemake was killed, and the locks are stale); ``unknown`` (no such record: a run
    without the profile's logger). ``None`` when no lock is held.
    """
    locks = sorted((Path(workdir) / LOCKS_DIR).glob("*.lock"))
    if not locks:
        return [], None
    taken = min(p.stat().st_mtime for p in locks)
    holders = [r for r in read_runs(workdir) if r["started"] <= taken + 1]
    holder = holders[-1] if holders else None
    if holder is None or holder["ended"] is not None or holder["heartbeat"] < taken - 1:
        return locks, "unknown"
    return locks, "alive" if alive(holder, now) else "dead"
