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
                "ElapsedRaw", "TotalCPU", "AllocCPUS", "ReqMem", "MaxRSS", "Submit"]
RUN_ID = re.compile(r"SLURM run ID: (\S+)")


def slurm_state(raw: str) -> str:
    """The bare state word: sacct writes a cancelled job as ``CANCELLED by <uid>``."""
    words = (raw or "").split()
    return words[0].rstrip("+") if words else "UNKNOWN"


def patch_slurm_plugin() -> bool:
    """Make snakemake-executor-plugin-slurm compare bare state words.

    Its ``check_active_jobs`` (2.8.0) tests ``status in fail_stati`` on sacct's raw state,
    so ``CANCELLED by 0`` (a job scancel'ed from outside) counts as still running and the
    workflow waits forever. The plugin looks ``query_job_status`` up in its module at each
    poll, so wrapping that one function fixes every state at its source. Idempotent;
    returns False where the plugin is not installed.
    """
    try:
        import snakemake_executor_plugin_slurm as plugin
    except ImportError:
        return False
    original = plugin.query_job_status
    if getattr(original, "meldflow_normalised", False):
        return True

    async def query_job_status(command, logger):
        states, duration = await original(command, logger)
        if states is not None:
            states = {job: slurm_state(state) for job, state in states.items()}
        return states, duration

    query_job_status.meldflow_normalised = True
    plugin.query_job_status = query_job_status
    return True


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
    for rec in records:
        raw = rec["JobIDRaw"]
        if "." in raw:  # a step: its peak memory counts for the job
            job = raw.split(".", 1)[0]
            mb = _mb(rec.get("MaxRSS", ""))
            if mb is not None:
                rss[job] = max(rss.get(job, 0.0), mb)
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
            if log and state not in ("COMPLETED", "RUNNING", "PENDING") else []))
    seen: dict[tuple[str, str], int] = {}
    for row in rows:  # in submission order
        key = (row.rule, row.wildcards)
        seen[key] = seen.get(key, 0) + 1
        row.attempt = seen[key]
    return rows


def collect(workdir: str | Path = ".", run_id: str | None = None, tail_lines: int = 5,
            slurm_logdir: str = "results/logs/slurm") -> tuple[str | None, list[JobRow]]:
    """(run id, rows) for one workflow run and its training job."""
    if not shutil.which("sacct"):
        raise MeldflowError("sacct is not available here: `meldflow status` reads SLURM "
                            "accounting, so run it on the cluster's login node (a local run "
                            "logs to results/logs/ instead)")
    workdir = Path(workdir)
    run_id = run_id or latest_run_id(workdir)
    records: list[dict] = []
    reasons: dict[str, str] = {}
    if run_id:
        records += sacct_records(name=run_id)
        reasons |= squeue_reasons(run_id)
    labels = {}
    job_file = workdir / "results" / "train" / "job.json"
    if job_file.is_file():
        job = json.loads(job_file.read_text())
        if job.get("executor") == "slurm" and job.get("job_id"):
            jid = str(job["job_id"]).split("_")[0]
            records += sacct_records(job_ids=[jid])
            labels[jid] = ("train (submitit)", "")
    return run_id, job_rows(records, workdir / slurm_logdir, reasons, tail_lines, labels)


def _fmt_mem(row: JobRow) -> str:
    used = f"{row.max_rss_mb:.0f}" if row.max_rss_mb is not None else "-"
    req = f"{row.req_mem_mb:.0f}" if row.req_mem_mb is not None else "-"
    return f"{used}/{req}"


def format_table(run_id: str | None, rows: list[JobRow]) -> str:
    """A fixed-width table, then the failures with their log tails."""
    if not rows:
        return (f"no SLURM jobs found for run {run_id}" if run_id else
                "no SLURM run found: no .snakemake/log/ with a SLURM run ID here "
                "(run `snakemake --profile cluster/slurm` from this folder)")
    head = ["rule", "wildcards", "try", "job", "state", "exit", "elapsed", "cpu eff",
            "mem MB used/req"]
    table = [head]
    for r in rows:
        state = r.state + (f" ({r.reason})" if r.reason else "")
        table.append([r.rule, r.wildcards or "-", str(r.attempt), r.job_id, state,
                      r.exit_code, time.strftime("%H:%M:%S", time.gmtime(r.elapsed_s)),
                      f"{r.cpu_efficiency:.0%}" if r.cpu_efficiency is not None else "-",
                      _fmt_mem(r)])
    widths = [max(len(line[i]) for line in table) for i in range(len(head))]
    out = [f"SLURM run {run_id}" if run_id else "SLURM jobs"]
    out += ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
            for line in table]
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.state] = counts.get(r.state, 0) + 1
    out.append("jobs: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    for r in rows:
        if r.state not in ("COMPLETED", "RUNNING", "PENDING"):
            out.append(f"\n{r.rule} {r.wildcards} try {r.attempt} (job {r.job_id}): {r.state}"
                       f", exit {r.exit_code}; log {r.log or 'not found'}")
            out += [f"    {line}" for line in r.log_tail]
    return "\n".join(out)


def status(workdir: str | Path = ".", run_id: str | None = None, as_json: bool = False,
           watch: float = 0, tail_lines: int = 5) -> int:
    """Print the run's jobs (refreshing every ``watch`` s until all are done); exit code."""
    while True:
        rid, rows = collect(workdir, run_id, tail_lines)
        if as_json:
            print(json.dumps({"run_id": rid, "jobs": [asdict(r) for r in rows]}, indent=1))
        else:
            if watch:
                print("\033[2J\033[H", end="")
            print(format_table(rid, rows))
        done = all(r.state in TERMINAL for r in rows)
        if not watch or done:
            return 0
        time.sleep(watch)
