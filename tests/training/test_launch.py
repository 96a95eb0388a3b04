"""Launching training (meldflow.training.launch): a job's own error, and what to do
after a failure."""


def test_a_ranks_own_error_is_found_behind_torchs_rank_prefix():
    """torch writes "[rank0]: " before each line of a rank's traceback; the error a job died
    of (a Python exception or an OS error) was reported as a kill."""
    from meldflow.training.launch import task_error

    log = ("INFO loading\n[rank0]: Traceback (most recent call last):\n"
           '[rank0]:   File "loop.py", line 9, in train\n'
           "[rank0]: ValueError: Invalid learning rate: nan\nsrun: error: n1: task 0\n")
    assert task_error(log) == "ValueError: Invalid learning rate: nan"
    disk = log.replace("ValueError: Invalid learning rate: nan",
                       "OSError: [Errno 28] No space left on device")
    assert task_error(disk) == "OSError: [Errno 28] No space left on device"
    assert task_error("[rank1]: W1203 warning only\n") is None  # no error written: a kill


def test_a_job_that_died_of_a_full_disk_is_told_to_free_space(tmp_path):
    """A training job that died of a full disk was told "Run the same command again:
    training resumes", which failed the same way."""
    from types import SimpleNamespace

    from meldflow.training.launch import failure_message

    def job_dying_of(error: str):
        err = tmp_path / f"{len(error)}.err"
        err.write_text(f"[rank0]: Traceback (most recent call last):\n[rank0]: {error}\n")
        task = SimpleNamespace(task_id=0, paths=SimpleNamespace(stderr=err))
        return SimpleNamespace(job_id="7", state="FAILED", _sub_jobs=[task])

    for error in ("RuntimeError: [enforce fail at inline_container.cc:672] . unexpected "
                  "pos 704 vs 598",
                  "meldflow.MeldflowError: cannot write /r/state.pt: the disk is full; free "
                  "space there (df -h; du -sh) or write elsewhere, then run the same "
                  "command again (files written before are as they were)",
                  "OSError: [Errno 30] Read-only file system: '/r/metrics.json'"):
        message = failure_message(job_dying_of(error), "slurm")
        assert "free space" in message.splitlines()[-1], message
    crash = failure_message(job_dying_of("ValueError: Invalid learning rate: nan"), "slurm")
    assert crash.splitlines()[-1].startswith("Run the same command again: training resumes")
