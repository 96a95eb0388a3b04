"""SLURM job states as sacct writes them, and which of them mean a job has ended."""

from __future__ import annotations

import re

TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL",
            "BOOT_FAIL", "DEADLINE", "PREEMPTED"}


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
