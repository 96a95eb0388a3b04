"""The SLURM profile through the faults a real cluster has: cancelled and timed-out jobs,
OOM and node failure, an accounting outage, a killed Snakemake."""
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from helpers import (
    env_with_venv,
)
from slurm_helpers import (
    SLOW_FIRST_FFMPEG,
    assert_same_shards,
    daemon_up,
    daemons,
    fail_node,
    faulty_ffmpeg,
    monitor_mb,
    sacct,
    slurm_workdir,
    squeue_ids,
    squeue_running,
    start_snakemake,
    status_once_resubmitted,
    tries_of,
    wait_node_up,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.slurm]


def assert_status_shows_the_tries(work, cancelled: str, cancelled_comment: str,
                                  timed_out: str, live: dict) -> None:
    """`meldflow status` tells the story sacct tells, after the run and while it ran
    (``live``): each try of the cancelled and the timed-out job, with its log."""
    out = subprocess.run([sys.executable, "-m", "meldflow.cli", "status", "--dir", str(work),
                          "--json"], capture_output=True, text=True, check=True).stdout
    jobs = json.loads(out)["jobs"]
    tries = {}
    for j in jobs:
        tries.setdefault((j["rule"], j["wildcards"]), []).append(j)
    rule_c, wc_c = cancelled_comment[5:].split("_wildcards_")
    rule_t, wc_t = timed_out[5:].split("_wildcards_")
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
    # While the jobs ran, status was already right (seen before the run ended): every
    # running and pending job had its rule and wildcards, each job its own tries, and the
    # cancelled try named its queued resubmission.
    rules = {"ingest", "transcribe", "frames", "align", "manifest", "summary"}
    assert all(j["rule"] in rules and j["wildcards"] for j in live["jobs"]
               if j["rule"] != "summary"), live["jobs"]
    first = next(j for j in live["jobs"] if j["job_id"] == cancelled)
    assert first["attempt"] == 1 and first["rule"] == "transcribe"
    assert " → job " in first["explanation"], first
    assert sum(j["attempt"] > 1 for j in live["jobs"]) <= 2  # the resubmission (+ a timeout)
    assert live["progress"]["rules"]["transcribe"]["total"] >= 1  # numbers, not text


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
            running = squeue_running("rule_transcribe")
            if running:
                cancelled = running[0]
                subprocess.run(["scancel", cancelled], check=True)
            time.sleep(0.3)
        assert cancelled, "no transcribe job was seen running"
        live = status_once_resubmitted(work, cancelled, proc)
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
    for job_id, comment, state, folder in sacct("-S", start, "-o",
                                                "JobIDRaw,Comment%200,State%40,WorkDir%400"):
        if comment.startswith("rule_") and Path(folder) == work:
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
    assert_status_shows_the_tries(work, cancelled, cancelled_comment, timed_out[0], live)


def test_out_of_memory_and_node_failure_are_redone(slurm_cluster, preprocessed, hf_home,
                                                   tmp_path):
    """A frames job over its memory ends OUT_OF_MEMORY and is resubmitted with more; a node
    that goes down under a running job: the job is redone on the other node."""
    work = slurm_workdir(tmp_path / "faults", hf_home, splits=["train"])
    env = faulty_ffmpeg(tmp_path)
    start = time.strftime("%Y-%m-%dT%H:%M:%S")
    proc = start_snakemake(work, tmp_path / "snakemake.log", "--", "preprocess", env=env)
    downed = None
    try:
        deadline = time.monotonic() + 400
        while downed is None and time.monotonic() < deadline and proc.poll() is None:
            marker = tmp_path / "fault-slow" / "job"
            if marker.is_file() and marker.read_text().strip():
                job = marker.read_text().strip()
                node = subprocess.run(["squeue", "-h", "-j", job, "-o", "%N"],
                                      capture_output=True, text=True).stdout.strip()
                if node:
                    downed = node
                    fail_node(downed, job)
            time.sleep(0.5)
        assert downed, "the slow frames job was never seen running"
        rc = proc.wait(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
        if downed:  # repaired: ReturnToService=2 takes it back once slurmd registers
            daemons("start", f"slurmd-{downed}")
            wait_node_up(downed)
    text = (tmp_path / "snakemake.log").read_text()
    assert rc == 0, text[-4000:]
    tries = tries_of(start, work)
    oom = [v for v in tries.values() if v[0][1] == "OUT_OF_MEMORY"]
    assert len(oom) == 1, tries
    assert [t[1] for t in oom[0]] == ["OUT_OF_MEMORY", "COMPLETED"]
    assert monitor_mb(oom[0][1][2]) == 2 * monitor_mb(oom[0][0][2])  # 2 GB, then 4 GB
    failed = [v for v in tries.values() if v[0][1] == "NODE_FAIL"]
    assert len(failed) == 1, tries
    assert failed[0][0][3] == downed and failed[0][-1][1] == "COMPLETED", (downed, tries)
    assert failed[0][-1][3] != downed  # redone on the other node
    later = [t for v in tries.values() for t in v if t[0] > failed[0][0][0]]
    assert later and all(t[3] != downed for t in later)  # the dead node was not chosen again
    assert_same_shards(work, preprocessed)
    # meldflow status explains what happened and what was done about it
    table = subprocess.run([sys.executable, "-m", "meldflow.cli", "status", "--dir",
                            str(work)], capture_output=True, text=True, check=True).stdout
    assert "ran out of memory at 2000 MB" in table and "try 2 asked for 4000 MB" in table
    assert f"node {downed} failed" in table and "redone on" in table


def test_accounting_outage_and_controller_restart_are_survived(slurm_cluster, preprocessed,
                                                               hf_home, tmp_path):
    """slurmdbd stopped for longer than several status checks, then slurmctld restarted,
    mid-run: no job is taken for failed or redone, and the run finishes."""
    work = slurm_workdir(tmp_path / "outage", hf_home, splits=["train"])
    env = faulty_ffmpeg(tmp_path, oom=False, sleep=45)  # one frames job runs 45 s longer
    start = time.strftime("%Y-%m-%dT%H:%M:%S")
    proc = start_snakemake(work, tmp_path / "snakemake.log", "--", "preprocess", env=env)
    dbd_check, ctld_check = ["sacctmgr", "-n", "list", "cluster"], ["squeue", "-h"]
    try:
        marker = tmp_path / "fault-slow" / "job"
        deadline = time.monotonic() + 300
        while not (marker.is_file() and marker.read_text().strip()) \
                and time.monotonic() < deadline:
            time.sleep(0.2)
        daemons("stop", "slurmdbd")  # accounting goes away
        log = tmp_path / "snakemake.log"
        # Snakemake's status check fails during the outage...
        wait_until(lambda: "the job status query failed" in log.read_text(), 300,
               "a status check during the outage")
        status = subprocess.run([sys.executable, "-m", "meldflow.cli", "status", "--dir",
                                 str(work)], capture_output=True, text=True, timeout=120)
        # ... and the slow job finishes while accounting is still down: what used to leave
        # the run waiting forever (the plugin forgot its jobs when sacct failed).
        slow = marker.read_text().strip()
        wait_until(lambda: slow not in squeue_ids(), 300, f"job {slow} to finish")
        assert proc.poll() is None, "the run ended while accounting was down"
        daemon_up("slurmdbd", dbd_check)
        deadline = time.monotonic() + 300
        while not squeue_running("rule_") and time.monotonic() < deadline:
            time.sleep(0.2)
        # the controller restarts; it saves its state first (a minute, at times)
        daemons("stop", "slurmctld")
        daemon_up("slurmctld", ctld_check)
        rc = proc.wait(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
        daemon_up("slurmdbd", dbd_check)
        daemon_up("slurmctld", ctld_check)
    text = (tmp_path / "snakemake.log").read_text()
    assert rc == 0, text[-4000:]
    assert "the job status query failed" in text and "answers again after" in text
    # during the outage, meldflow status said so and showed what squeue saw
    assert status.returncode == 0, status.stderr
    assert "accounting (sacct) is unreachable" in status.stdout

    assert re.search(rf"\b{marker.read_text().strip()}\s+n\d\s+RUNNING\b", status.stdout), \
        status.stdout
    tries = tries_of(start, work)
    assert len(tries) >= 7 and all([t[1] for t in v] == ["COMPLETED"] for v in tries.values()), \
        tries
    assert_same_shards(work, preprocessed)


def test_killed_snakemake_rerun_never_runs_a_job_twice(slurm_cluster, preprocessed, hf_home,
                                                       tmp_path):
    """Snakemake killed (-9) while shard jobs run, then the same command again: the new run
    cancels the old run's jobs before it submits, so no output has two writers."""
    import signal

    work = slurm_workdir(tmp_path / "killed", hf_home, splits=["train"])
    env = faulty_ffmpeg(tmp_path, oom=False)  # only the slow call
    start = time.strftime("%Y-%m-%dT%H:%M:%S")
    proc = start_snakemake(work, tmp_path / "first.log", "--", "preprocess",
                           env=env | {"MELDFLOW_HEARTBEAT_S": "1"})
    marker = tmp_path / "fault-slow" / "job"
    deadline = time.monotonic() + 300
    while not (marker.is_file() and marker.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.3)
    assert marker.is_file(), (tmp_path / "first.log").read_text()[-3000:]
    slow_job = marker.read_text().strip()
    os.kill(proc.pid, signal.SIGKILL)  # the login session drops
    proc.wait()
    assert slow_job in squeue_running("rule_frames")  # its job runs on
    # Issue 34: status showed such jobs as ordinary RUNNING, with no hint that nothing
    # watches them; three heartbeats (1 s here) missed, they are marked
    time.sleep(4)
    live = json.loads(subprocess.run(
        [sys.executable, "-m", "meldflow.cli", "status", "--dir", str(work), "--json"],
        capture_output=True, text=True, check=True).stdout)
    slow = next(j for j in live["jobs"] if j["job_id"] == slow_job)
    assert slow["state"] == "RUNNING" and slow["watched"] is False, slow
    assert "watched by no Snakemake" in live["note"] and live["run"]["alive"] is False
    # the same command again, as the README says: the dead run's lock is removed (it
    # stopped at Snakemake's lock)
    again = start_snakemake(work, tmp_path / "second.log", "--", "preprocess", env=env)
    try:
        rc = again.wait(timeout=900)
    finally:
        if again.poll() is None:
            again.kill()
    text = (tmp_path / "second.log").read_text()
    assert rc == 0, text[-4000:]
    assert "of an earlier run of this workflow are still running" in text and slow_job in text
    assert "meldflow: removed the lock of an earlier Snakemake in this folder" in text
    tries = tries_of(start, work)
    for comment, seq in tries.items():  # no two tries of one output overlap in time
        for a, b in zip(seq, seq[1:], strict=False):
            assert a[5] <= b[4], (comment, seq)
    cancelled = [t for v in tries.values() for t in v if t[0] == int(slow_job)]
    assert cancelled and cancelled[0][1].startswith("CANCELLED")
    assert_same_shards(work, preprocessed)
