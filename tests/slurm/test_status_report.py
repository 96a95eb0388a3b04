"""`meldflow status` (meldflow.slurm.status_report): sacct and squeue joined, tries explained
(no cluster needed)."""

import subprocess
import sys

from helpers import REPO, env_with_venv
from slurm_helpers import fake_slurm, job, run_record, status_cli

from meldflow.slurm.status_report import job_rows


def test_attempts_are_numbered_per_rule_and_wildcards(tmp_path):
    log = tmp_path / "rule_frames" / "train_0001" / "11.log"
    log.parent.mkdir(parents=True)
    log.write_text("start\nffmpeg: killed\n")

    def rec(job, comment, state, submit, rss=""):
        return {"JobIDRaw": job, "Comment": comment, "State": state, "ExitCode": "0:0",
                "ElapsedRaw": "60", "TotalCPU": "00:30", "AllocCPUS": "1", "ReqMem": "2000M",
                "MaxRSS": rss, "Submit": submit, "JobName": "uuid"}

    records = [rec("11", "rule_frames_wildcards_train_0001", "TIMEOUT", "T1"),
               rec("11.batch", "", "CANCELLED", "T1", "300M"),
               rec("12", "rule_frames_wildcards_train_0000", "COMPLETED", "T2"),
               rec("13", "rule_frames_wildcards_train_0001", "COMPLETED", "T3"),
               rec("14", "rule_summary", "PENDING", "T4")]
    rows = job_rows(records, tmp_path, reasons={"14": "Resources"})
    got = [(r.rule, r.wildcards, r.attempt, r.state) for r in rows]
    assert got == [("frames", "train_0001", 1, "TIMEOUT"), ("frames", "train_0000", 1, "COMPLETED"),
                   ("frames", "train_0001", 2, "COMPLETED"), ("summary", "", 1, "PENDING")]
    assert rows[0].max_rss_mb == 300 and rows[0].cpu_efficiency == 0.5
    assert rows[0].log == str(log) and rows[0].log_tail == ["start", "ffmpeg: killed"]
    assert rows[3].reason == "Resources"


def test_status_without_sacct_says_so(tmp_path):
    env = env_with_venv() | {"PATH": str(tmp_path)}  # no sacct on this PATH
    proc = subprocess.run([sys.executable, "-m", "meldflow.cli", "status"], env=env,
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2 and "sacct is not available" in proc.stderr


def test_failed_tries_are_explained_and_gpus_shown():
    from meldflow.slurm.status_report import format_table

    def rec(job, comment, state, mem, node, tres="cpu=2,mem=2000M,node=1", limit="00:30:00"):
        return {"JobIDRaw": job, "JobID": job, "JobName": "run", "Comment": comment,
                "State": state, "ExitCode": "0:0", "ElapsedRaw": "10", "TotalCPU": "00:05",
                "AllocCPUS": "2", "ReqMem": mem, "MaxRSS": "", "Submit": job,
                "NodeList": node, "AllocTRES": tres, "Timelimit": limit}

    c = "rule_frames_wildcards_train_0001"
    records = [
        rec("11", c, "FAILED", "2000M", "n1"),
        {**rec("11.0", "", "OUT_OF_MEMORY", "", "n1"), "MaxRSS": "1900M"},
        rec("12", c, "NODE_FAIL", "4000M", "n2", "cpu=2,mem=4G,node=1,gres/gpu=2"),
        rec("13", c, "TIMEOUT", "6000M", "n1", limit="00:30:00"),
        rec("14", c, "COMPLETED", "8000M", "n1", limit="01:00:00"),
    ]
    rows = job_rows(records)
    assert [r.state for r in rows] == ["OUT_OF_MEMORY", "NODE_FAIL", "TIMEOUT", "COMPLETED"]
    assert rows[0].explanation == ("ran out of memory at 2000 MB (peak 1900 MB); "
                                   "try 2 asked for 4000 MB → job 12, NODE_FAIL")
    assert rows[1].explanation == "node n2 failed; redone on n1 (try 3) → job 13, TIMEOUT"
    assert rows[2].explanation == ("ran past its time limit of 00:30:00; try 4 got 01:00:00 "
                                   "→ job 14, COMPLETED")
    assert rows[3].explanation == "" and rows[1].gpus == 2
    table = format_table("run", rows)
    assert "gpus" in table.splitlines()[1] and "node n2 failed" in table


def test_status_names_training_runs_that_ran_off_the_cluster(tmp_path):
    """A run whose job.json says it trained on this machine is named under the table."""
    import json

    from meldflow.slurm.status_report import format_table, off_cluster_trainings

    for name, executor in (("a", "slurm"), ("b", "local")):
        run = tmp_path / "results" / "train" / name / "seed-0"
        run.mkdir(parents=True)
        (run / "job.json").write_text(json.dumps({"job_id": "7", "executor": executor,
                                                  "host": "login1"}))
    local = off_cluster_trainings(tmp_path)
    assert local == ["results/train/b/seed-0 (local, on login1)"]
    assert "trained off the cluster (not SLURM jobs): results/train/b/seed-0" in \
        format_table("run", [], "", local)


def test_a_refresh_makes_one_sacct_and_one_squeue_call(tmp_path):
    """However many runs and training jobs: one sacct and one squeue call a refresh."""
    import json

    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    for name in ("sacct", "squeue"):
        (bin_dir / name).write_text(f"#!/bin/sh\necho {name} >> {calls}\n")
        (bin_dir / name).chmod(0o755)
    logs = tmp_path / ".snakemake" / "log"
    logs.mkdir(parents=True)
    (logs / "2026-12-03T010000.000000.snakemake.log").write_text("SLURM run ID: 1a2b\n")
    for exp in ("a", "b", "c"):
        run = tmp_path / "results" / "train" / exp / "seed-0"
        run.mkdir(parents=True)
        (run / "job.json").write_text(json.dumps({"job_id": f"9{len(exp)}{exp}",
                                                  "executor": "slurm"}))
    env = env_with_venv() | {"PATH": f"{bin_dir}:{env_with_venv()['PATH']}"}
    proc = subprocess.run([sys.executable, "-m", "meldflow.cli", "status", "--dir",
                           str(tmp_path)], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert sorted(calls.read_text().split()) == ["sacct", "squeue"]


def test_job_logs_are_looked_for_where_the_profile_puts_them(tmp_path, monkeypatch):
    """The log folder is the project profile's `slurm-logdir` (one place): the working
    folder's profile, else the project's own (a run from another folder, as the SLURM
    tests do); with neither, the plugin's default."""
    from meldflow.slurm import status_report
    from meldflow.slurm.status_report import PLUGIN_LOGDIR, slurm_logdir

    assert slurm_logdir(REPO) == REPO / "results" / "logs" / "slurm"
    assert slurm_logdir(tmp_path) == tmp_path / "results" / "logs" / "slurm"
    (tmp_path / "cluster" / "slurm").mkdir(parents=True)
    (tmp_path / "cluster" / "slurm" / "config.yaml").write_text("slurm-logdir: logs/jobs\n")
    assert slurm_logdir(tmp_path) == tmp_path / "logs" / "jobs"
    monkeypatch.setattr(status_report, "PROFILES", (status_report.PROFILES[0],))
    assert slurm_logdir(tmp_path / "cluster") == tmp_path / "cluster" / PLUGIN_LOGDIR


def test_status_shows_the_latest_run_that_submitted_jobs(tmp_path):
    """Issue 34: after a finished run, the same command again ("Nothing to be done") left
    `meldflow status` with no shard jobs, and `status --watch` started beside a new
    Snakemake latched on to the previous, empty run and exited. Status now shows the
    latest run that submitted jobs and says when a later one submitted none; a watch
    goes on while a Snakemake runs."""
    import time

    now = time.time()
    run_record(tmp_path, "uuid-a", now - 3600, jobs=["transcribe", "frames"])
    run_record(tmp_path, "uuid-b", now - 600)  # "Nothing to be done"
    env = fake_slurm(tmp_path, [job("101", "rule_transcribe_wildcards_train_0000",
                                    "COMPLETED"),
                                job("102", "rule_frames_wildcards_train_0000", "COMPLETED")],
                     [])
    out = status_cli(tmp_path, env)
    assert out.returncode == 0, out.stderr
    assert "SLURM run uuid-a" in out.stdout and "2 COMPLETED" in out.stdout
    assert "the latest Snakemake run (started" in out.stdout
    assert "submitted no job (nothing to do); shown: the latest run that did" in out.stdout
    run_record(tmp_path, "uuid-c", now - 5, ended=False, heartbeat=now)  # nothing queued yet
    out = status_cli(tmp_path, env)
    assert "is running and has submitted no job yet" in out.stdout
    watch = subprocess.Popen([sys.executable, "-m", "meldflow.cli", "status", "--dir",
                              str(tmp_path), "--watch", "0.2"], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(3)
    assert watch.poll() is None  # it waits for the new run, instead of exiting
    watch.kill()
    watch.wait()


def test_jobs_no_snakemake_watches_are_marked(tmp_path):
    """Issue 34: after Snakemake was killed, status showed its orphaned jobs as ordinary
    PENDING and RUNNING. A run whose heartbeat stopped without an end is nobody's: its
    queued and running jobs are marked, and the note says what to do."""
    import json
    import time

    now = time.time()
    run_record(tmp_path, "uuid-a", now - 900, jobs=["frames", "frames"], ended=False,
               heartbeat=now - 300)
    env = fake_slurm(tmp_path, [job("201", "rule_frames_wildcards_train_0000", "COMPLETED"),
                                job("202", "", "RUNNING")],
                     [{"JobIDRaw": "202", "JobName": "uuid-a", "State": "RUNNING",
                       "NodeList": "n2", "Reason": "None", "Gres": "", "Submit": "T",
                       "Comment": "rule_frames_wildcards_train_0001"}])
    out = status_cli(tmp_path, env)
    assert "RUNNING, unwatched" in out.stdout and "COMPLETED, unwatched" not in out.stdout
    assert "1 queued or running job(s) of this run are watched by no Snakemake" in out.stdout
    doc = json.loads(status_cli(tmp_path, env, "--json").stdout)
    assert [(j["job_id"], j["watched"]) for j in doc["jobs"]] == [("201", True),
                                                                  ("202", False)]
    assert doc["run"]["alive"] is False and doc["run"]["heartbeat_age_s"] >= 300


def test_every_training_try_stays_in_the_history(tmp_path):
    """Issue 34: a cancelled training job was reported "not tried again" while Snakemake
    had resubmitted it, and was gone from the history after the run (job.json held only
    the newest job). Every try is appended to job.json and linked to the one after it."""
    import json
    import time

    from meldflow.training.launch import record_job

    now = time.time()
    run = tmp_path / "results" / "train" / "default" / "seed-0"
    run.mkdir(parents=True)
    record_job(run, "301", "slurm", 1, "d1gest")
    record_job(run, "305", "slurm", 1, "d1gest")
    tries = json.loads((run / "job.json").read_text())
    assert tries["job_id"] == "305" and [t["job_id"] for t in tries["tries"]] == ["301", "305"]
    run_record(tmp_path, "uuid-a", now - 60, jobs=["train"], ended=False, heartbeat=now)
    env = fake_slurm(tmp_path, [job("301", "", "CANCELLED by 0", name="submitit"),
                                job("305", "", "RUNNING", name="submitit")], [])
    out = status_cli(tmp_path, env)
    lines = [line for line in out.stdout.splitlines() if "default/seed-0" in line]
    assert any(" 1 " in f" {line} " and "CANCELLED" in line for line in lines), out.stdout
    assert any(" 2 " in f" {line} " and "RUNNING" in line for line in lines), out.stdout
    assert "resubmitted as try 2 → job 305, RUNNING" in out.stdout


def test_status_with_accounting_down_names_sacct_and_what_the_run_record_knows(tmp_path):
    """sacct failing printed an empty table naming only squeue."""
    import time

    now = time.time()
    run_record(tmp_path, "uuid-a", now - 3600, jobs=["transcribe", "frames", "align"])
    env = fake_slurm(tmp_path, [], [])
    (tmp_path / "bin" / "sacct").write_text(
        "#!/bin/sh\necho 'sacct: error: Problem talking to the database: Connection "
        "refused' >&2\nexit 1\n")
    proc = status_cli(tmp_path, env)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    out = proc.stdout
    assert "SLURM accounting (sacct) is unreachable" in out
    assert "Problem talking to the database" in out
    assert "rule " not in out and "jobs: \n" not in out + "\n"  # no empty table
    assert "squeue sees none of its jobs queued or running" in out
    assert "the run record says: 3 job(s) submitted" in out
