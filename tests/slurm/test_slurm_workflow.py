"""The workflow on the local SLURM cluster (cluster/local-slurm/up.sh): the whole run, the
README's commands, and what the profile asks of the cluster."""
import json
import os
import shutil
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest
from helpers import (
    BIN,
    REPO,
    copy_preprocessed,
    env_with_venv,
    run_snakemake,
)
from slurm_helpers import (
    RUN,
    readme_command,
    sacct,
    signal_training_once,
    slurm_workdir,
    squeue_ids,
    squeue_running,
    start_snakemake,
    status_once_resubmitted,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.slurm]


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


def test_whole_workflow_on_slurm_matches_local_run(slurm_cluster, trained, hf_home, tmp_path):
    """Shard jobs and a 2-task submitit training job on SLURM; training is signalled mid-run,
    requeued and resumed, and everything still equals the local run."""
    preprocessed, _ = trained  # the local run of the same configuration
    work = slurm_workdir(tmp_path / "slurm", hf_home)
    start = time.strftime("%Y-%m-%dT%H:%M:%S")
    proc = start_snakemake(work, tmp_path / "snakemake.log")
    try:
        signalled = signal_training_once(work, proc)
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
    # Issue 34: the same command again submits nothing, and `meldflow status` had then
    # followed that empty run (no shard job shown): it shows the run that did the work.
    again = start_snakemake(work, tmp_path / "again.log")
    assert again.wait(timeout=300) == 0, (tmp_path / "again.log").read_text()[-3000:]
    assert "Nothing to be done" in (tmp_path / "again.log").read_text()
    status = json.loads(subprocess.run(
        [sys.executable, "-m", "meldflow.cli", "status", "--dir", str(work), "--json"],
        capture_output=True, text=True, check=True).stdout)
    shard_rows = [j for j in status["jobs"] if j["rule"] in ("transcribe", "frames")]
    assert len(shard_rows) >= 10 and status["run_id"] == workflow_jobs[0][1]
    assert "submitted no job (nothing to do)" in status["note"]
    assert status["progress"]["rules"]["frames"]["fraction_done"] == 1.0
    # the README's last cluster command: the HTML report of the cluster run (no job)
    cmd = readme_command("snakemake --report results/report.html")
    assert cmd[0] == ".venv/bin/snakemake"
    report = subprocess.run([str(BIN / "snakemake"), "-s", str(REPO / "Snakefile"), *cmd[1:]],
                            capture_output=True, text=True, env=env_with_venv(), cwd=work)
    assert report.returncode == 0, report.stderr[-3000:]
    assert (work / "results" / "report.html").stat().st_size > 10_000
    check_resources_sized_from_the_run(work, hf_home, tmp_path)


def check_resources_sized_from_the_run(work, hf_home, tmp_path):
    """`meldflow status --resources` after the run: the block it prints, pasted into the
    profile, runs the sample's largest split again with no OOM and no failed job."""
    import yaml
    from slurm_helpers import tries_of

    cmd = readme_command("meldflow status --resources")
    assert cmd[0] == ".venv/bin/meldflow"

    def sized():  # the README's command, in the run's folder
        proc = subprocess.run([str(BIN / "meldflow"), *cmd[1:]], capture_output=True,
                              text=True, env=env_with_venv(), cwd=work)
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        return proc.stdout

    out = sized()
    assert "shard size 24" in out and "sacct samples memory every 2 s" in out
    for rule in ("ingest", "transcribe", "frames", "align"):
        assert any(line.split()[:1] == [rule] and "%" in line for line in out.splitlines())
    block = yaml.safe_load(out.split("default-resources stays for rules not listed):", 1)[1])
    assert block["set-resources"]["transcribe"]["mem_mb"].endswith(" * attempt")
    config = work / "config" / "config.yaml"
    config.write_text(config.read_text().replace("shard_size: 24", "shard_size: 200"))
    assert "WARNING: config/config.yaml now has shard_size 200, but these figures come from " \
           "shards of 24" in sized()
    # pasted into the profile: the sample's shard jobs again, each asking what was printed
    profile = yaml.safe_load((REPO / "cluster" / "slurm" / "config.yaml").read_text())
    profile["set-resources"] = block["set-resources"]
    (tmp_path / "sized" / "cluster" / "slurm").mkdir(parents=True)
    (tmp_path / "sized" / "cluster" / "slurm" / "config.yaml").write_text(
        yaml.safe_dump(profile))
    again = slurm_workdir(tmp_path / "sized" / "work", hf_home, splits=["train"])  # largest
    start = time.strftime("%Y-%m-%dT%H:%M:%S")
    proc = start_snakemake(again, tmp_path / "sized.log", "preprocess",
                           profile=tmp_path / "sized" / "cluster" / "slurm")
    assert proc.wait(timeout=900) == 0, (tmp_path / "sized.log").read_text()[-4000:]
    tries = tries_of(start, again)
    assert len(tries) >= 8 and all(len(seq) == 1 and seq[0][1] == "COMPLETED"
                                    for seq in tries.values()), tries
    asked = {c: seq[0][2] for c, seq in tries.items() if c.startswith("rule_transcribe")}
    mem = int(block["set-resources"]["transcribe"]["mem_mb"].split()[0])
    assert set(asked.values()) == {f"{mem}M"}, asked  # the pasted ask, not the old one


def test_experiments_train_at_once_on_slurm(slurm_cluster, preprocessed, tmp_path):
    """Two experiments on SLURM: two training jobs queued together, running side by side."""
    import yaml

    work = copy_preprocessed(preprocessed, tmp_path / "work")
    cfg_path = work / "config" / "config.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    # 20 epochs (a few seconds of steps): the cancel below must land while a trains, not
    # while it is already saving its results (one epoch is 0.1 s of steps).
    cfg["train"] |= {"modalities": "text", "epochs": 20, "tasks": 1}
    cfg["experiments"] = {"a": None, "b": {"context_turns": 1}}
    cfg_path.write_text(yaml.safe_dump(cfg))
    start = time.strftime("%Y-%m-%dT%H:%M:%S")
    proc = start_snakemake(work, tmp_path / "snakemake.log")
    # Issue 34: a training job cancelled under the profile was reported "not tried again"
    # while Snakemake had resubmitted it, and was gone from the history after the run.
    job_files = [work / "results" / "train" / e / "seed-0" / "job.json" for e in ("a", "b")]
    wait_until(lambda: all(f.is_file() for f in job_files) and all(
        json.loads(f.read_text())["job_id"] in squeue_running("") for f in job_files),
        600, "both training jobs running")
    ids = [json.loads(f.read_text())["job_id"] for f in job_files]
    subprocess.run(["scancel", ids[0]], check=True)
    live = status_once_resubmitted(work, ids[0], proc)
    cancelled = next(j for j in live["jobs"] if j["job_id"] == ids[0])
    assert cancelled["state"] == "CANCELLED" and cancelled["attempt"] == 1
    assert "resubmitted as try 2 → job" in cancelled["explanation"], cancelled
    rc = proc.wait(timeout=900)
    text = (tmp_path / "snakemake.log").read_text()
    assert rc == 0, text[-4000:]
    times = {j[0]: j[1:] for j in sacct("-S", start, "-o", "JobID,Start,End,State")}
    (s1, e1, st1), (s2, e2, st2) = times[ids[0]], times[ids[1]]
    assert st1.startswith("CANCELLED") and st2 == "COMPLETED"
    # Both ran at once (squeue said so above); sacct's whole seconds agree, though the
    # cancelled try may end in the second it started.
    assert max(s1, s2) <= min(e1, e2), times
    assert "a" in (work / "results" / "evaluate" / "summary.txt").read_text()
    tries = json.loads(job_files[0].read_text())["tries"]
    assert [t["job_id"] for t in tries][0] == ids[0] and len(tries) == 2
    after = json.loads(subprocess.run(
        [sys.executable, "-m", "meldflow.cli", "status", "--dir", str(work), "--json"],
        capture_output=True, text=True, check=True).stdout)
    history = [(j["attempt"], j["job_id"], j["state"]) for j in after["jobs"]
               if j["rule"] == "train a/seed-0 (submitit)"]
    assert history == [(1, ids[0], "CANCELLED"), (2, tries[1]["job_id"], "COMPLETED")]


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
    cmd = readme_command("--profile cluster/slurm --configfile config/ablation.yaml")
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
        wait_until(queued, 600, "three training runs submitted")
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
        wait_until(lambda: not squeue_ids(), 120, "the queue to empty")


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
