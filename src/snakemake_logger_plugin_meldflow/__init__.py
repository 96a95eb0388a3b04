"""Snakemake logger plugin ``meldflow`` (``--logger meldflow``; the SLURM profile turns it
on): keeps ``.snakemake/meldflow/runs/``, one record per run of what it submitted and how
each job ended, with a heartbeat (meldflow.slurm.run_record), for ``meldflow status``.

It writes nothing to the terminal, and nothing for a dry run or for the Snakemake that
runs one job inside a cluster job (``--mode remote``/``subprocess``).
"""

from __future__ import annotations

import logging
import sys
import threading
from pathlib import Path

from snakemake_interface_logger_plugins.base import LogHandlerBase
from snakemake_interface_logger_plugins.common import LogEvent

from meldflow.slurm.run_record import HEARTBEAT_S, RUNS_DIR, SLURM_RUN_ID, RunRecord


class LogHandler(LogHandlerBase):
    """Builds the run's record from Snakemake's events; a thread refreshes its heartbeat."""

    def __post_init__(self) -> None:
        self.record: RunRecord | None = None
        self.guard = threading.Lock()  # not Handler.lock: handle() holds that around emit()
        self.stop = threading.Event()
        self.off = bool(getattr(self.common_settings, "dryrun", False)) or "--mode" in sys.argv

    @property
    def writes_to_stream(self) -> bool:
        return False

    @property
    def writes_to_file(self) -> bool:
        return False

    @property
    def has_filter(self) -> bool:
        return True  # every record is read here: the default filter would drop some

    @property
    def has_formatter(self) -> bool:
        return True

    @property
    def needs_rulegraph(self) -> bool:
        return False

    def emit(self, record: logging.LogRecord) -> None:
        if self.off:
            return
        try:
            with self.guard:
                if self._take(record) and self.record is not None:
                    self.record.write()
        except Exception:  # a monitor must never stop the workflow
            self.handleError(record)

    def _take(self, record: logging.LogRecord) -> bool:
        """Update the record from one log record; whether it changed."""
        event = getattr(record, "event", None)
        if event == LogEvent.WORKFLOW_STARTED:
            self.record = RunRecord(Path.cwd() / RUNS_DIR, str(record.workflow_id))
            threading.Thread(target=self._heartbeat, daemon=True).start()
            return True
        if self.record is None:
            return False
        if event == LogEvent.JOB_INFO:
            self.record.job_info(record.jobid, record.rule_name, record.wildcards,
                                 record.local)
        elif event == LogEvent.JOB_FINISHED:
            self.record.job_ended(record.job_id, ok=True)
        elif event == LogEvent.JOB_ERROR:
            self.record.job_ended(record.jobid, ok=False)
        elif event == LogEvent.PROGRESS:
            self.record.progress(record.done, record.total)
        elif isinstance(record.msg, str) and record.msg.startswith(SLURM_RUN_ID):
            self.record.data["slurm_run_id"] = record.msg[len(SLURM_RUN_ID):].strip()
        else:
            return False
        return True

    def _heartbeat(self) -> None:
        while not self.stop.wait(HEARTBEAT_S):
            with self.guard:
                self.record.beat()
                self.record.write()

    def close(self) -> None:
        self.stop.set()
        with self.guard:
            if self.record is not None and not self.off:
                self.record.end()
                self.record.write()
        super().close()
