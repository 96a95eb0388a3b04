"""The end of a failed job's log where the user looks (meldflow.logs): the terminal after
a local run, and `meldflow status` after a SLURM run."""
from meldflow.logs import failed_log_tails, job_log_excerpt, rule_logs

SLURM_JOB_LOG = """
SNAKEMAKE
=========
  Date: 2026-12-06 21:04:56
  Snakemake version: 9.27.1

Building DAG of jobs...
Select jobs to execute...
Shell command: meldflow frames > results/logs/frames/train/shard-0000.log 2>&1
slurmstepd-n1: error: Detected 1 oom-kill event(s) in StepId=16.0.
srun: error: n1: task 0: Out Of Memory
[Sun Dec  6 21:05:01 2026]
Error in rule frames:
    message: None
    jobid: 0
    log: results/logs/frames/train/shard-0000.log (check log file(s) for error details)
Removing output files of failed job frames since they might be corrupted:
Shutting down, this might take some time.
Exiting because a job execution failed. Look above for error messages
WorkflowError:
At least one job did not complete successfully.
"""


def _job(tmp_path):
    slurm_log = tmp_path / "results" / "logs" / "slurm" / "rule_frames" / "train_0000" / "21.log"
    slurm_log.parent.mkdir(parents=True)
    slurm_log.write_text(SLURM_JOB_LOG)
    rule_log = tmp_path / "results" / "logs" / "frames" / "train" / "shard-0000.log"
    rule_log.parent.mkdir(parents=True)
    rule_log.write_text("INFO reading\nERROR meldflow: cannot write results/frames/x: the "
                        "disk is full\n")
    return slurm_log, rule_log


def test_a_failed_slurm_jobs_excerpt_is_its_own_error(tmp_path):
    """`meldflow status` showed the end of the SLURM log: Snakemake's "Shutting down" and
    "WorkflowError" lines, never the job's own error, which goes to the rule's log."""
    slurm_log, _ = _job(tmp_path)
    assert rule_logs(SLURM_JOB_LOG) == [("frames", "results/logs/frames/train/shard-0000.log")]
    assert job_log_excerpt(slurm_log, 3, tmp_path, rule_log_current=True) == [
        "slurmstepd-n1: error: Detected 1 oom-kill event(s) in StepId=16.0.",
        "srun: error: n1: task 0: Out Of Memory",
        "results/logs/frames/train/shard-0000.log:",
        "  INFO reading",
        "  ERROR meldflow: cannot write results/frames/x: the disk is full"]
    # a later try rewrote the rule's log: what SLURM said, and the SLURM log's own end
    earlier = job_log_excerpt(slurm_log, 3, tmp_path, rule_log_current=False)
    assert earlier[:2] == ["slurmstepd-n1: error: Detected 1 oom-kill event(s) in "
                           "StepId=16.0.", "srun: error: n1: task 0: Out Of Memory"]
    assert "disk is full" not in "\n".join(earlier)


def test_a_local_runs_failed_jobs_show_their_logs_end(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    slurm_log, _ = _job(tmp_path)
    text = failed_log_tails(slurm_log, lines=1)
    assert text.splitlines() == [
        "--- frames: last lines of results/logs/frames/train/shard-0000.log",
        "    ERROR meldflow: cannot write results/frames/x: the disk is full"]
