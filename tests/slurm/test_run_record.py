"""The run records meldflow's Snakemake logger plugin keeps (meldflow.slurm.run_record),
with real Snakemake (no cluster needed)."""

import json
import os
import signal
import subprocess
import sys
import time

from helpers import BIN

from meldflow.slurm.run_record import (
    RUNS_DIR,
    RunRecord,
    alive,
    read_runs,
    stale_lock,
    submitted,
)

SNAKEFILE = """
rule all:
    input: "b"
rule a:
    output: "a"
    shell: "sleep {config[sleep]}; touch {output}"
rule b:
    input: "a"
    output: "b"
    shell: "touch {output}"
"""


def snakemake(work, *args, sleep=0, heartbeat=0.2, wait=True):
    """Snakemake on a two-job workflow in ``work``, meldflow's logger on."""
    (work / "Snakefile").write_text(SNAKEFILE)
    cmd = [str(BIN / "snakemake"), "--cores", "1", "--logger", "meldflow", "--config",
           f"sleep={sleep}", *args]
    env = dict(os.environ, MELDFLOW_HEARTBEAT_S=str(heartbeat))
    proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    if wait:
        assert proc.wait(timeout=120) == 0, proc.stdout.read()
    return proc


def test_each_run_is_recorded_with_its_jobs_progress_and_end(tmp_path):
    snakemake(tmp_path)
    (run,) = read_runs(tmp_path)
    assert {j["rule"] for j in run["jobs"].values()} == {"a", "b", "all"}
    assert all(len(j["tries"]) == 1 and j["tries"][0]["ok"] for j in run["jobs"].values())
    assert (run["done"], run["total"], run["errors"]) == (3, 3, 0)
    assert run["ended"] is not None and not alive(run)
    assert submitted(run) == 0  # a local run: nothing went to a cluster
    mask = os.umask(0o022)
    os.umask(mask)
    assert os.stat(run["file"]).st_mode & 0o777 == 0o666 & ~mask
    # a run with nothing to do is a record too, without jobs; a dry run is none
    snakemake(tmp_path)
    snakemake(tmp_path, "-n", "--forceall")
    first, again = read_runs(tmp_path)
    assert first["file"] == run["file"] and again["jobs"] == {} and again["ended"]


def test_a_killed_snakemake_stops_beating_and_its_run_is_not_alive(tmp_path):
    """The heartbeat, not a process id, says whether a Snakemake runs a run: status may
    run on another login node."""
    proc = snakemake(tmp_path, sleep=30, wait=False)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        runs = read_runs(tmp_path)
        if runs and runs[0]["jobs"]:
            break
        time.sleep(0.1)
    time.sleep(0.5)
    (run,) = read_runs(tmp_path)
    assert alive(run) and run["ended"] is None and run["heartbeat"] > run["started"]
    locks, holder = stale_lock(tmp_path)
    assert locks and holder == "alive"
    os.killpg(proc.pid, signal.SIGKILL)  # Snakemake and its job's shell
    proc.wait()
    time.sleep(0.7)  # three heartbeats of 0.2 s missed
    (run,) = read_runs(tmp_path)
    assert not alive(run) and run["ended"] is None
    assert stale_lock(tmp_path) == (locks, "dead")  # its locks hold nothing any more


def test_a_lock_no_run_record_explains_is_unknown(tmp_path):
    assert stale_lock(tmp_path) == ([], None)
    ended = RunRecord(tmp_path / RUNS_DIR, "0123456789abcdef")
    ended.end()
    ended.write()
    lock = tmp_path / ".snakemake" / "locks" / "0.input.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text("a\n")  # left by a run without the logger, after that one ended
    os.utime(lock, (time.time() + 5, time.time() + 5))
    assert stale_lock(tmp_path) == ([lock], "unknown")


def test_the_plugin_keeps_no_record_inside_a_cluster_job(tmp_path):
    """The Snakemake a SLURM job runs (--mode remote) is not the run: no record."""
    code = ("import sys; sys.argv += ['--mode', 'remote']; "
            "from snakemake_logger_plugin_meldflow import LogHandler; "
            "from types import SimpleNamespace as S; "
            "h = LogHandler(S(dryrun=False), None); print(h.off)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "True", out.stderr
    assert json.dumps(read_runs(tmp_path)) == "[]"
