"""A run while it runs: accounting joined with the controller's queue, and progress.

Accounting (sacct) stores a job's comment, where Snakemake's SLURM plugin writes the rule and
wildcards, only when the job ends; the controller (squeue) has it from submission. Without
the join, running and pending jobs have no rule, tries are miscounted and a cancelled try
is not linked to its resubmission until both have ended.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from meldflow.shard_schema import SHARD_RULES
from meldflow.slurm.accounting import latest_run_id
from meldflow.slurm.run_record import alive, read_runs, submitted
from meldflow.slurm.states import TERMINAL

RUNNING = {"RUNNING", "COMPLETING", "CONFIGURING", "SIGNALING", "STAGE_OUT"}
WAITING = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SUSPENDED"}


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


def rule_progress(rows: list, totals: dict[str, int]) -> dict[str, dict]:
    """Per rule: jobs done, running, pending and failed (each job by its latest try), of
    the total; the fraction done, and the seconds left at the pace of its finished jobs
    (None before one has finished). Training jobs have their own progress lines."""
    latest: dict[tuple[str, str], object] = {}
    for row in rows:  # in submission order: the last try of each job wins
        if not row.rule.startswith("train "):
            latest[(row.rule, row.wildcards)] = row
    out: dict[str, dict] = {}
    took: dict[str, list[int]] = {}
    for (rule, _), row in latest.items():
        c = out.setdefault(rule, {"done": 0, "running": 0, "pending": 0, "failed": 0})
        if row.state == "COMPLETED":
            c["done"] += 1
            took.setdefault(rule, []).append(row.elapsed_s)
        elif row.state in RUNNING:
            c["running"] += 1
        elif row.state in WAITING:
            c["pending"] += 1
        elif row.state in TERMINAL:
            c["failed"] += 1
    for rule, c in out.items():
        c["total"] = max(totals.get(rule, 0), sum(c.values()))
        c["fraction_done"] = round(c["done"] / c["total"], 3) if c["total"] else 0.0
        left = c["total"] - c["done"] - c["failed"]
        pace = sum(took[rule]) / len(took[rule]) if took.get(rule) else None
        c["eta_s"] = (None if pace is None else
                      round(pace * left / max(1, c["running"])) if left else 0)
    return out


STEP_LINE = re.compile(r"step (\d+)/(\d+) .*\| (\S+) left")
DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def seconds_of(text: str) -> int | None:
    """A progress line's time left (``1h02m``, ``11m02s``, ``42s``) in seconds."""
    m = DURATION.match(text)
    if not m or not any(m.groups()):
        return None
    h, mins, secs = (int(g or 0) for g in m.groups())
    return h * 3600 + mins * 60 + secs


def training_progress(workdir: Path) -> list[dict]:
    """Each training run submitted to SLURM: its job, and its step of the total and the
    seconds left from the last progress line of rank 0's log (submitit/<job>_0_log.err)."""
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
        entry = {"run": str(run.relative_to(train)), "job_id": str(job.get("job_id")),
                 "finished": (run / "metrics.json").is_file(), "step": None, "steps": None,
                 "left_s": None}
        log = run / "submitit" / f"{job.get('job_id')}_0_log.err"
        steps = STEP_LINE.findall(log.read_text(errors="replace")) if log.is_file() else []
        if steps and not entry["finished"]:
            step, total, left = steps[-1]
            entry |= {"step": int(step), "steps": int(total), "left_s": seconds_of(left)}
        out.append(entry)
    return out


def progress(rows: list, workdir: Path) -> dict:
    """The run's progress in numbers (``meldflow status --json``'s ``progress``)."""
    rules = rule_progress(rows, shard_totals(workdir))
    total = sum(c["total"] for c in rules.values())
    etas = [c["eta_s"] for c in rules.values() if c["done"] + c["failed"] < c["total"]]
    return {"rules": rules,
            "fraction_done": round(sum(c["done"] for c in rules.values()) / total, 3)
            if total else 0.0,
            "eta_s": None if None in etas else max(etas, default=0),
            "training": training_progress(workdir)}


def _left(seconds: int | None) -> str:
    if seconds is None:
        return "?"
    h, rest = divmod(int(seconds), 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def progress_text(numbers: dict) -> str:
    """The header `meldflow status` prints above the jobs, from :func:`progress`."""
    table = [["progress", "done", "running", "pending", "failed", "of", "left"]]
    table += [[rule, *(str(c[k]) for k in ("done", "running", "pending", "failed", "total")),
               _left(c["eta_s"]) if c["eta_s"] else "-"]
              for rule, c in numbers["rules"].items()]
    lines = []
    if len(table) > 1:
        widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                 for r in table]
    for t in numbers["training"]:
        where = f"train {t['run']} (job {t['job_id']})"
        lines.append(f"{where}: finished" if t["finished"] else
                     f"{where}: step {t['step']}/{t['steps']}, {_left(t['left_s'])} left"
                     if t["step"] is not None else f"{where}: no progress line yet "
                                                   f"({t['job_id']}_0_log.err)")
    return "\n".join(lines)


def choose_run(workdir: Path, run_id: str | None) -> tuple[str | None, dict | None, str]:
    """(SLURM run id, its record, a note) of the run to show: ``run_id``, else the latest
    run that submitted jobs (from the records of meldflow's logger plugin), saying so when
    a later one submitted none; without records, the newest Snakemake log's run id."""
    runs = read_runs(workdir)
    if run_id:
        return run_id, next((r for r in runs if r["slurm_run_id"] == run_id), None), ""
    working = [r for r in runs if submitted(r) and r["slurm_run_id"]]
    chosen = working[-1] if working else None
    note = ""
    if runs and runs[-1] is not chosen:
        latest = runs[-1]
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(latest["started"]))
        state = "is running and has submitted no job yet" if alive(latest) else \
            "submitted no job (nothing to do)"
        note = f"the latest Snakemake run (started {when}) {state}" + (
            "; shown: the latest run that did, started " + time.strftime(
                "%Y-%m-%d %H:%M:%S", time.localtime(chosen["started"])) if chosen else "")
    if chosen is None:
        return latest_run_id(workdir), None, note
    return chosen["slurm_run_id"], chosen, note


def training_labels(workdir: Path, run: dict | None) -> dict[str, tuple[str, str]]:
    """Job id -> (rule label, "") of every training job submitted to SLURM (each try the
    run folder's job.json records) up to ``run``'s end, when there is a record: a run
    also waits for a job an earlier one submitted (a restarted workflow reattaches)."""
    labels = {}
    end = (run["ended"] or time.time()) if run else float("inf")
    for job_file in sorted((workdir / "results" / "train").glob("*/seed-*/job.json")):
        try:
            job = json.loads(job_file.read_text())
        except (OSError, ValueError):
            continue
        tries = job.get("tries") or [{"job_id": job.get("job_id"), "submitted": None,
                                      "executor": job.get("executor")}]
        name = job_file.parent.relative_to(workdir / "results" / "train")
        for t in tries:
            if t.get("executor") == "slurm" and t.get("job_id") and (
                    t.get("submitted") is None or t["submitted"] <= end):
                labels[str(t["job_id"]).split("_")[0]] = (f"train {name} (submitit)", "")
    return labels


def mark_unwatched(rows: list, run: dict | None) -> list:
    """Queued or running jobs of a run that no Snakemake runs any more (killed, or ended
    without them): nobody will collect their output or resubmit them."""
    if run is not None and not alive(run):
        for row in rows:
            if row.state in RUNNING | WAITING:
                row.watched = False
    return rows


def unwatched_note(run: dict | None, rows: list) -> str:
    """What to do about the jobs no Snakemake watches, if any."""
    orphans = [r for r in rows if not r.watched]
    if not orphans or run is None:
        return ""
    since = time.strftime("%H:%M:%S", time.localtime(run["heartbeat"]))
    return (f"{len(orphans)} queued or running job(s) of this run are watched by no Snakemake"
            f" (its heartbeat stopped at {since}: it was killed, or its node went down): "
            f"nothing will collect their outputs. Run the same snakemake command again (it "
            f"cancels them first and redoes their work), or scancel them")
