"""The end of a failed job's log, printed where the user looks: the terminal."""

from __future__ import annotations

import re
from pathlib import Path


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
    for rule, path in rule_logs(text):
        if path in seen or not Path(path).is_file():
            continue
        seen.add(path)
        out.append(f"--- {rule}: last lines of {path}")
        out += [f"    {line}" for line in tail(Path(path), lines)]
    return "\n".join(out)


def rule_logs(text: str) -> list[tuple[str, str]]:
    """(rule, log path) of each ``Error in rule`` block in Snakemake's output."""
    found = []
    for block in text.split("Error in rule ")[1:]:
        rule = block.split(":", 1)[0]
        m = re.search(r"^\s+log: (.+?)(?: \(check log file\(s\) for error details\))?$",
                      block, re.M)
        found += [(rule, path.strip()) for path in (m.group(1).split(", ") if m else [])]
    return found


# What SLURM itself says in a job's log (a kill, a limit), among Snakemake's own lines.
_SLURM_SAYS = re.compile(r"^(slurmstepd|srun)[^:]*: (error|\*\*\*)|DUE TO|CANCELLED AT")


def job_log_excerpt(slurm_log: Path, lines: int, workdir: Path, rule_log_current: bool
                    ) -> list[str]:
    """What a failed SLURM job of a rule says: what SLURM wrote (a kill, a limit), then the
    end of the rule's own log, which the job's Snakemake names (its shell output goes
    there, not to the SLURM log, whose end is Snakemake's "Shutting down"). A rule's log
    is rewritten by each try: with ``rule_log_current`` False (a later try ran) it is not
    shown, and the SLURM log's own end is."""
    try:
        text = slurm_log.read_text(errors="replace")
    except OSError:
        return []
    says = [ln for ln in text.splitlines() if _SLURM_SAYS.search(ln)][-3:]
    logs = [path for _, path in rule_logs(text) if (workdir / path).is_file()]
    if rule_log_current and logs:
        return says + [f"{logs[0]}:"] + [f"  {ln}" for ln in tail(workdir / logs[0], lines)]
    return says + [ln for ln in text.splitlines()[-lines:] if ln not in says]


def tail(path: Path, lines: int) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return []
