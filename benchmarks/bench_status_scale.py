"""`meldflow status` on a run with many SLURM jobs in accounting (the local cluster).

Submits N trivial jobs (default 850: what full MELD at shard_size 50 makes) under one
Snakemake-like run name, each with a `rule_<rule>_wildcards_<values>` comment, waits until
accounting has them all, then times `meldflow status --run <name>` (a few repeats) and
counts the sacct and squeue calls it makes, through logging wrappers on PATH. Needs
cluster/local-slurm/up.sh (as root).

Run: .venv/bin/python benchmarks/bench_status_scale.py [--jobs 850] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

RULES = ("transcribe", "frames", "align")


def submit(name: str, n: int, logs: Path) -> list[str]:
    """``n`` jobs that exit at once, named ``name``, commented like Snakemake's."""
    ids = []
    for i in range(n):
        rule, shard = RULES[i % 3], f"train_{i // 3:04d}"
        out = subprocess.run(
            ["sbatch", "--parsable", f"--job-name={name}", "--mem=50M", "--time=1",
             f"--comment=rule_{rule}_wildcards_{shard}", f"--output={logs}/%j.log",
             "--wrap=true"], capture_output=True, text=True, check=True).stdout
        ids.append(out.strip().split(";")[0])
    return ids


def wait_accounted(name: str, n: int, limit_s: float = 900) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        out = subprocess.run(["sacct", "-X", "-n", "-P", "--name", name, "-o", "State",
                              "-S", "now-1days"], capture_output=True, text=True).stdout
        states = out.split()
        if len(states) >= n and all(s == "COMPLETED" for s in states):
            return
        time.sleep(2)
    raise SystemExit(f"accounting did not show {n} finished jobs of {name} in time")


def counting_path(tmp: Path) -> dict:
    """An environment whose sacct and squeue log each call to ``tmp/calls``."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    for tool in ("sacct", "squeue"):
        real = shutil.which(tool)
        (bin_dir / tool).write_text(f'#!/bin/sh\necho {tool} >> "{tmp}/calls"\nexec {real} "$@"\n')
        (bin_dir / tool).chmod(0o755)
    return dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=850)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if not shutil.which("sbatch"):
        raise SystemExit("no SLURM here: run cluster/local-slurm/up.sh (as root) first")
    tmp = Path(tempfile.mkdtemp(prefix="meldflow-status-"))
    name = str(uuid.uuid4())
    try:
        (tmp / "logs").mkdir()
        start = time.monotonic()
        submit(name, args.jobs, tmp / "logs")
        wait_accounted(name, args.jobs)
        print(f"{args.jobs} jobs of run {name} submitted and finished in "
              f"{time.monotonic() - start:.0f} s")
        env = counting_path(tmp)
        meldflow = Path(sys.executable).with_name("meldflow")
        times = []
        for _ in range(args.repeats):
            (tmp / "calls").unlink(missing_ok=True)
            t = time.perf_counter()
            proc = subprocess.run([str(meldflow), "status", "--run", name, "--dir", str(tmp)],
                                  capture_output=True, text=True, env=env)
            times.append(time.perf_counter() - t)
            if proc.returncode:
                raise SystemExit(proc.stderr)
        calls = (tmp / "calls").read_text().split()
        rows = [ln for ln in proc.stdout.splitlines() if ln.startswith(RULES)]
        print(f"`meldflow status --run ...`: {len(rows)} job rows; "
              f"{calls.count('sacct')} sacct call(s), {calls.count('squeue')} squeue "
              f"call(s) per refresh; median {statistics.median(times):.2f} s "
              f"(of {args.repeats}; target < 2 s: "
              f"{'met' if statistics.median(times) < 2 else 'NOT met'})")
        print(proc.stdout.splitlines()[-1])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
