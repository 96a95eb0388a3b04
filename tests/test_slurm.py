"""The workflow on a real one-node SLURM cluster with accounting (cluster/local-slurm/up.sh)."""

import json
import os
import shutil
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest
from conftest import BIN, IN_CI, REPO, env_with_venv, make_workdir

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def slurm_cluster():
    """Brings the local cluster up (as root); fails in CI, skips elsewhere, if it cannot."""
    import os

    if os.geteuid() == 0:
        proc = subprocess.run(["bash", str(REPO / "cluster" / "local-slurm" / "up.sh")],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.fail(f"local SLURM did not start:\n{proc.stdout}{proc.stderr}")
    ok = shutil.which("sacct") and subprocess.run(
        ["sinfo", "-h", "-o", "%T"], capture_output=True, text=True).stdout.strip() in (
        "idle", "mixed", "allocated")
    if not ok:
        msg = "no SLURM cluster: run cluster/local-slurm/up.sh as root"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)


def sacct(*args):
    out = subprocess.run(["sacct", "-X", "-P", "-n", *args], capture_output=True, text=True,
                         check=True).stdout
    return [line.split("|") for line in out.splitlines() if line]


def slurm_workdir(root, hf_home, **overrides):
    """A working folder for `--profile cluster/slurm` (its configfiles resolve from here)."""
    work = make_workdir(root, hf_home, **overrides)
    (work / "cluster" / "slurm").mkdir(parents=True)
    shutil.copy(REPO / "cluster" / "slurm" / "workflow-overrides.yaml",
                work / "cluster" / "slurm")
    return work


def start_snakemake(work, log_path, *args, env=None):
    """Snakemake with the SLURM profile in the background, its output in ``log_path``."""
    with open(log_path, "w") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [str(BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "-d", str(work), "--cores",
             "2", "--profile", str(REPO / "cluster" / "slurm"), *args],
            cwd=work, env=env or env_with_venv(), stdout=log, stderr=subprocess.STDOUT)


def _signal_training_once(work, proc, timeout=900):
    """Once training has checkpointed, send its job the signal SLURM sends on preemption
    or near the time limit (USR2 to every task); returns the job id."""
    job_file = work / "results" / "train" / "job.json"
    ckpt = work / "results" / "train" / "checkpoint" / "state.pt"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if job_file.is_file() and ckpt.is_file():
            job_id = json.loads(job_file.read_text())["job_id"]
            subprocess.run(["scancel", "--signal=USR2", job_id], check=True)
            return job_id
        time.sleep(0.5)
    return None


def test_whole_workflow_on_slurm_matches_local_run(slurm_cluster, trained, hf_home, tmp_path):
    """Shard jobs and a 2-task submitit training job on SLURM; training is signalled mid-run,
    requeued and resumed, and everything still equals the local run."""
    preprocessed, _ = trained  # the local run of the same configuration
    work = slurm_workdir(tmp_path / "slurm", hf_home)
    start = time.strftime("%Y-%m-%dT%H:%M:%S")
    proc = start_snakemake(work, tmp_path / "snakemake.log")
    try:
        signalled = _signal_training_once(work, proc)
        rc = proc.wait(timeout=1200)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = (tmp_path / "snakemake.log").read_text()
    assert rc == 0, text[-4000:]
    assert signalled, "training was never seen with a checkpoint"
    assert "Florence-2 results" in text
    jobs = sacct("-S", start, "-o", "JobID,JobName%60,State,NTasks,AllocCPUS")
    names = {j[1] for j in jobs}
    workflow_jobs = [j for j in jobs if j[1] != "submitit"]
    assert len(workflow_jobs) >= 15 and all(j[2] == "COMPLETED" for j in jobs), jobs
    assert len({j[1] for j in workflow_jobs}) == 1  # one run, one UUID as the job name
    assert "submitit" in names
    train_job = json.loads((work / "results" / "train" / "job.json").read_text())
    assert train_job["executor"] == "slurm" and train_job["job_id"] == signalled
    assert any(j[0] == train_job["job_id"] and j[2] == "COMPLETED" for j in jobs)
    # The same job ran twice: the first run was requeued, the second resumed.
    history = [line[1] for line in sacct("-D", "-j", signalled, "-o", "JobID,State")]
    assert history[0] == "REQUEUED" and history[-1] == "COMPLETED", history
    logs = "".join(p.read_text() for p in (work / "results" / "train" / "submitit")
                   .glob("*_0_log.*"))
    assert "preempted" in logs and "resumed from" in logs
    # Same shards and the same metrics as the local run of the same configuration.
    for split in ("train", "dev", "test"):
        for local in sorted((preprocessed / "results" / "aligned" / split).glob("*.parquet")):
            remote = work / "results" / "aligned" / split / local.name
            assert pq.read_table(remote).equals(pq.read_table(local)), remote
    assert (work / "results" / "evaluate" / "metrics.tsv").read_text() == \
        (preprocessed / "results" / "evaluate" / "metrics.tsv").read_text()


# The first ffmpeg call in a run outlives its job's 1-minute limit; later calls are the
# real ffmpeg. (mkdir is atomic: exactly one job gets the slow call.)
SLOW_FIRST_FFMPEG = """#!/bin/sh
if mkdir "{marker}" 2>/dev/null; then sleep 150; fi
exec {ffmpeg} "$@"
"""


def _squeue_running(prefix):
    out = subprocess.run(["squeue", "-h", "-o", "%i|%T|%k"], capture_output=True,
                         text=True).stdout
    return [line.split("|")[0] for line in out.splitlines()
            if line.split("|")[1] == "RUNNING" and line.split("|")[2].startswith(prefix)]


def test_cancelled_and_timed_out_shard_jobs_are_resubmitted(slurm_cluster, preprocessed,
                                                            hf_home, tmp_path):
    work = slurm_workdir(tmp_path / "resubmit", hf_home, splits=["train"])
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "ffmpeg").write_text(SLOW_FIRST_FFMPEG.format(marker=tmp_path / "slow-once",
                                                          ffmpeg=shutil.which("ffmpeg")))
    (fake / "ffmpeg").chmod(0o755)
    env = env_with_venv()
    env["PATH"] = f"{fake}{os.pathsep}{env['PATH']}"
    start = time.strftime("%Y-%m-%dT%H:%M:%S")
    proc = start_snakemake(work, tmp_path / "snakemake.log", "--set-resources",
                           "frames:runtime=1", "--", "preprocess", env=env)
    try:
        cancelled = None
        deadline = time.monotonic() + 300
        while cancelled is None and time.monotonic() < deadline and proc.poll() is None:
            running = _squeue_running("rule_transcribe")
            if running:
                cancelled = running[0]
                subprocess.run(["scancel", cancelled], check=True)
            time.sleep(0.3)
        assert cancelled, "no transcribe job was seen running"
        rc = proc.wait(timeout=900)
    except subprocess.TimeoutExpired:
        pytest.fail("the workflow hung after a job was cancelled:\n"
                    + (tmp_path / "snakemake.log").read_text()[-3000:])
    finally:
        if proc.poll() is None:
            proc.kill()
    text = (tmp_path / "snakemake.log").read_text()
    assert rc == 0, text[-4000:]
    assert (tmp_path / "slow-once").is_dir()  # the slow call happened
    assert list((work / "results" / "logs" / "slurm").glob("efficiency_report_*.csv"))
    attempts = {}
    for job_id, comment, state in sacct("-S", start, "-o", "JobIDRaw,Comment%200,State%40"):
        if comment.startswith("rule_"):
            attempts.setdefault(comment, []).append((int(job_id), state))
    states = {c: [s for _, s in sorted(v)] for c, v in attempts.items()}
    cancelled_comment = next(c for c, v in attempts.items()
                             if any(str(j) == cancelled for j, _ in v))
    assert states[cancelled_comment][0].startswith("CANCELLED by")
    assert states[cancelled_comment][-1] == "COMPLETED"
    timed_out = [c for c, v in states.items() if v[0] == "TIMEOUT"]
    assert len(timed_out) == 1 and timed_out[0].startswith("rule_frames")
    assert states[timed_out[0]][-1] == "COMPLETED"
    others = [v for c, v in states.items() if c not in (cancelled_comment, timed_out[0])]
    assert others and all(v == ["COMPLETED"] for v in others)
    # Complete, valid outputs, equal to the local run's: no partial file was kept.
    for local in sorted((preprocessed / "results" / "aligned" / "train").glob("*.parquet")):
        remote = work / "results" / "aligned" / "train" / local.name
        assert pq.read_table(remote).equals(pq.read_table(local)), remote
    assert pq.read_table(work / "results" / "manifest" / "train.parquet").equals(
        pq.read_table(preprocessed / "results" / "manifest" / "train.parquet"))
    # `meldflow status` tells the same story from sacct.
    out = subprocess.run([sys.executable, "-m", "meldflow.cli", "status", "--dir", str(work),
                          "--json"], capture_output=True, text=True, check=True).stdout
    jobs = json.loads(out)["jobs"]
    tries = {}
    for j in jobs:
        tries.setdefault((j["rule"], j["wildcards"]), []).append(j)
    rule_c, wc_c = cancelled_comment[5:].split("_wildcards_")
    rule_t, wc_t = timed_out[0][5:].split("_wildcards_")
    for rule, wc, first in ((rule_c, wc_c, "CANCELLED"), (rule_t, wc_t, "TIMEOUT")):
        seq = tries[(rule, wc)]
        assert [(j["attempt"], j["state"]) for j in seq] == [(1, first), (2, "COMPLETED")]
        assert seq[0]["log"].endswith(f"{seq[0]['job_id']}.log") and seq[0]["log_tail"]
    assert all(j["req_mem_mb"] and j["elapsed_s"] >= 0 for j in jobs)
    done = [j for j in jobs if j["state"] == "COMPLETED" and j["rule"] in ("frames", "align")]
    assert done and all(j["max_rss_mb"] and 0 < j["cpu_efficiency"] <= 1.5 for j in done)
    table = subprocess.run([sys.executable, "-m", "meldflow.cli", "status", "--dir",
                            str(work)], capture_output=True, text=True, check=True).stdout
    assert "TIMEOUT" in table and "CANCELLED" in table and "cpu eff" in table
