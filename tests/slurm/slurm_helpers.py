"""Helpers of the SLURM tests: the local cluster's daemons, sacct and squeue, Snakemake
with the SLURM profile, and the faults the tests inject."""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
from helpers import (
    BIN,
    REPO,
    env_with_venv,
    make_workdir,
)

from meldflow.slurm.accounting import to_mb

RUN = Path("results/train/default/seed-0")  # the default config's one training run


def daemons(action: str, daemon: str) -> None:
    """Stop, kill or start one daemon of the local cluster, known by the pid file up.sh's
    daemons write: never a daemon of a SLURM that up.sh did not start."""
    subprocess.run(["bash", str(REPO / "cluster" / "local-slurm" / "daemons.sh"), action,
                    daemon], check=True)


def sacct(*args):
    out = subprocess.run(["sacct", "-X", "-P", "-n", *args], capture_output=True, text=True,
                         check=True).stdout
    return [line.split("|") for line in out.splitlines() if line]


def slurm_workdir(root, hf_home, **overrides):
    """A working folder for `--profile cluster/slurm` (the profile names no config file:
    the workflow's own config/config.yaml is read, as in the project folder)."""
    return make_workdir(root, hf_home, **overrides)


def start_snakemake(work, log_path, *args, env=None, profile=REPO / "cluster" / "slurm"):
    """Snakemake with the SLURM profile in the background, its output in ``log_path``."""
    with open(log_path, "w") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [str(BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "-d", str(work), "--cores",
             "2", "--profile", str(profile), *args],
            cwd=work, env=env or env_with_venv(), stdout=log, stderr=subprocess.STDOUT)


def signal_training_once(work, proc, timeout=900):
    """Once training has checkpointed, send its job the signal SLURM sends on preemption
    or near the time limit (USR2 to every task); returns the job id."""
    job_file = work / RUN / "job.json"
    ckpt = work / RUN / "checkpoint" / "state.pt"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if job_file.is_file() and ckpt.is_file():
            job_id = json.loads(job_file.read_text())["job_id"]
            subprocess.run(["scancel", "--signal=USR2", job_id], check=True)
            start_requeued_now(job_id)
            return job_id
        time.sleep(0.5)
    return None


# The first ffmpeg call in a run outlives its job's 1-minute limit; later calls are the
# real ffmpeg. (mkdir is atomic: exactly one job gets the slow call.)
SLOW_FIRST_FFMPEG = """#!/bin/sh
if mkdir "{marker}" 2>/dev/null; then sleep 150; fi
exec {ffmpeg} "$@"
"""


def squeue_ids() -> list[str]:
    out = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout
    return out.split()


def wait_until(condition, limit_s: float, what: str) -> None:
    """Wait for ``condition``, not for a fixed time."""
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def squeue_running(prefix):
    out = subprocess.run(["squeue", "-h", "-o", "%i|%T|%k"], capture_output=True,
                         text=True).stdout
    return [line.split("|")[0] for line in out.splitlines()
            if line.split("|")[1] == "RUNNING" and line.split("|")[2].startswith(prefix)]


def status_once_resubmitted(work, cancelled, proc, timeout=240):
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


def start_requeued_now(job_id, timeout=60):
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


def settled_history(job_id, timeout=60):
    """The states of every run of a job (sacct -D), once accounting has its end."""
    deadline = time.monotonic() + timeout
    while True:
        history = [line[1] for line in sacct("-D", "-j", job_id, "-o", "JobID,State")]
        if history and history[-1] not in ("RUNNING", "PENDING", "REQUEUED") \
                or time.monotonic() > deadline:
            return history
        time.sleep(1)


# ffmpeg stand-in for fault tests. The first call (of a whole run) holds 2.6 GB, past a
# first try's 2 GB: the kernel kills it and SLURM ends its job OUT_OF_MEMORY. The first
# call in any other job sleeps, so that its job can be caught running. Every later call is
# the real ffmpeg. Each fault is claimed atomically, one job each: the memory fault by a
# symlink that names its job as it is made (with a directory and a file written after it,
# a second call of the same job, running beside the first, once read no job there, took
# the slow fault too, and its node was failed before the kernel killed the first call).
FAULTY_FFMPEG = """#!/bin/sh
if ln -sT "job-$SLURM_JOB_ID" "{marker}-oom" 2>/dev/null; then
  {python} -c "import time; x = b'1' * (2600 * 2**20); time.sleep(30)"
  exit 1
fi
if [ "job-$SLURM_JOB_ID" != "$(readlink "{marker}-oom")" ] \\
   && mkdir "{marker}-slow" 2>/dev/null; then
  echo "$SLURM_JOB_ID" > "{marker}-slow/job"
  sleep {sleep}
fi
exec {ffmpeg} "$@"
"""


def faulty_ffmpeg(tmp_path, oom=True, sleep=300):
    fake = tmp_path / "bin"
    fake.mkdir()
    if not oom:  # the memory fault is taken, by no job
        (tmp_path / "fault-oom").symlink_to("job-none")
    (fake / "ffmpeg").write_text(FAULTY_FFMPEG.format(
        marker=tmp_path / "fault", python=sys.executable, ffmpeg=shutil.which("ffmpeg"),
        sleep=sleep))
    (fake / "ffmpeg").chmod(0o755)
    env = env_with_venv()
    env["PATH"] = f"{fake}{os.pathsep}{env['PATH']}"
    return env


def fail_node(node, job):
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


def wait_node_up(node, timeout=60):
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


def tries_of(start, work):
    """{comment: [(job id, state, ReqMem, NodeList, Start, End)]} of the shard jobs run in
    ``work``; a job whose step the kernel killed for memory counts as OUT_OF_MEMORY (the job
    itself may only say FAILED). The folder keeps out jobs of another test or an earlier run
    that sacct's window also holds (one still running, or lost, ends inside it)."""
    out = subprocess.run(["sacct", "-P", "-n", "-S", start, "-o",
                          "JobIDRaw,Comment%200,State%40,ReqMem,NodeList%40,Start,End,"
                          "WorkDir%400"],
                         capture_output=True, text=True, check=True).stdout
    jobs, oom = {}, set()
    for rec in (line.split("|") for line in out.splitlines() if line):
        if "." in rec[0]:
            if rec[2].startswith("OUT_OF_MEMORY"):
                oom.add(rec[0].split(".")[0])
        elif rec[1].startswith("rule_") and Path(rec[-1]) == Path(work):
            jobs[rec[0]] = rec[:-1]
    tries = {}
    for job, rec in jobs.items():
        state = "OUT_OF_MEMORY" if job in oom else rec[2].split()[0]
        tries.setdefault(rec[1], []).append((int(job), state, *rec[3:]))
    return {c: sorted(v) for c, v in tries.items()}


def assert_same_shards(work, preprocessed, split="train"):
    for local in sorted((preprocessed / "results" / "aligned" / split).glob("*.parquet")):
        remote = work / "results" / "aligned" / split / local.name
        assert pq.read_table(remote).equals(pq.read_table(local)), remote


def monitor_mb(text):

    return to_mb(text)


def daemon_up(name, check_cmd):
    """Start a SLURM daemon of the local cluster again if it is not running, and wait
    until it answers."""
    daemons("start", name)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if subprocess.run(check_cmd, capture_output=True).returncode == 0:
            return
        time.sleep(0.5)
    raise AssertionError(f"{name} did not come back")


def readme_command(fragment: str) -> list[str]:
    """The README's command line that contains ``fragment``, split as the shell would."""
    import shlex

    lines = [line.split("#")[0] for line in (REPO / "README.md").read_text().splitlines()
             if fragment in line]
    assert len(lines) == 1, lines
    return shlex.split(lines[0])


def fake_slurm(tmp_path, sacct: list[dict], squeue: list[dict]) -> dict:
    """An environment whose sacct and squeue print these jobs (fields by name)."""
    from meldflow.slurm.accounting import SACCT_FIELDS, SQUEUE_FIELDS

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, fields, rows in (("sacct", [f.split("%")[0] for f in SACCT_FIELDS], sacct),
                               ("squeue", list(SQUEUE_FIELDS), squeue)):
        text = "\n".join("|".join(str(r.get(f, "")) for f in fields) for r in rows)
        (bin_dir / f"{name}.out").write_text(text + "\n")
        (bin_dir / name).write_text(f"#!/bin/sh\ncat {bin_dir / name}.out\n")
        (bin_dir / name).chmod(0o755)
    return env_with_venv() | {"PATH": f"{bin_dir}:{env_with_venv()['PATH']}"}


def run_record(work, run_id, started, jobs=(), ended=True, heartbeat=None):
    """A run record as meldflow's logger plugin writes it (meldflow.slurm.run_record)."""
    import json

    from meldflow.slurm.run_record import RUNS_DIR

    folder = work / RUNS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    record = {"workflow_id": run_id, "slurm_run_id": run_id, "host": "login1",
              "started": started, "heartbeat": heartbeat or started, "heartbeat_s": 30.0,
              "ended": started + 60 if ended else None, "errors": 0, "done": 0, "total": 0,
              "jobs": {str(i): {"rule": rule, "wildcards": {}, "local": rule == "train",
                                "tries": [{"submitted": started, "ended": None, "ok": None}]}
                       for i, rule in enumerate(jobs)}}
    (folder / f"{int(started)}-{run_id}.json").write_text(json.dumps(record))


def job(job_id, comment, state, name="uuid-a", elapsed=30):
    return {"JobIDRaw": job_id, "JobID": job_id, "JobName": name, "Comment": comment,
            "State": state, "ExitCode": "0:0", "ElapsedRaw": elapsed, "TotalCPU": "00:10",
            "AllocCPUS": 2, "ReqMem": "2000M", "Submit": f"2026-12-06T10:00:{job_id[-2:]}",
            "NodeList": "n1", "Timelimit": "00:30:00"}


def status_cli(work, env, *args, timeout=60):
    return subprocess.run([sys.executable, "-m", "meldflow.cli", "status", "--dir", str(work),
                           *args], env=env, capture_output=True, text=True, timeout=timeout)
