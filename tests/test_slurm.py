"""The workflow on a real one-node SLURM cluster with accounting (cluster/local-slurm/up.sh)."""
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
from conftest import (
    BIN,
    REPO,
    copy_preprocessed,
    env_with_venv,
    make_workdir,
    max_diff,
    run_snakemake,
    train_config,
    weights,
    without_key_biases,
)

from meldflow.training.options import LaunchConfig

pytestmark = [pytest.mark.integration, pytest.mark.slurm]

RUN = Path("results/train/default/seed-0")  # the default config's one training run


def daemons(action: str, daemon: str) -> None:
    """Stop, kill or start one daemon of the local cluster, known by the pid file up.sh's
    daemons write: never a daemon of a SLURM that up.sh did not start."""
    subprocess.run(["bash", str(REPO / "cluster" / "local-slurm" / "daemons.sh"), action,
                    daemon], check=True)


def test_up_sh_refuses_a_slurm_it_did_not_start(slurm_cluster, tmp_path):
    """Seen from another state folder, the running cluster is a SLURM up.sh did not start:
    it refuses before it installs, configures or restarts anything."""
    env = dict(os.environ, MELDFLOW_SLURM_STATE=str(tmp_path / "state"))
    proc = subprocess.run(["bash", str(REPO / "cluster" / "local-slurm" / "up.sh")],
                          capture_output=True, text=True, env=env)
    assert proc.returncode != 0
    assert "SLURM daemons that this script did not start are running:" in proc.stderr
    assert "slurmctld (pid" in proc.stderr
    assert not (tmp_path / "state").exists()
    proc = subprocess.run(["bash", str(REPO / "cluster" / "local-slurm" / "down.sh")],
                          capture_output=True, text=True, env=env)
    assert proc.returncode != 0 and "left alone" in proc.stderr
    states = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True,
                            text=True).stdout.split()
    assert states and all(s in ("idle", "mixed", "allocated") for s in states)


def sacct(*args):
    out = subprocess.run(["sacct", "-X", "-P", "-n", *args], capture_output=True, text=True,
                         check=True).stdout
    return [line.split("|") for line in out.splitlines() if line]


def slurm_workdir(root, hf_home, **overrides):
    """A working folder for `--profile cluster/slurm` (the profile names no config file:
    the workflow's own config/config.yaml is read, as in the project folder)."""
    return make_workdir(root, hf_home, **overrides)


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
    job_file = work / RUN / "job.json"
    ckpt = work / RUN / "checkpoint" / "state.pt"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if job_file.is_file() and ckpt.is_file():
            job_id = json.loads(job_file.read_text())["job_id"]
            subprocess.run(["scancel", "--signal=USR2", job_id], check=True)
            _start_requeued_now(job_id)
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
    train_job = json.loads((work / RUN / "job.json").read_text())
    assert train_job["executor"] == "slurm" and train_job["job_id"] == signalled
    assert any(j[0] == train_job["job_id"] and j[2] == "COMPLETED" for j in jobs)
    # The same job ran twice: the first run was requeued, the second resumed.
    history = [line[1] for line in sacct("-D", "-j", signalled, "-o", "JobID,State")]
    assert history[0] == "REQUEUED" and history[-1] == "COMPLETED", history
    logs = "".join(p.read_text() for p in (work / RUN / "submitit")
                   .glob("*_0_log.*"))
    assert "preempted" in logs and "resumed from" in logs
    # Same shards and the same metrics as the local run of the same configuration.
    for split in ("train", "dev", "test"):
        for local in sorted((preprocessed / "results" / "aligned" / split).glob("*.parquet")):
            remote = work / "results" / "aligned" / split / local.name
            assert pq.read_table(remote).equals(pq.read_table(local)), remote
    assert (work / "results" / "evaluate" / "metrics.tsv").read_text() == \
        (preprocessed / "results" / "evaluate" / "metrics.tsv").read_text()
    # A rerun with nothing changed does nothing, whichever executor ran it before: the
    # executor is not a param of the training rules (it had re-run train_options, train
    # and evaluate, and submitted a job that resumed from its checkpoint).
    again = run_snakemake(work, "-n")
    assert "Nothing to be done" in again.stdout + again.stderr, again.stdout[-3000:]
    with_profile = subprocess.run(
        [str(BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "-d", str(preprocessed),
         "--profile", str(REPO / "cluster" / "slurm"), "-n"],
        capture_output=True, text=True, env=env_with_venv(), cwd=preprocessed)
    assert "Nothing to be done" in with_profile.stdout + with_profile.stderr, \
        with_profile.stdout[-3000:]


# The first ffmpeg call in a run outlives its job's 1-minute limit; later calls are the
# real ffmpeg. (mkdir is atomic: exactly one job gets the slow call.)
SLOW_FIRST_FFMPEG = """#!/bin/sh
if mkdir "{marker}" 2>/dev/null; then sleep 150; fi
exec {ffmpeg} "$@"
"""


def test_experiments_train_at_once_on_slurm(slurm_cluster, preprocessed, tmp_path):
    """Two experiments on SLURM: two training jobs queued together, running side by side."""
    import yaml

    work = copy_preprocessed(preprocessed, tmp_path / "work")
    cfg_path = work / "config" / "config.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["train"] |= {"modalities": "text", "epochs": 1, "tasks": 1}
    cfg["experiments"] = {"a": None, "b": {"context_turns": 1}}
    cfg_path.write_text(yaml.safe_dump(cfg))
    start = time.strftime("%Y-%m-%dT%H:%M:%S")
    proc = start_snakemake(work, tmp_path / "snakemake.log")
    rc = proc.wait(timeout=900)
    text = (tmp_path / "snakemake.log").read_text()
    assert rc == 0, text[-4000:]
    ids = [json.loads((work / "results" / "train" / e / "seed-0" / "job.json").read_text())
           ["job_id"] for e in ("a", "b")]
    times = {j[0]: j[1:] for j in sacct("-S", start, "-o", "JobID,Start,End,State")}
    (s1, e1, st1), (s2, e2, st2) = times[ids[0]], times[ids[1]]
    assert st1 == st2 == "COMPLETED"
    assert s1 < e2 and s2 < e1, times  # the two runs overlapped in time
    assert "a" in (work / "results" / "evaluate" / "summary.txt").read_text()


def _squeue_ids() -> list[str]:
    out = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout
    return out.split()


def _until(condition, limit_s: float, what: str) -> None:
    """Wait for ``condition``, not for a fixed time."""
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


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
        live = _status_once_resubmitted(work, cancelled, proc)
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
    assert "transcribe" in live["progress"] and "running" in live["progress"]


def _status_once_resubmitted(work, cancelled, proc, timeout=240):
    """`meldflow status --json`, polled while the workflow runs, until the cancelled job
    is linked to its resubmission; the run must still be going then."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run([sys.executable, "-m", "meldflow.cli", "status", "--dir",
                              str(work), "--json"], capture_output=True, text=True,
                             check=True).stdout
        live = json.loads(out)
        row = next((j for j in live["jobs"] if j["job_id"] == cancelled), None)
        if row and " → job " in row["explanation"]:
            assert proc.poll() is None, "the run ended before status was checked"
            return live
        time.sleep(1)
    raise AssertionError(f"status never linked job {cancelled} to its resubmission:\n{out}")


def _start_requeued_now(job_id, timeout=60):
    """SLURM holds a requeued job back (BeginTime about 2 minutes ahead); as an admin
    would, let it start at once."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T|%r"],
                             capture_output=True, text=True).stdout.strip()
        if out.startswith("PENDING"):
            subprocess.run(["scontrol", "update", f"jobid={job_id}", "StartTime=now"],
                           capture_output=True)
            return
        time.sleep(0.3)


def _settled_history(job_id, timeout=60):
    """The states of every run of a job (sacct -D), once accounting has its end."""
    deadline = time.monotonic() + timeout
    while True:
        history = [line[1] for line in sacct("-D", "-j", job_id, "-o", "JobID,State")]
        if history and history[-1] not in ("RUNNING", "PENDING", "REQUEUED") \
                or time.monotonic() > deadline:
            return history
        time.sleep(1)


def test_two_nodes_train_like_one_process_and_resume_across_nodes(slurm_cluster, tmp_path):
    """DDP over two SLURM nodes (one gloo task each, rendezvous on n1) trains to the weights
    of one process with two data streams, also when preempted mid-run and resumed."""

    from meldflow.models.stage import stage_florence
    from meldflow.training.launch import launch
    from meldflow.training.loop import train

    nodes = subprocess.run(["sinfo", "-h", "-N", "-o", "%N"], capture_output=True,
                           text=True).stdout.split()
    if len(set(nodes)) < 2:
        pytest.fail(f"the local cluster has one node ({nodes}): up.sh starts two by default")
    home = tmp_path / "hf"
    stage_florence(home)
    kw = dict(epochs=20, global_batch=8, streams=2, checkpoint_every=25)  # 160 steps
    train(train_config(home, tmp_path / "one", **kw))
    cfg = train_config(home, tmp_path / "two", **kw)
    job = launch(cfg, LaunchConfig(executor="slurm", tasks=1, nodes=2, time_min=30,
                                      partition="cpu", mem_gb=3, cpus_per_task=1),
                 wait=False)
    ckpt = tmp_path / "two" / "checkpoint" / "state.pt"
    deadline = time.monotonic() + 600
    while not ckpt.is_file() and time.monotonic() < deadline and not job.done():
        time.sleep(0.5)
    assert ckpt.is_file(), job.stderr()
    subprocess.run(["scancel", "--signal=USR2", job.job_id], check=True)  # preemption
    _start_requeued_now(job.job_id)
    job.results()
    history = _settled_history(job.job_id)
    assert history[0] == "REQUEUED" and history[-1] == "COMPLETED", history
    alloc = sacct("-j", job.job_id, "-o", "JobID,NNodes,NodeList")
    assert alloc[-1][1] == "2", alloc
    logs = {p.name: p.read_text() for p in (tmp_path / "two" / "submitit").glob("*_log.err")}
    rank1 = "".join(t for n, t in logs.items() if n.endswith("_1_log.err"))
    assert "rank 1:" in rank1 and "resumed from" in "".join(logs.values())
    assert "epoch 1: dev" not in rank1  # only rank 0 evaluates and writes
    # The key projections' biases drift with the process count (test_train's
    # without_key_biases): over 340 steps by ~5e-4; everything else agrees.
    one_w, two_w = weights(tmp_path / "one" / "best"), weights(tmp_path / "two" / "best")
    assert max_diff(without_key_biases(one_w), without_key_biases(two_w)) < 1e-4
    assert max_diff(one_w, two_w) < 2e-3
    m1 = json.loads((tmp_path / "one" / "metrics.json").read_text())
    m2 = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert m2["steps"] == m1["steps"] and m2["hardware"]["world_size"] == 2
    assert m2["run"]["identity"] == m1["run"]["identity"]
    assert m2["hardware"]["slurm"]["SLURM_NNODES"] == "2"


# ffmpeg stand-in for fault tests. The first call (of a whole run) holds 2.6 GB, past a
# first try's 2 GB: the kernel kills it and SLURM ends its job OUT_OF_MEMORY. The first
# call in any other job sleeps, so that its job can be caught running. Every later call is
# the real ffmpeg. (mkdir is atomic: one job gets each fault.)
FAULTY_FFMPEG = """#!/bin/sh
if mkdir "{marker}-oom" 2>/dev/null; then
  echo "$SLURM_JOB_ID" > "{marker}-oom/job"
  {python} -c "import time; x = b'1' * (2600 * 2**20); time.sleep(30)"
  exit 1
fi
if [ "$SLURM_JOB_ID" != "$(cat "{marker}-oom/job" 2>/dev/null)" ] \\
   && mkdir "{marker}-slow" 2>/dev/null; then
  echo "$SLURM_JOB_ID" > "{marker}-slow/job"
  sleep {sleep}
fi
exec {ffmpeg} "$@"
"""


def _faulty_ffmpeg(tmp_path, oom=True, sleep=300):
    fake = tmp_path / "bin"
    fake.mkdir()
    if not oom:
        (tmp_path / "fault-oom").mkdir()
    (fake / "ffmpeg").write_text(FAULTY_FFMPEG.format(
        marker=tmp_path / "fault", python=sys.executable, ffmpeg=shutil.which("ffmpeg"),
        sleep=sleep))
    (fake / "ffmpeg").chmod(0o755)
    env = env_with_venv()
    env["PATH"] = f"{fake}{os.pathsep}{env['PATH']}"
    return env


def _fail_node(node, job):
    """What a node's power loss does: its slurmd and every process of the job it runs die
    at once, and SLURM marks it down (its jobs end NODE_FAIL)."""
    daemons("kill", f"slurmd-{node}")
    for proc in Path("/proc").iterdir():
        try:
            env = (proc / "environ").read_bytes().split(b"\0")
            cmd = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if f"SLURM_JOB_ID={job}".encode() in env or cmd.startswith(f"slurmstepd: [{job}.".encode()):
            try:
                os.kill(int(proc.name), 9)
            except (ProcessLookupError, ValueError):
                pass
    subprocess.run(["scontrol", "update", f"nodename={node}", "state=down",
                    "reason=meldflow-test"], check=True)


def _wait_node_up(node, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = subprocess.run(["sinfo", "-h", "-n", node, "-o", "%T"], capture_output=True,
                               text=True).stdout.strip()
        if state in ("idle", "mixed", "allocated"):
            return
        subprocess.run(["scontrol", "update", f"nodename={node}", "state=resume"],
                       capture_output=True)
        time.sleep(0.5)
    raise AssertionError(f"node {node} did not come back")


def _tries(start):
    """{comment: [(job id, state, ReqMem, NodeList, Start, End)]} of the shard jobs; a job
    whose step the kernel killed for memory counts as OUT_OF_MEMORY (the job itself may
    only say FAILED)."""
    out = subprocess.run(["sacct", "-P", "-n", "-S", start, "-o",
                          "JobIDRaw,Comment%200,State%40,ReqMem,NodeList%40,Start,End"],
                         capture_output=True, text=True, check=True).stdout
    jobs, oom = {}, set()
    for rec in (line.split("|") for line in out.splitlines() if line):
        if "." in rec[0]:
            if rec[2].startswith("OUT_OF_MEMORY"):
                oom.add(rec[0].split(".")[0])
        elif rec[1].startswith("rule_"):
            jobs[rec[0]] = rec
    tries = {}
    for job, rec in jobs.items():
        state = "OUT_OF_MEMORY" if job in oom else rec[2].split()[0]
        tries.setdefault(rec[1], []).append((int(job), state, *rec[3:]))
    return {c: sorted(v) for c, v in tries.items()}


def _assert_same_shards(work, preprocessed, split="train"):
    for local in sorted((preprocessed / "results" / "aligned" / split).glob("*.parquet")):
        remote = work / "results" / "aligned" / split / local.name
        assert pq.read_table(remote).equals(pq.read_table(local)), remote


def test_out_of_memory_and_node_failure_are_redone(slurm_cluster, preprocessed, hf_home,
                                                   tmp_path):
    """A frames job over its memory ends OUT_OF_MEMORY and is resubmitted with more; a node
    that goes down under a running job: the job is redone on the other node."""
    work = slurm_workdir(tmp_path / "faults", hf_home, splits=["train"])
    env = _faulty_ffmpeg(tmp_path)
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
                    _fail_node(downed, job)
            time.sleep(0.5)
        assert downed, "the slow frames job was never seen running"
        rc = proc.wait(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
        if downed:  # repaired: ReturnToService=2 takes it back once slurmd registers
            daemons("start", f"slurmd-{downed}")
            _wait_node_up(downed)
    text = (tmp_path / "snakemake.log").read_text()
    assert rc == 0, text[-4000:]
    tries = _tries(start)
    oom = [v for v in tries.values() if v[0][1] == "OUT_OF_MEMORY"]
    assert len(oom) == 1, tries
    assert [t[1] for t in oom[0]] == ["OUT_OF_MEMORY", "COMPLETED"]
    assert monitor_mb(oom[0][1][2]) == 2 * monitor_mb(oom[0][0][2])  # 2 GB, then 4 GB
    failed = [v for v in tries.values() if v[0][1] == "NODE_FAIL"]
    assert len(failed) == 1, tries
    assert failed[0][0][3] == downed and failed[0][-1][1] == "COMPLETED"
    assert failed[0][-1][3] != downed  # redone on the other node
    later = [t for v in tries.values() for t in v if t[0] > failed[0][0][0]]
    assert later and all(t[3] != downed for t in later)  # the dead node was not chosen again
    _assert_same_shards(work, preprocessed)
    # meldflow status explains what happened and what was done about it
    table = subprocess.run([sys.executable, "-m", "meldflow.cli", "status", "--dir",
                            str(work)], capture_output=True, text=True, check=True).stdout
    assert "ran out of memory at 2000 MB" in table and "try 2 asked for 4000 MB" in table
    assert f"node {downed} failed" in table and "redone on" in table


def monitor_mb(text):
    from meldflow.slurm.accounting import to_mb

    return to_mb(text)


def _daemon_up(name, check_cmd):
    """Start a SLURM daemon of the local cluster again if it is not running, and wait
    until it answers."""
    daemons("start", name)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if subprocess.run(check_cmd, capture_output=True).returncode == 0:
            return
        time.sleep(0.5)
    raise AssertionError(f"{name} did not come back")


def test_accounting_outage_and_controller_restart_are_survived(slurm_cluster, preprocessed,
                                                               hf_home, tmp_path):
    """slurmdbd stopped for longer than several status checks, then slurmctld restarted,
    mid-run: no job is taken for failed or redone, and the run finishes."""
    work = slurm_workdir(tmp_path / "outage", hf_home, splits=["train"])
    env = _faulty_ffmpeg(tmp_path, oom=False, sleep=45)  # one frames job runs 45 s longer
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
        _until(lambda: "the job status query failed" in log.read_text(), 300,
               "a status check during the outage")
        status = subprocess.run([sys.executable, "-m", "meldflow.cli", "status", "--dir",
                                 str(work)], capture_output=True, text=True, timeout=120)
        # ... and the slow job finishes while accounting is still down: what used to leave
        # the run waiting forever (the plugin forgot its jobs when sacct failed).
        slow = marker.read_text().strip()
        _until(lambda: slow not in _squeue_ids(), 300, f"job {slow} to finish")
        assert proc.poll() is None, "the run ended while accounting was down"
        _daemon_up("slurmdbd", dbd_check)
        deadline = time.monotonic() + 300
        while not _squeue_running("rule_") and time.monotonic() < deadline:
            time.sleep(0.2)
        # the controller restarts; it saves its state first (a minute, at times)
        daemons("stop", "slurmctld")
        _daemon_up("slurmctld", ctld_check)
        rc = proc.wait(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
        _daemon_up("slurmdbd", dbd_check)
        _daemon_up("slurmctld", ctld_check)
    text = (tmp_path / "snakemake.log").read_text()
    assert rc == 0, text[-4000:]
    assert "the job status query failed" in text and "answers again after" in text
    # during the outage, meldflow status said so and showed what squeue saw
    assert status.returncode == 0, status.stderr
    assert "accounting is unreachable" in status.stdout
    import re

    assert re.search(rf"\b{marker.read_text().strip()}\s+n\d\s+RUNNING\b", status.stdout), \
        status.stdout
    tries = _tries(start)
    assert len(tries) >= 7 and all([t[1] for t in v] == ["COMPLETED"] for v in tries.values()), \
        tries
    _assert_same_shards(work, preprocessed)


def test_killed_snakemake_rerun_never_runs_a_job_twice(slurm_cluster, preprocessed, hf_home,
                                                       tmp_path):
    """Snakemake killed (-9) while shard jobs run, then the same command again: the new run
    cancels the old run's jobs before it submits, so no output has two writers."""
    import signal

    work = slurm_workdir(tmp_path / "killed", hf_home, splits=["train"])
    env = _faulty_ffmpeg(tmp_path, oom=False)  # only the slow call
    start = time.strftime("%Y-%m-%dT%H:%M:%S")
    proc = start_snakemake(work, tmp_path / "first.log", "--", "preprocess", env=env)
    marker = tmp_path / "fault-slow" / "job"
    deadline = time.monotonic() + 300
    while not (marker.is_file() and marker.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.3)
    assert marker.is_file(), (tmp_path / "first.log").read_text()[-3000:]
    slow_job = marker.read_text().strip()
    os.kill(proc.pid, signal.SIGKILL)  # the login session drops
    proc.wait()
    assert slow_job in _squeue_running("rule_frames")  # its job runs on
    unlock = subprocess.run([str(BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "-d",
                             str(work), "--unlock"], capture_output=True, text=True, env=env)
    assert unlock.returncode == 0, unlock.stderr
    again = start_snakemake(work, tmp_path / "second.log", "--", "preprocess", env=env)
    try:
        rc = again.wait(timeout=900)
    finally:
        if again.poll() is None:
            again.kill()
    text = (tmp_path / "second.log").read_text()
    assert rc == 0, text[-4000:]
    assert "of an earlier run of this workflow are still running" in text and slow_job in text
    tries = _tries(start)
    for comment, seq in tries.items():  # no two tries of one output overlap in time
        for a, b in zip(seq, seq[1:], strict=False):
            assert a[5] <= b[4], (comment, seq)
    cancelled = [t for v in tries.values() for t in v if t[0] == int(slow_job)]
    assert cancelled and cancelled[0][1].startswith("CANCELLED")
    _assert_same_shards(work, preprocessed)


def _readme_command(fragment: str) -> list[str]:
    """The README's command line that contains ``fragment``, split as the shell would."""
    import shlex

    lines = [line.split("#")[0] for line in (REPO / "README.md").read_text().splitlines()
             if fragment in line]
    assert len(lines) == 1, lines
    return shlex.split(lines[0])


def test_the_readme_sweep_trains_every_run_as_a_slurm_job(slurm_cluster, preprocessed,
                                                          tmp_path):
    """The README's sweep (`--profile cluster/slurm --configfile config/ablation.yaml`): a
    command-line --configfile replaces the profile's config files, which had held
    `executor: slurm`, and all 25 runs trained on the submit host. Now training follows
    the workflow's executor: every run is a SLURM job. (Stopped once the runs are queued.)"""
    import signal

    work = copy_preprocessed(preprocessed, tmp_path / "work")
    shutil.copytree(REPO / "cluster" / "slurm", work / "cluster" / "slurm")
    shutil.copy(REPO / "config" / "ablation.yaml", work / "config" / "ablation.yaml")
    cmd = _readme_command("--profile cluster/slurm --configfile config/ablation.yaml")
    assert cmd[0] == ".venv/bin/snakemake"
    cmd = [str(BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "-d", str(work), *cmd[1:]]
    log_path = tmp_path / "snakemake.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=work, env=env_with_venv(), stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    jobs = []
    try:
        def queued():
            jobs[:] = sorted((work / "results" / "train").glob("*/seed-*/job.json"))
            assert proc.poll() is None, log_path.read_text()[-3000:]
            return len(jobs) >= 3
        _until(queued, 600, "three training runs submitted")
        infos = [json.loads(p.read_text()) for p in jobs]
        assert all(info["executor"] == "slurm" for info in infos), infos
        out = subprocess.run(["squeue", "-h", "-o", "%i|%j"], capture_output=True,
                             text=True).stdout
        queued_ids = {line.split("|")[0] for line in out.splitlines()}
        history = {j[0] for j in sacct("-j", ",".join(i["job_id"] for i in infos),
                                       "-o", "JobID")}
        assert all(i["job_id"] in queued_ids | history for i in infos), (infos, out)
        text = log_path.read_text()
        assert "train_executor=slurm" in text and "WARNING" not in text
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        subprocess.run(["scancel", "--name", "submitit"], capture_output=True)
        _until(lambda: not _squeue_ids(), 120, "the queue to empty")


def test_a_config_that_asks_to_train_locally_under_slurm_is_warned_about(slurm_cluster,
                                                                        preprocessed,
                                                                        tmp_path):
    """Training on the submit host under the SLURM profile happens only when a config says
    so, and is said at the start, before any job."""
    work = copy_preprocessed(preprocessed, tmp_path / "work")
    proc = start_snakemake(work, tmp_path / "snakemake.log", "--config",
                           "train={executor: local}", "--",
                           "results/train/default/seed-0.yaml")
    rc = proc.wait(timeout=300)
    text = (tmp_path / "snakemake.log").read_text()
    assert rc == 0, text[-3000:]
    assert ("meldflow: WARNING: results/train/default/seed-0 trains on this host, not as a "
            "SLURM job") in text


def test_a_gpu_request_is_allocated_bound_and_said(slurm_cluster, tmp_path):
    """The GPU request path on a cluster configured like a site (up.sh: partition gpu, two
    GPUs per node as generic resources): a job asking 2 GPUs for 2 tasks is allocated
    gres/gpu=2, each rank names its own device index of what SLURM bound, and with no CUDA
    it trains on gloo and says so."""
    from meldflow.models.stage import stage_florence
    from meldflow.training.launch import launch

    home = tmp_path / "hf"
    stage_florence(home)
    cfg = train_config(home, tmp_path / "run", max_steps=2, checkpoint_every=1, streams=2)
    how = LaunchConfig(executor="slurm", tasks=2, nodes=1, time_min=10, partition="gpu",
                       gpus_per_node=2, cpus_per_task=1, mem_gb=3)
    job = launch(cfg, how, wait=False)
    job.results()
    alloc = []

    def settled():
        alloc[:] = sacct("-j", job.job_id, "-o", "JobID,Partition,AllocTRES%200,State")
        return alloc and alloc[0][3] not in ("RUNNING", "PENDING", "COMPLETING")
    _until(settled, 60, "accounting to record the job's end")
    assert alloc[0][1] == "gpu" and "gres/gpu=2" in alloc[0][2] and alloc[0][3] == \
        "COMPLETED", alloc
    logs = {n: (tmp_path / "run" / "submitit" / f"{job.job_id}_{n}_log.err").read_text()
            for n in (0, 1)}
    for rank, text in logs.items():
        m = re.search(rf"rank {rank} of 2: CUDA_VISIBLE_DEVICES=(\S+), its GPU would be index "
                      rf"{rank}, but torch finds no CUDA here: training on the CPU with gloo",
                      text)
        assert m, text[-2000:]
        assert len(m.group(1).split(",")) == 2  # both of the node's GPUs, bound to the job


def test_after_down_sh_snakemake_starts_without_waiting(slurm_cluster, tmp_path):
    """With the local cluster stopped, every Snakemake start waited ~9 s: its SLURM plugin
    asks `scontrol show config` as it loads. down.sh parks the configuration (a 1 s message
    timeout), so the client gives up at once; up.sh writes it anew. (Last in this module:
    it stops the cluster, and brings it back.)"""
    try:
        subprocess.run(["bash", str(REPO / "cluster" / "local-slurm" / "down.sh")],
                       check=True, capture_output=True)
        start = time.monotonic()
        subprocess.run([str(BIN / "snakemake"), "--version"], check=True, capture_output=True)
        snakemake_s = time.monotonic() - start
        start = time.monotonic()
        subprocess.run(["scontrol", "show", "config"], capture_output=True)
        scontrol_s = time.monotonic() - start
    finally:
        up = subprocess.run(["bash", str(REPO / "cluster" / "local-slurm" / "up.sh")],
                            capture_output=True, text=True)
    assert up.returncode == 0, up.stdout + up.stderr
    assert scontrol_s < 3 and snakemake_s < 6, (scontrol_s, snakemake_s)
