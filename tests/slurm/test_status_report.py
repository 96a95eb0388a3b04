"""`meldflow status` (meldflow.slurm.status_report): sacct and squeue joined, tries explained
(no cluster needed)."""

import subprocess
import sys

from helpers import REPO, env_with_venv

from meldflow.slurm.accounting import to_mb, to_seconds
from meldflow.slurm.status_report import job_rows


def test_units_of_sacct_fields():
    assert to_mb("2000M") == 2000 and to_mb("2G") == 2048 and to_mb("512K") == 0.5
    assert to_mb("") is None
    assert to_seconds("00:01:30") == 90 and to_seconds("1-00:00:01") == 86401
    assert to_seconds("00:02.500") == 2.5


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


def test_running_and_pending_jobs_get_their_rule_from_squeue(tmp_path):
    """Mid-run, accounting has no comment for running or pending jobs (it stores one when a
    job ends): their rule and wildcards come from squeue, tries are counted per rule and
    wildcards, and a cancelled try is linked to its queued resubmission at once."""
    import json

    from meldflow.slurm.live import join_queue, pending_reasons, progress, progress_text
    from meldflow.slurm.status_report import format_table

    def acct(job, state, comment=""):
        return {"JobIDRaw": job, "JobID": job, "JobName": "uuid", "Comment": comment,
                "State": state, "ExitCode": "0:0", "ElapsedRaw": "5", "TotalCPU": "00:01",
                "AllocCPUS": "2", "ReqMem": "4000M", "MaxRSS": "", "Submit": f"T{job}",
                "NodeList": "n1", "AllocTRES": "", "Timelimit": "00:30:00"}

    def queued(job, state, comment, name="uuid", reason="None"):
        return {"JobIDRaw": job, "JobName": name, "State": state, "NodeList": "n2",
                "Reason": reason, "Gres": "", "Submit": f"T{job}", "Comment": comment}

    t, f = "rule_transcribe_wildcards_test_0000", "rule_frames_wildcards_test_000"
    records = [acct("11", "COMPLETED", "rule_ingest_wildcards_test"),
               acct("12", "CANCELLED by 0"),  # ended a moment ago: no comment stored yet
               acct("13", "RUNNING")] + [acct(str(j), "PENDING") for j in range(15, 20)]
    queue = {"13": queued("13", "RUNNING", f + "0"),
             "14": queued("14", "PENDING", t, reason="Priority"),  # not in accounting yet
             **{str(j): queued(str(j), "PENDING", f"{f}{j - 14}") for j in range(15, 20)},
             "99": queued("99", "RUNNING", "rule_x", name="another-run")}
    queue_12 = {"12": queued("12", "CANCELLED", t)}  # squeue still lists it as it ends
    rows = job_rows(join_queue(records, queue | queue_12, "uuid", []), None,
                    pending_reasons(queue))
    got = {r.job_id: (r.rule, r.wildcards, r.attempt, r.state) for r in rows}
    assert got["12"] == ("transcribe", "test_0000", 1, "CANCELLED")
    assert got["14"] == ("transcribe", "test_0000", 2, "PENDING")
    assert got["13"] == ("frames", "test_0000", 1, "RUNNING")
    assert [got[str(j)][:3] for j in range(15, 20)] == [
        ("frames", f"test_000{j - 14}", 1) for j in range(15, 20)]
    assert "99" not in got
    cancelled = next(r for r in rows if r.job_id == "12")
    assert cancelled.explanation.endswith("resubmitted as try 2 → job 14, PENDING")
    ingest = tmp_path / "results" / "ingest"
    ingest.mkdir(parents=True)
    (ingest / "test.shards.json").write_text(json.dumps({"num_shards": 8}))
    run = tmp_path / "results" / "train" / "text" / "seed-0"
    (run / "submitit").mkdir(parents=True)
    (run / "job.json").write_text(json.dumps({"job_id": "31", "executor": "slurm"}))
    (run / "submitit" / "31_0_log.err").write_text(
        "step 4/88 (epoch 1) loss 1.9 lr 1e-3 | 1.0 steps/s, 8.0 samples/s | 1m24s left\n"
        "step 12/88 (epoch 1) loss 1.7 lr 1e-3 | 1.0 steps/s, 8.0 samples/s | 1m16s left\n")
    numbers = progress(rows, tmp_path)
    header = progress_text(numbers).splitlines()
    assert header[0].split() == ["progress", "done", "running", "pending", "failed", "of",
                                 "left"]
    by_rule = {line.split()[0]: line.split()[1:] for line in header[1:4]}
    assert by_rule["frames"] == ["0", "1", "5", "0", "8", "-"]  # none finished: no pace yet
    assert by_rule["transcribe"] == ["0", "0", "1", "0", "8", "-"]
    assert by_rule["ingest"] == ["1", "0", "0", "0", "1", "-"]
    assert header[-1] == "train text/seed-0 (job 31): step 12/88, 1m16s left"
    # the same in numbers, for --json
    assert numbers["rules"]["frames"] == {"done": 0, "running": 1, "pending": 5, "failed": 0,
                                          "total": 8, "fraction_done": 0.0, "eta_s": None}
    assert numbers["rules"]["ingest"]["fraction_done"] == 1.0
    assert numbers["training"] == [{"run": "text/seed-0", "job_id": "31", "finished": False,
                                    "step": 12, "steps": 88, "left_s": 76}]
    table = format_table("uuid", rows, progress="\n".join(header))
    assert "→ job 14, PENDING" in table and table.index("progress") < table.index("rule ")


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


def test_status_json_gives_numbers_under_its_schema(tmp_path):
    """Issue 34: `status --json`'s progress was pre-formatted text. It is numbers now, per
    rule (done, running, pending, failed, total, fraction done, seconds left), checked
    against the schema docs/cluster.md documents."""
    import json
    import time

    import jsonschema

    from meldflow.slurm.status_json import STATUS_SCHEMA

    run_record(tmp_path, "uuid-a", time.time() - 600, jobs=["frames"] * 3)
    ingest = tmp_path / "results" / "ingest"
    ingest.mkdir(parents=True)
    (ingest / "train.shards.json").write_text(json.dumps({"num_shards": 4}))
    env = fake_slurm(tmp_path, [job("401", "rule_frames_wildcards_train_0000", "COMPLETED",
                                    elapsed=40),
                                job("402", "rule_frames_wildcards_train_0001", "COMPLETED",
                                    elapsed=20),
                                job("403", "rule_frames_wildcards_train_0002", "RUNNING")], [])
    doc = json.loads(status_cli(tmp_path, env, "--json").stdout)
    jsonschema.validate(doc, STATUS_SCHEMA)
    frames = doc["progress"]["rules"]["frames"]
    assert frames == {"done": 2, "running": 1, "pending": 0, "failed": 0, "total": 4,
                      "fraction_done": 0.5, "eta_s": 60}  # 2 left at 30 s, one at a time
    assert doc["progress"]["fraction_done"] == 0.5 and doc["progress"]["eta_s"] == 60


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
