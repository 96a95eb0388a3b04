"""`meldflow status`: one row per SLURM job of a workflow run and its training jobs.

Each row is one try of one workflow job (attempts numbered per rule and wildcards), with
its state, exit code, time, CPU efficiency and memory against its request; a failed try
is explained in words, with the end of its SLURM log. Pending jobs say why they wait.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from meldflow import MeldflowError
from meldflow.logs import job_log_excerpt
from meldflow.slurm.accounting import (
    gpus_in,
    sacct_records,
    squeue_jobs,
    to_mb,
    to_seconds,
)
from meldflow.slurm.live import (
    choose_run,
    join_queue,
    mark_unwatched,
    pending_reasons,
    progress,
    progress_text,
    training_labels,
    unwatched_note,
)
from meldflow.slurm.run_record import alive, read_runs, record_summary
from meldflow.slurm.states import TERMINAL, slurm_state
from meldflow.slurm.status_json import status_json


@dataclass
class JobRow:
    """One SLURM job (one attempt of one workflow job)."""

    job_id: str
    rule: str
    wildcards: str
    attempt: int
    state: str
    exit_code: str
    elapsed_s: int
    cpu_efficiency: float | None  # CPU time / (elapsed x allocated CPUs)
    max_rss_mb: float | None
    req_mem_mb: float | None
    reason: str = ""  # why a pending job waits (squeue)
    log: str = ""
    log_tail: list[str] = field(default_factory=list)
    node: str = ""
    gpus: int | None = None  # GPUs allocated (AllocTRES gres/gpu)
    time_limit: str = ""
    explanation: str = ""  # for a failed try: what happened, and what was done about it
    cpus: int = 0  # CPUs allocated
    watched: bool = True  # False: queued or running, but no Snakemake watches its run


def job_rows(records: list[dict], logdir: Path | None = None, reasons: dict | None = None,
             tail_lines: int = 5, labels: dict[str, tuple[str, str]] | None = None,
             run_goes_on: bool = False, workdir: Path | None = None) -> list[JobRow]:
    """Allocation lines merged with their steps, attempts numbered per (rule, wildcards).

    ``labels`` names jobs without a Snakemake comment (the training jobs, every try);
    ``run_goes_on``: a Snakemake still runs the run, so a failed last try may yet be
    resubmitted.
    """
    allocs: dict[str, dict] = {}
    rss: dict[str, float] = {}
    oom: set[str] = set()
    for rec in records:
        raw = rec["JobIDRaw"]
        if "." in raw:  # a step: its peak memory counts for the job
            job = raw.split(".", 1)[0]
            mb = to_mb(rec.get("MaxRSS", ""))
            if mb is not None:
                rss[job] = max(rss.get(job, 0.0), mb)
            # The kernel's OOM kill shows on the step; the job may only say FAILED.
            if slurm_state(rec.get("State", "")) == "OUT_OF_MEMORY":
                oom.add(job)
        else:
            allocs[raw] = rec
    rows = []
    for raw, rec in sorted(allocs.items(), key=lambda kv: (kv[1].get("Submit", ""), kv[0])):
        comment = rec.get("Comment", "")
        if comment.startswith("rule_") or comment.startswith("group_"):
            body = comment.split("_", 1)[1]
            rule, _, wildcards = body.partition("_wildcards_")
        else:
            rule, wildcards = (labels or {}).get(raw, (rec.get("JobName", ""), ""))
        elapsed = int(rec.get("ElapsedRaw") or 0)
        cpus = int(rec.get("AllocCPUS") or 0)
        cpu = to_seconds(rec.get("TotalCPU", ""))
        state = slurm_state(rec.get("State", ""))
        req, peak = to_mb(rec.get("ReqMem", "")), rss.get(raw)
        if state in ("FAILED", "CANCELLED") and (
                raw in oom or (req and peak and peak >= 0.95 * req)):
            state = "OUT_OF_MEMORY"  # killed at its limit (cgroup, or OverMemoryKill)
        log = ""
        if logdir is not None and comment:
            kind = comment.split("_wildcards_")[0]
            path = logdir / kind / wildcards / f"{raw}.log"
            if path.is_file():
                log = str(path)
        rows.append(JobRow(
            job_id=raw, rule=rule, wildcards=wildcards, attempt=0, state=state,
            exit_code=rec.get("ExitCode", ""), elapsed_s=elapsed,
            cpu_efficiency=round(cpu / (elapsed * cpus), 3) if elapsed and cpus else None,
            max_rss_mb=round(rss[raw], 1) if raw in rss else None,
            req_mem_mb=to_mb(rec.get("ReqMem", "")), reason=(reasons or {}).get(raw, ""),
            log=log,
            node=rec.get("NodeList", "") if rec.get("NodeList") != "None assigned" else "",
            gpus=gpus_in(rec.get("AllocTRES", "")), time_limit=rec.get("Timelimit", ""),
            cpus=cpus))
    tries: dict[tuple[str, str], list[JobRow]] = {}
    for row in rows:  # in submission order
        tries.setdefault((row.rule, row.wildcards), []).append(row)
        row.attempt = len(tries[(row.rule, row.wildcards)])
    for seq in tries.values():
        for row, after in zip(seq, seq[1:] + [None], strict=True):
            row.explanation = explain(row, after, run_goes_on)
            if row.log and row.state not in ("COMPLETED", "RUNNING", "PENDING"):
                row.log_tail = job_log_excerpt(Path(row.log), tail_lines,
                                               workdir or Path.cwd(), after is None)
    return rows


def explain(row: JobRow, after: JobRow | None, run_goes_on: bool = False) -> str:
    """A failed try in plain words: what happened, and what was done about it."""
    nxt = f"try {row.attempt + 1}"
    mem = f"{row.req_mem_mb:.0f} MB" if row.req_mem_mb else "its memory request"
    peak = f" (peak {row.max_rss_mb:.0f} MB)" if row.max_rss_mb else ""
    node = row.node or "its node"
    what = {
        "OUT_OF_MEMORY": f"ran out of memory at {mem}{peak}",
        "TIMEOUT": f"ran past its time limit of {row.time_limit or '?'}",
        "NODE_FAIL": f"node {node} failed under it",
        "CANCELLED": "was cancelled from outside (scancel, an admin or a preemption)",
        "PREEMPTED": "was preempted",
        "FAILED": f"failed (exit {row.exit_code}): the rule's own error, see its log",
        "BOOT_FAIL": f"node {node} failed to start it",
        "DEADLINE": "missed its deadline",
    }.get(row.state)
    if what is None:
        return ""
    if row.state == "NODE_FAIL":
        what = f"node {node} failed"
    if after is None and run_goes_on:
        return (f"{what}; the run goes on: a resubmission (if retries are left) shows here "
                f"as {nxt}")
    if after is None:
        return f"{what}; not tried again (retries used up, or the run was stopped)"
    link = f" → job {after.job_id}, {after.state}"  # the resubmission, as soon as queued
    if row.state == "OUT_OF_MEMORY" and after.req_mem_mb:
        return f"{what}; {nxt} asked for {after.req_mem_mb:.0f} MB{link}"
    if row.state == "TIMEOUT" and after.time_limit:
        return f"{what}; {nxt} got {after.time_limit}{link}"
    if row.state == "NODE_FAIL":
        where = f"redone on {after.node}" if after.node else "redone"
        return f"{what}; {where} ({nxt}){link}"
    return f"{what}; resubmitted as {nxt}{link}"


# Where the SLURM plugin writes a job's log when no profile says (its default).
PLUGIN_LOGDIR = ".snakemake/slurm_logs"
# The project's profile: in the working folder, else beside the package (a run from
# another folder with `--profile <project>/cluster/slurm`).
PROFILES = (Path("cluster") / "slurm" / "config.yaml",
            Path(__file__).resolve().parents[3] / "cluster" / "slurm" / "config.yaml")


def slurm_logdir(workdir: Path) -> Path:
    """The job log folder the project's SLURM profile names (its `slurm-logdir`)."""
    import yaml

    for profile in PROFILES:
        try:
            named = (yaml.safe_load((workdir / profile).read_text()) or {}).get("slurm-logdir")
        except (OSError, yaml.YAMLError):
            continue
        if named:
            return workdir / named
    return workdir / PLUGIN_LOGDIR


@dataclass
class Snapshot:
    """What `meldflow status` shows at one refresh."""

    run_id: str | None
    run: dict | None  # the run's record (meldflow.slurm.run_record), if it has one
    rows: list[JobRow]
    note: str = ""
    accounted: bool = True  # False: sacct did not answer, the rows are squeue's alone


def collect(workdir: str | Path, run_id: str | None, tail_lines: int) -> Snapshot:
    """One workflow run (:func:`choose_run`) and its training jobs: one
    sacct and one squeue call, joined (``live.join_queue``), so that running and pending
    jobs have their rule and wildcards and a resubmission is linked as soon as it is
    queued. Jobs still queued or running under a run no Snakemake watches are marked.

    Without accounting (slurmdbd down or overloaded), the note says so and the rows are
    what squeue still sees queued or running.
    """
    if not shutil.which("sacct"):
        raise MeldflowError("sacct is not available here: `meldflow status` reads SLURM "
                            "accounting, so run it on the cluster's login node (a local run "
                            "logs to results/logs/ instead)")
    workdir = Path(workdir)
    run_id, run, note = choose_run(workdir, run_id)
    labels = training_labels(workdir, run)
    train_ids = list(labels)
    goes_on = run is not None and alive(run)
    try:
        queue = squeue_jobs() if shutil.which("squeue") else {}
        queue_note = ""
    except (MeldflowError, subprocess.TimeoutExpired) as exc:
        queue, queue_note = {}, f"squeue failed: {str(exc)[:200]}"
    try:
        records: list[dict] = []
        if run_id or train_ids:
            # one call: the run's jobs by name, its training jobs (named by submitit) too
            names = [run_id] if run_id else []
            records = sacct_records(names=names + (["submitit"] if train_ids else []))
            ours = {r["JobIDRaw"] for r in records if r.get("JobName") == run_id} | set(
                train_ids)  # steps (12.batch) carry their own names: kept by job id
            records = [r for r in records if r["JobIDRaw"].split(".")[0] in ours
                       or r["JobIDRaw"].split(".")[0].split("_")[0] in train_ids]
    except (MeldflowError, subprocess.TimeoutExpired) as exc:
        note = "; ".join(filter(None, [note, (
            f"SLURM accounting (sacct) is unreachable ({str(exc).splitlines()[0][:200]}): "
            f"finished "
            f"jobs cannot be shown until slurmdbd answers again; below is what squeue sees "
            f"still queued or running") + (f" ({queue_note})" if queue_note else "")]))
        rows = job_rows(join_queue([], queue, run_id, train_ids), None,
                        pending_reasons(queue), tail_lines, labels, goes_on)
        return Snapshot(run_id, run, mark_unwatched(rows, run), note, accounted=False)
    records = join_queue(records, queue, run_id, train_ids)
    rows = job_rows(records, slurm_logdir(workdir), pending_reasons(queue), tail_lines,
                    labels, goes_on, workdir)
    note = "; ".join(filter(None, [note, queue_note and f"live state unknown: {queue_note}"]))
    return Snapshot(run_id, run, mark_unwatched(rows, run), note, accounted=not queue_note)


def off_cluster_trainings(workdir: str | Path = ".") -> list[str]:
    """Training runs whose job went to this machine, not to SLURM (their job.json says
    executor local): under the SLURM profile only a config that asks for it does that."""
    train = Path(workdir) / "results" / "train"
    out = []
    for job_file in sorted(train.glob("*/seed-*/job.json")):
        try:
            job = json.loads(job_file.read_text())
        except (OSError, ValueError):
            continue
        if job.get("executor") in ("local", "debug"):
            out.append(f"results/train/{job_file.parent.relative_to(train)} "
                       f"({job['executor']}, on {job.get('host', 'this host')})")
    return out


def _fmt_mem(row: JobRow) -> str:
    used = f"{row.max_rss_mb:.0f}" if row.max_rss_mb is not None else "-"
    req = f"{row.req_mem_mb:.0f}" if row.req_mem_mb is not None else "-"
    return f"{used}/{req}"


def format_table(run_id: str | None, rows: list[JobRow], note: str = "",
                 off_cluster: list[str] | None = None, progress: str = "",
                 record_says: str = "") -> str:
    """A fixed-width table, then each failed try explained, with its log tail; training
    runs that ran off the cluster are named. ``record_says``: what the run record knows,
    shown instead of an empty table when accounting is down."""
    local = ("\ntrained off the cluster (not SLURM jobs): " + "; ".join(off_cluster)
             if off_cluster else "")
    if not rows and record_says:  # accounting down and nothing queued: no empty table
        return "\n".join([f"SLURM run {run_id}" if run_id else "SLURM jobs",
                          f"NOTE: {note}" if note else "",
                          f"squeue sees none of its jobs queued or running; {record_says}"]
                         ).replace("\n\n", "\n") + local
    if not rows and not note:
        return (f"no SLURM jobs found for run {run_id}" if run_id else
                "no SLURM run found: no .snakemake/log/ with a SLURM run ID here "
                "(run `snakemake --profile cluster/slurm` from this folder)") + local
    gpus = any(r.gpus for r in rows)
    head = ["rule", "wildcards", "try", "job", "node", "state", "exit", "elapsed", "cpu eff",
            "mem MB used/req"] + (["gpus"] if gpus else [])
    table = [head]
    for r in rows:
        state = r.state + (f" ({r.reason})" if r.reason else "") + (
            ", unwatched" if not r.watched else "")
        table.append([r.rule, r.wildcards or "-", str(r.attempt or "-"), r.job_id,
                      r.node or "-", state, r.exit_code or "-",
                      time.strftime("%H:%M:%S", time.gmtime(r.elapsed_s)),
                      f"{r.cpu_efficiency:.0%}" if r.cpu_efficiency is not None else "-",
                      _fmt_mem(r)] + ([str(r.gpus or "-")] if gpus else []))
    widths = [max(len(line[i]) for line in table) for i in range(len(head))]
    out = [f"SLURM run {run_id}" if run_id else "SLURM jobs"]
    if note:
        out.append(f"NOTE: {note}")
    if progress:
        out += [progress, ""]
    out += ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
            for line in table]
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.state] = counts.get(r.state, 0) + 1
    out.append("jobs: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    for r in rows:
        if r.state not in ("COMPLETED", "RUNNING", "PENDING", "REQUEUED"):
            out.append(f"\n{r.rule} {r.wildcards} try {r.attempt} (job {r.job_id}"
                       + (f", node {r.node}" if r.node else "") + f"): {r.state}"
                       + (f": {r.explanation}" if r.explanation else "")
                       + f"\n    log {r.log or 'not found'}")
            out += [f"    {line}" for line in r.log_tail]
    return "\n".join(out) + local


def status(workdir: str | Path, run_id: str | None, as_json: bool, watch: float,
           tail_lines: int) -> int:
    """Print the run's jobs (refreshing every ``watch`` s until all are done and no
    Snakemake runs); exit code. The run is chosen again at each refresh, so a watch started
    beside a new Snakemake follows it once it submits."""
    while True:
        snap = collect(workdir, run_id, tail_lines)
        note = "; ".join(filter(None, [snap.note, unwatched_note(snap.run, snap.rows)]))
        local = off_cluster_trainings(workdir)
        numbers = progress(snap.rows, Path(workdir))
        if as_json:
            print(json.dumps(status_json(snap.run_id, snap.run, snap.rows, note, numbers,
                                         local), indent=1))
        else:
            if watch:
                print("\033[2J\033[H", end="")
            says = record_summary(snap.run) if not snap.accounted and snap.run else ""
            print(format_table(snap.run_id, snap.rows, note, local, progress_text(numbers),
                               says))
        runs = read_runs(workdir)
        done = (snap.accounted and not (runs and alive(runs[-1]))
                and all(r.state in TERMINAL for r in snap.rows))
        if not watch or done:
            return 0
        try:
            time.sleep(watch)
        except KeyboardInterrupt:  # the usual way to stop watching
            return 0
