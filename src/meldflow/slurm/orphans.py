"""SLURM jobs of an earlier, killed run of this workflow folder: found and cancelled."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from meldflow import MeldflowError
from meldflow.slurm.accounting import latest_run_id, run_command


def cancel_orphaned_jobs(workdir: str | Path = ".", wait_s: float = 120.0,
                         say=print) -> list[str]:
    """Cancel SLURM shard jobs of an earlier run of this workflow folder that still run.

    When the process running Snakemake dies (``kill -9``, a dropped login session), its
    SLURM jobs run on, and the next run would submit the same jobs again: two jobs writing
    one output. Called before the new run submits anything, this cancels them (Snakemake
    jobs of this folder, recognised by their ``rule_``/``group_`` comment), waits until
    they are gone and says so; their outputs are redone (``rerun-incomplete``). The
    submitit training job is left alone: ``meldflow train`` reattaches to it.

    Only a folder with a Snakemake log of a SLURM run can have orphans; others are not
    looked at (squeue waits 10 s or more where no controller answers).
    """
    here = Path(workdir).resolve()
    if not shutil.which("squeue") or latest_run_id(here) is None:
        return []
    try:
        out = run_command(["squeue", "-h", "--me", "-o", "%i|%k|%Z|%T"])
    except (MeldflowError, subprocess.TimeoutExpired):
        return []
    orphans = []
    for line in out.splitlines():
        job, comment, folder, _state = (line.split("|") + ["", "", ""])[:4]
        if comment.startswith(("rule_", "group_")) and folder and Path(folder).resolve() == here:
            orphans.append(job)
    if not orphans:
        return []
    say(f"meldflow: {len(orphans)} SLURM job(s) of an earlier run of this workflow are still "
        f"running (was Snakemake killed?): cancelling {', '.join(orphans)} so that no output "
        f"is ever written by two jobs at once; their outputs are redone")
    subprocess.run(["scancel", *orphans], capture_output=True, timeout=60)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            left = set(run_command(["squeue", "-h", "--me", "-o", "%i"]).split()) & set(orphans)
        except (MeldflowError, subprocess.TimeoutExpired):
            left = set(orphans)
        if not left:
            break
        time.sleep(1)
    return orphans
