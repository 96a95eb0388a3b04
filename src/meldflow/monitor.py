"""SLURM job states for one workflow run: `meldflow status`, and the plugin's state fix.

Snakemake's SLURM plugin names every job of a run after the run's UUID and puts
``rule_<rule>_wildcards_<values>`` in the job comment; its SLURM logs go to
``<slurm-logdir>/rule_<rule>/<values>/<jobid>.log``. This module reads ``sacct`` (and
``squeue`` for why a job waits) for those jobs and for the submitit training job.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from meldflow import MeldflowError

TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL",
            "BOOT_FAIL", "DEADLINE", "PREEMPTED"}
SACCT_FIELDS = ["JobIDRaw", "JobID", "JobName%200", "Comment%300", "State%40", "ExitCode",
                "ElapsedRaw", "TotalCPU", "AllocCPUS", "ReqMem", "MaxRSS", "Submit",
                "NodeList%200", "AllocTRES%300", "Timelimit"]
RUN_ID = re.compile(r"SLURM run ID: (\S+)")
NODE_NAME = re.compile(r"[A-Za-z0-9][\w.\-]*(\[[\d,\-]+\])?(,[A-Za-z0-9][\w.\-]*(\[[\d,\-]+\])?)*")


def slurm_state(raw: str) -> str:
    """The bare state word: sacct writes a cancelled job as ``CANCELLED by <uid>``."""
    words = (raw or "").split()
    return words[0].rstrip("+") if words else "UNKNOWN"


def plugin_state(raw: str) -> str:
    """The state the plugin should act on. A job SLURM preempted and did not requeue (the
    profile submits with --no-requeue) is over: the plugin (2.8.0) would keep it as
    running forever, so it sees CANCELLED, a failed try that is resubmitted."""
    state = slurm_state(raw)
    return "CANCELLED" if state == "PREEMPTED" else state


def real_nodes(names) -> set[str]:
    """The node names (or host lists) among ``names``; drops sacct's ``None assigned``."""
    return {n for n in names or () if NODE_NAME.fullmatch(n) and n != "None"}


def patch_slurm_plugin() -> bool:
    """Make snakemake-executor-plugin-slurm (2.8.0) survive two things real clusters do.

    1. ``check_active_jobs`` tests ``status in fail_stati`` on sacct's raw state, so
       ``CANCELLED by 0`` (a job scancel'ed from outside) counts as still running and the
       workflow waits forever: states are cut to their bare word.
    Preempted jobs that SLURM does not requeue are failed tries too (``plugin_state``).
    2. When ``sacct`` fails (slurmdbd stopped or overloaded), ``query_job_status`` returns
       None and ``check_active_jobs`` then yields none of the active jobs: Snakemake
       forgets them, and a run whose jobs all finish during the outage waits forever.
       An empty answer instead keeps every job active (the plugin yields jobs that sacct
       does not list) until accounting answers again.

    3. After a NODE_FAIL the plugin asks sacct for the job's node and adds the answer to
       ``--exclude`` for every later submission; right after the failure sacct answers
       ``None assigned``, and ``--exclude=None assigned`` makes every later ``sbatch``
       fail ("Unable to open file assigned"). Only real node names are passed on (SLURM
       itself never schedules onto a node that is down).

    The plugin looks ``query_job_status`` and ``get_submit_command`` up in its module at
    each call, so wrapping those functions fixes all three at their source. Idempotent;
    returns False where the plugin is not installed.
    """
    try:
        import snakemake_executor_plugin_slurm as plugin
    except ImportError:
        return False
    original = plugin.query_job_status
    if getattr(original, "meldflow_normalised", False):
        return True
    outage = {"since": None}

    async def query_job_status(command, logger):
        states, duration = await original(command, logger)
        if states is None:
            if outage["since"] is None:
                outage["since"] = time.monotonic()
                logger.warning("meldflow: the job status query failed (is slurmdbd down?); "
                               "every submitted job is kept as running until SLURM "
                               "accounting answers again")
            return {}, 0.0
        if outage["since"] is not None:
            logger.warning(f"meldflow: SLURM accounting answers again after "
                           f"{time.monotonic() - outage['since']:.0f} s")
            outage["since"] = None
        return {job: plugin_state(state) for job, state in states.items()}, duration

    query_job_status.meldflow_normalised = True
    plugin.query_job_status = query_job_status

    submit_command = plugin.get_submit_command

    def get_submit_command(job, params, settings=None, failed_nodes=None, array_job=False):
        return submit_command(job, params, settings=settings,
                              failed_nodes=real_nodes(failed_nodes), array_job=array_job)

    get_submit_command.meldflow_wrapped = True
    plugin.get_submit_command = get_submit_command
    return True


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
        out = _run(["squeue", "-h", "--me", "-o", "%i|%k|%Z|%T"])
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
            left = set(_run(["squeue", "-h", "--me", "-o", "%i"]).split()) & set(orphans)
        except (MeldflowError, subprocess.TimeoutExpired):
            left = set(orphans)
        if not left:
            break
        time.sleep(1)
    return orphans


def failed_log_tails(snakemake_logs, lines: int = 15) -> str:
    """The end of the log of every job that failed in a Snakemake run (its ``Error in rule``
    blocks name the logs), so the terminal says what went wrong, not only where to look.
    ``snakemake_logs``: the run's log file(s), as Snakemake hands them to ``onerror``."""
    if isinstance(snakemake_logs, str | Path):
        snakemake_logs = [snakemake_logs]
    text = ""
    for path in snakemake_logs or []:
        try:
            text += Path(path).read_text(errors="replace")
        except OSError:
            continue
    out, seen = [], set()
    for block in text.split("Error in rule ")[1:]:
        rule = block.split(":", 1)[0]
        m = re.search(r"^\s+log: (.+?)(?: \(check log file\(s\) for error details\))?$",
                      block, re.M)
        for path in (m.group(1).split(", ") if m else []):
            path = path.strip()
            if path in seen or not Path(path).is_file():
                continue
            seen.add(path)
            out.append(f"--- {rule}: last lines of {path}")
            out += [f"    {line}" for line in tail(Path(path), lines)]
    return "\n".join(out)


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


def _mb(text: str) -> float | None:
    """sacct memory (``1500M``, ``2G``, ``812K``, ``2000Mn``) in MB."""
    m = re.match(r"^([\d.]+)([KMGT]?)", text or "")
    if not m or not m.group(1):
        return None
    scale = {"": 1 / 2**20, "K": 1 / 1024, "M": 1, "G": 1024, "T": 2**20}[m.group(2)]
    return float(m.group(1)) * scale


def _seconds(text: str) -> float:
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


def latest_run_id(workdir: str | Path = ".") -> str | None:
    """The SLURM run ID of the newest Snakemake log in ``workdir`` that has one."""
    logs = sorted(Path(workdir, ".snakemake", "log").glob("*.snakemake.log"),
                  key=lambda p: p.stat().st_mtime, reverse=True)
    for log in logs:
        m = RUN_ID.search(log.read_text(errors="replace"))
        if m:
            return m.group(1)
    return None


def _run(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise MeldflowError(f"{' '.join(cmd[:2])} failed: {proc.stderr.strip()}")
    return proc.stdout


def sacct_records(name: str | None = None, job_ids: list[str] | None = None,
                  days: int = 7) -> list[dict]:
    """sacct lines (allocations and steps) for a job name or job ids."""
    cmd = ["sacct", "-P", "-n", "--format=" + ",".join(SACCT_FIELDS),
           "--starttime", f"now-{days}days"]
    if name:
        cmd += ["--name", name]
    if job_ids:
        cmd += ["--jobs", ",".join(job_ids)]
    names = [f.split("%")[0] for f in SACCT_FIELDS]
    return [dict(zip(names, line.split("|", len(names) - 1), strict=False))
            for line in _run(cmd).splitlines() if line.strip()]


def squeue_reasons(name: str | None = None) -> dict[str, str]:
    """Why each queued job of ``name`` waits (e.g. Resources, Priority, QOSMaxJobsPerUser)."""
    if not shutil.which("squeue"):
        return {}
    cmd = ["squeue", "-h", "-o", "%i|%T|%r"] + (["--name", name] if name else [])
    try:
        out = _run(cmd)
    except (MeldflowError, subprocess.TimeoutExpired):
        return {}
    reasons = {}
    for line in out.splitlines():
        job, state, reason = (line.split("|") + ["", ""])[:3]
        if state == "PENDING":
            reasons[job] = reason
    return reasons


def tail(path: Path, lines: int) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return []


def job_rows(records: list[dict], logdir: Path | None = None, reasons: dict | None = None,
             tail_lines: int = 5, labels: dict[str, tuple[str, str]] | None = None
             ) -> list[JobRow]:
    """Allocation lines merged with their steps, attempts numbered per (rule, wildcards).

    ``labels`` names jobs without a Snakemake comment (the training job).
    """
    allocs: dict[str, dict] = {}
    rss: dict[str, float] = {}
    oom: set[str] = set()
    for rec in records:
        raw = rec["JobIDRaw"]
        if "." in raw:  # a step: its peak memory counts for the job
            job = raw.split(".", 1)[0]
            mb = _mb(rec.get("MaxRSS", ""))
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
        cpu = _seconds(rec.get("TotalCPU", ""))
        state = slurm_state(rec.get("State", ""))
        req, peak = _mb(rec.get("ReqMem", "")), rss.get(raw)
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
            req_mem_mb=_mb(rec.get("ReqMem", "")), reason=(reasons or {}).get(raw, ""),
            log=log, log_tail=tail(Path(log), tail_lines)
            if log and state not in ("COMPLETED", "RUNNING", "PENDING") else [],
            node=rec.get("NodeList", "") if rec.get("NodeList") != "None assigned" else "",
            gpus=_gpus(rec.get("AllocTRES", "")), time_limit=rec.get("Timelimit", "")))
    tries: dict[tuple[str, str], list[JobRow]] = {}
    for row in rows:  # in submission order
        tries.setdefault((row.rule, row.wildcards), []).append(row)
        row.attempt = len(tries[(row.rule, row.wildcards)])
    for seq in tries.values():
        for row, after in zip(seq, seq[1:] + [None], strict=True):
            row.explanation = explain(row, after)
    return rows


def _gpus(tres: str) -> int | None:
    """GPUs in an AllocTRES string (``cpu=4,mem=16G,node=1,gres/gpu=2``), else None."""
    m = re.search(r"gres/gpu(?::[^=,]+)?=(\d+)", tres or "")
    return int(m.group(1)) if m else None


def explain(row: JobRow, after: JobRow | None) -> str:
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
    if after is None:
        return f"{what}; not tried again (retries used up, or the run was stopped)"
    if row.state == "OUT_OF_MEMORY" and after.req_mem_mb:
        return f"{what}; {nxt} asked for {after.req_mem_mb:.0f} MB"
    if row.state == "TIMEOUT" and after.time_limit:
        return f"{what}; {nxt} got {after.time_limit}"
    if row.state == "NODE_FAIL":
        where = f"redone on {after.node}" if after.node else "redone"
        return f"{what}; {where} ({nxt})"
    return f"{what}; resubmitted as {nxt}"


def squeue_rows(name: str) -> list[JobRow]:
    """What squeue (slurmctld, not accounting) knows of a run: its queued and running jobs."""
    out = _run(["squeue", "-h", "--name", name, "-o", "%i|%k|%T|%N|%r|%L|%b"])
    rows = []
    for line in out.splitlines():
        job, comment, state, node, reason, _left, gres = (line.split("|") + [""] * 7)[:7]
        body = comment.split("_", 1)[1] if comment.startswith(("rule_", "group_")) else ""
        rule, _, wildcards = body.partition("_wildcards_")
        rows.append(JobRow(job_id=job, rule=rule or name, wildcards=wildcards, attempt=0,
                           state=state, exit_code="", elapsed_s=0, cpu_efficiency=None,
                           max_rss_mb=None, req_mem_mb=None,
                           reason=reason if state == "PENDING" else "", node=node,
                           gpus=_gpus(gres.replace("gpu:", "gres/gpu=")) if gres else None))
    return rows


def collect(workdir: str | Path = ".", run_id: str | None = None, tail_lines: int = 5,
            slurm_logdir: str = "results/logs/slurm"
            ) -> tuple[str | None, list[JobRow], str]:
    """(run id, rows, note) for one workflow run and its training job.

    Without accounting (slurmdbd down or overloaded), the note says so and the rows are
    what squeue still sees queued or running.
    """
    if not shutil.which("sacct"):
        raise MeldflowError("sacct is not available here: `meldflow status` reads SLURM "
                            "accounting, so run it on the cluster's login node (a local run "
                            "logs to results/logs/ instead)")
    workdir = Path(workdir)
    run_id = run_id or latest_run_id(workdir)
    labels, train_ids = {}, []
    # One submitit job per (experiment, seed) run: results/train/{experiment}/seed-{n}/.
    for job_file in sorted((workdir / "results" / "train").glob("*/seed-*/job.json")):
        job = json.loads(job_file.read_text())
        if job.get("executor") == "slurm" and job.get("job_id"):
            jid = str(job["job_id"]).split("_")[0]
            train_ids.append(jid)
            run = job_file.parent.relative_to(workdir / "results" / "train")
            labels[jid] = (f"train {run} (submitit)", "")
    try:
        records: list[dict] = []
        if run_id:
            records += sacct_records(name=run_id)
        if train_ids:
            records += sacct_records(job_ids=train_ids)
    except (MeldflowError, subprocess.TimeoutExpired) as exc:
        note = (f"SLURM accounting is unreachable ({str(exc).splitlines()[0][:200]}): "
                f"finished jobs cannot be shown until slurmdbd answers again; below is what "
                f"squeue sees still queued or running")
        try:
            rows = squeue_rows(run_id) if run_id else []
        except (MeldflowError, subprocess.TimeoutExpired) as exc2:
            note += f" (squeue failed too: {str(exc2)[:200]})"
            rows = []
        return run_id, rows, note
    reasons = squeue_reasons(run_id) if run_id else {}
    return run_id, job_rows(records, workdir / slurm_logdir, reasons, tail_lines, labels), ""


def _fmt_mem(row: JobRow) -> str:
    used = f"{row.max_rss_mb:.0f}" if row.max_rss_mb is not None else "-"
    req = f"{row.req_mem_mb:.0f}" if row.req_mem_mb is not None else "-"
    return f"{used}/{req}"


def format_table(run_id: str | None, rows: list[JobRow], note: str = "") -> str:
    """A fixed-width table, then each failed try explained, with its log tail."""
    if not rows and not note:
        return (f"no SLURM jobs found for run {run_id}" if run_id else
                "no SLURM run found: no .snakemake/log/ with a SLURM run ID here "
                "(run `snakemake --profile cluster/slurm` from this folder)")
    gpus = any(r.gpus for r in rows)
    head = ["rule", "wildcards", "try", "job", "node", "state", "exit", "elapsed", "cpu eff",
            "mem MB used/req"] + (["gpus"] if gpus else [])
    table = [head]
    for r in rows:
        state = r.state + (f" ({r.reason})" if r.reason else "")
        table.append([r.rule, r.wildcards or "-", str(r.attempt or "-"), r.job_id,
                      r.node or "-", state, r.exit_code or "-",
                      time.strftime("%H:%M:%S", time.gmtime(r.elapsed_s)),
                      f"{r.cpu_efficiency:.0%}" if r.cpu_efficiency is not None else "-",
                      _fmt_mem(r)] + ([str(r.gpus or "-")] if gpus else []))
    widths = [max(len(line[i]) for line in table) for i in range(len(head))]
    out = [f"SLURM run {run_id}" if run_id else "SLURM jobs"]
    if note:
        out.append(f"NOTE: {note}")
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
    return "\n".join(out)


def status(workdir: str | Path = ".", run_id: str | None = None, as_json: bool = False,
           watch: float = 0, tail_lines: int = 5) -> int:
    """Print the run's jobs (refreshing every ``watch`` s until all are done); exit code."""
    while True:
        rid, rows, note = collect(workdir, run_id, tail_lines)
        if as_json:
            print(json.dumps({"run_id": rid, "note": note, "jobs": [asdict(r) for r in rows]},
                             indent=1))
        else:
            if watch:
                print("\033[2J\033[H", end="")
            print(format_table(rid, rows, note))
        done = not note and all(r.state in TERMINAL for r in rows)
        if not watch or done:
            return 0
        time.sleep(watch)
