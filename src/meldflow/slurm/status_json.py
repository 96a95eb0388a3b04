"""`meldflow status --json`: the run's state in numbers, under a documented schema
(``STATUS_SCHEMA``; docs/cluster.md shows an example), never pre-formatted text."""

from __future__ import annotations

import time
from dataclasses import asdict

from meldflow.slurm.run_record import alive, submitted

# What `meldflow status --json` prints (a JSON Schema; docs/cluster.md shows an example).
STATUS_SCHEMA = {
    "type": "object",
    "required": ["schema", "run_id", "run", "note", "progress", "jobs",
                 "off_cluster_trainings"],
    "properties": {
        "schema": {"const": "meldflow-status/1"},
        "run_id": {"type": ["string", "null"]},
        "run": {"type": ["object", "null"], "required": [
            "started", "ended", "heartbeat_age_s", "alive", "submitted_jobs"]},
        "note": {"type": "string"},
        "progress": {"type": "object", "required": ["rules", "fraction_done", "eta_s",
                                                     "training"], "properties": {
            "rules": {"type": "object", "additionalProperties": {
                "type": "object", "required": ["done", "running", "pending", "failed",
                                               "total", "fraction_done", "eta_s"],
                "properties": {k: {"type": "integer", "minimum": 0} for k in (
                    "done", "running", "pending", "failed", "total")} | {
                    "fraction_done": {"type": "number", "minimum": 0, "maximum": 1},
                    "eta_s": {"type": ["integer", "null"], "minimum": 0}}}},
            "fraction_done": {"type": "number", "minimum": 0, "maximum": 1},
            "eta_s": {"type": ["integer", "null"], "minimum": 0},
            "training": {"type": "array", "items": {"type": "object", "required": [
                "run", "job_id", "finished", "step", "steps", "left_s"]}}}},
        "jobs": {"type": "array", "items": {"type": "object", "required": [
            "job_id", "rule", "wildcards", "attempt", "state", "watched", "explanation"]}},
        "off_cluster_trainings": {"type": "array", "items": {"type": "string"}},
    },
}


def status_json(run_id: str | None, run: dict | None, rows: list, note: str,
                numbers: dict, local: list[str]) -> dict:
    """The --json document (STATUS_SCHEMA): numbers, never pre-formatted text."""
    now = time.time()
    return {"schema": "meldflow-status/1", "run_id": run_id,
            "run": None if run is None else {
                "started": run["started"], "ended": run["ended"],
                "heartbeat_age_s": round(now - run["heartbeat"], 1), "alive": alive(run, now),
                "submitted_jobs": submitted(run)},
            "note": note, "progress": numbers, "jobs": [asdict(r) for r in rows],
            "off_cluster_trainings": local}
