"""A run while it runs: accounting joined with the controller's queue, and progress.

Accounting (sacct) stores a job's comment, where Snakemake's SLURM plugin writes the rule and
wildcards, only when the job ends; the controller (squeue) has it from submission. Without
the join, running and pending jobs have no rule, tries are miscounted and a cancelled try
is not linked to its resubmission until both have ended.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from meldflow.slurm.states import TERMINAL

RUNNING = {"RUNNING", "COMPLETING", "CONFIGURING", "SIGNALING", "STAGE_OUT"}
WAITING = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SUSPENDED"}
# The workflow's rules of one job per split and shard, once ingest has planned the shards
# (workflow/rules/preprocess.smk; the workflow's start checks their asks by this name).
SHARD_RULES = ("transcribe", "frames", "align")


def join_queue(records: list[dict], queue: dict[str, dict], run_id: str | None,
               train_ids: list[str]) -> list[dict]:
    """sacct's records with what squeue knows now of this run's jobs (named after the run,
    or training jobs): the comment, the live state and node, and the jobs accounting has
    not recorded yet. The records are changed in place and returned."""
    allocs = {r["JobIDRaw"]: r for r in records if "." not in r["JobIDRaw"]}
    for job_id, q in queue.items():
        if q["JobName"] != run_id and job_id.split("_")[0] not in train_ids:
            continue
        rec = allocs.get(job_id)
        if rec is None:
            rec = {"JobIDRaw": job_id, "JobID": job_id, "JobName": q["JobName"],
                   "Submit": q["Submit"], "ExitCode": "", "ElapsedRaw": "0"}
            records.append(rec)
        if not rec.get("Comment") and q["Comment"] not in ("", "(null)"):
            rec["Comment"] = q["Comment"]
        rec["State"] = q["State"]
        if q["NodeList"]:
            rec["NodeList"] = q["NodeList"]
    return records


def pending_reasons(queue: dict[str, dict]) -> dict[str, str]:
    """Why each queued job waits (Resources, Priority, QOSMaxJobsPerUser, ...)."""
    return {job: q["Reason"] for job, q in queue.items() if q["State"] == "PENDING"}


def shard_totals(workdir: Path) -> dict[str, int]:
    """How many jobs each rule has in all, where ingest has planned the shards (its
    ``results/ingest/{split}.shards.json``); other rules count the jobs seen."""
    infos = [json.loads(p.read_text())
             for p in sorted((workdir / "results" / "ingest").glob("*.shards.json"))]
    if not infos:
        return {}
    shards = sum(int(i.get("num_shards", 0)) for i in infos)
    return dict.fromkeys(SHARD_RULES, shards) | {"manifest": len(infos)}


def rule_progress(rows: list, totals: dict[str, int]) -> list[list[str]]:
    """Per rule: jobs done, running, pending and failed (each job by its latest try), of
    the total. Training jobs are shown by their own progress lines instead."""
    latest: dict[tuple[str, str], object] = {}
    for row in rows:  # in submission order: the last try of each job wins
        if not row.rule.startswith("train "):
            latest[(row.rule, row.wildcards)] = row
    counts: dict[str, list[int]] = {}
    for (rule, _), row in latest.items():
        c = counts.setdefault(rule, [0, 0, 0, 0])
        if row.state == "COMPLETED":
            c[0] += 1
        elif row.state in RUNNING:
            c[1] += 1
        elif row.state in WAITING:
            c[2] += 1
        elif row.state in TERMINAL:
            c[3] += 1
    return [[rule, *map(str, c), str(max(totals.get(rule, 0), sum(c)))]
            for rule, c in counts.items()]


STEP_LINE = re.compile(r"step (\d+)/(\d+) .*\| (\S+) left")


def training_progress(workdir: Path) -> list[str]:
    """One line per training run submitted to SLURM: its step of the total and the time
    left, from the last progress line of rank 0's log (submitit/<job>_0_log.err)."""
    out = []
    train = workdir / "results" / "train"
    for job_file in sorted(train.glob("*/seed-*/job.json")):
        try:
            job = json.loads(job_file.read_text())
        except (OSError, ValueError):
            continue
        if job.get("executor") != "slurm":
            continue
        run = job_file.parent
        where = f"train {run.relative_to(train)} (job {job.get('job_id')})"
        if (run / "metrics.json").is_file():
            out.append(f"{where}: finished")
            continue
        log = run / "submitit" / f"{job.get('job_id')}_0_log.err"
        steps = STEP_LINE.findall(log.read_text(errors="replace")) if log.is_file() else []
        step = ("", *steps[-1]) if steps else None
        out.append(f"{where}: step {step[1]}/{step[2]}, {step[3]} left" if step else
                   f"{where}: no progress line yet ({log.name})")
    return out


def progress_text(rows: list, workdir: Path) -> str:
    """The header `meldflow status` prints above the jobs."""
    table = [["progress", "done", "running", "pending", "failed", "of"]]
    table += rule_progress(rows, shard_totals(workdir))
    lines = []
    if len(table) > 1:
        widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                 for r in table]
    return "\n".join(lines + training_progress(workdir))
