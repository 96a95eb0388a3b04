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


def tail(path: Path, lines: int) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return []
