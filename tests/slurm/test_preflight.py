"""The preflight: `meldflow check` and the workflow's start on a site-like local cluster."""
import os
import re
import shutil
import subprocess
import time

import pytest
import yaml
from helpers import BIN, REPO, env_with_venv, make_workdir

from meldflow import MeldflowError
from meldflow.slurm.preflight import Ask, Partition, asks_from_profile, problems

# Tests that use the cluster are marked slurm by conftest.py; the rest are fast.


def test_each_mismatch_is_one_line_naming_the_setting():
    parts = {"cpu": Partition("cpu", True, 240, [(0, 8000, 4)]),
             "gpu": Partition("gpu", False, 1440, [(2, 64000, 16)])}
    asks = [Ask("shard jobs", "profile", partition="gpux", account="x"),
            Ask("rule frames", "profile set-resources", partition="gpux"),
            Ask("training t/seed-0", "train.slurm", partition="gpu", account="nosuch",
                minutes=3000, gpus_per_node=4, mem_mb=128000, cpus_per_node=32),
            Ask("rule align", "profile", minutes=60, mem_mb=2000)]  # the default partition
    lines = problems(asks, parts, {"meldflow"})
    user = lines[1].split("user=")[1]
    assert lines == [
        "shard jobs: partition 'gpux' (profile) does not exist here; partitions: cpu, gpu "
        "(sinfo)",
        "shard jobs: account 'x' (profile) is not one this user may use: meldflow "
        "(sacctmgr show assoc user=" + user,
        "training t/seed-0: account 'nosuch' (train.slurm) is not one this user may use: "
        "meldflow (sacctmgr show assoc user=" + user,
        "training t/seed-0: a time limit of 3000 min (train.slurm) is over partition gpu's "
        "MaxTime of 1440 min",
        "training t/seed-0: GPUs per node 4 (train.slurm) is more than any node of partition "
        "gpu has (2)",
        "training t/seed-0: memory per node 128000 MB (train.slurm) is more than any node of "
        "partition gpu has (64000 MB)",
        "training t/seed-0: CPUs per node 32 (train.slurm) is more than any node of partition "
        "gpu has (16)"]


def _profile(tmp_path, default: dict, rules: dict | None = None):
    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump({"retries": 2, "default-resources": default,
                                    "set-resources": rules or {}}))
    return path


def test_a_profile_read_as_snakemake_reads_it(tmp_path):
    """`runtime: "2h"` (Snakemake: 120 min) was a TypeError traceback, and `mem: 100GB`
    without mem_mb was never compared with the nodes."""
    path = _profile(tmp_path, {"runtime": "2h", "mem": "100GB", "slurm_partition": "cpu"},
                    {"frames": {"runtime": "1.5h", "mem_mb": "2000 * attempt"},
                     "transcribe": {"mem": "'4 GB'", "runtime": "45"}})
    shard, frames, transcribe = asks_from_profile(str(path))
    assert (shard.minutes, shard.mem_mb) == (120, 100_000)
    assert (frames.minutes, frames.mem_mb) == (90, 2000)
    assert (transcribe.minutes, transcribe.mem_mb) == (45, 4000)
    assert asks_from_profile(str(path), last_try=True)[1].mem_mb == 6000
    parts = {"cpu": Partition("cpu", True, 240, [(0, 8000, 4)])}
    assert problems([shard], parts, None) == [
        f"shard jobs: memory per node 100000 MB ({path} default-resources) is more than any "
        f"node of partition cpu has (8000 MB)"]


def test_a_value_a_rule_inherits_is_blamed_on_the_default(tmp_path):
    """A too-long default runtime was blamed on `set-resources: transcribe` and `frames`,
    which set none (and said once for each)."""
    path = _profile(tmp_path, {"runtime": 500, "slurm_partition": "cpu"},
                    {"transcribe": {"mem_mb": 4000}, "frames": {"runtime": 300}})
    parts = {"cpu": Partition("cpu", True, 240, [(0, 8000, 4)])}
    assert problems(asks_from_profile(str(path)), parts, None) == [
        f"shard jobs: a time limit of 500 min ({path} default-resources) is over partition "
        f"cpu's MaxTime of 240 min",
        f"rule frames: a time limit of 300 min ({path} set-resources: frames) is over "
        f"partition cpu's MaxTime of 240 min"]


@pytest.mark.parametrize("key, value, message", [
    ("runtime", "two hours", "runtime 'two hours' is not a time (minutes, or e.g. \"2h\")"),
    ("mem", "lots", "mem 'lots' is not a size (e.g. \"16GB\")"),
])
def test_a_profile_value_snakemake_would_refuse_is_named(tmp_path, key, value, message):
    path = _profile(tmp_path, {key: value})
    with pytest.raises(MeldflowError, match=re.escape(f"{path} default-resources: {message}")):
        asks_from_profile(str(path))


def _misconfigured(root, hf_home):
    """A project folder whose profile and train: ask for what the local cluster lacks."""
    work = make_workdir(root, hf_home, splits=["train", "dev"])
    cfg = yaml.safe_load((work / "config" / "config.yaml").read_text())
    cfg["train"]["time_min"] = 3000
    cfg["train"]["slurm"] |= {"partition": "gpu", "gpus_per_node": 4}
    (work / "config" / "config.yaml").write_text(yaml.safe_dump(cfg))
    profile = yaml.safe_load((REPO / "cluster" / "slurm" / "config.yaml").read_text())
    profile["default-resources"] |= {"slurm_partition": "gpux", "slurm_account": "nosuch"}
    # A shard rule's own ask: its jobs are known only after ingest (a checkpoint).
    profile["set-resources"]["transcribe"] |= {"slurm_partition": "cpu", "runtime": 500}
    # A QOS the account may not use: only sbatch --test-only knows it.
    profile["set-resources"]["frames"] |= {"slurm_partition": "cpu", "slurm_account":
                                           "meldflow", "qos": "normal"}
    profile["jobs"] = 100  # the site's QOS allows 20 submitted jobs a user
    (work / "cluster" / "slurm").mkdir(parents=True)
    (work / "cluster" / "slurm" / "config.yaml").write_text(yaml.safe_dump(profile))
    return work


def test_meldflow_check_names_every_problem_of_a_misconfigured_profile(slurm_cluster,
                                                                       tmp_path):
    """The README's `meldflow check`, on a profile with a partition and an account the
    cluster lacks, training asking 4 GPUs a node and 50 hours, and no staged model."""
    work = _misconfigured(tmp_path / "work", tmp_path / "empty_hf")
    start = time.monotonic()
    proc = subprocess.run([str(BIN / "meldflow"), "check"], capture_output=True, text=True,
                          cwd=work, env=env_with_venv())
    assert time.monotonic() - start < 10
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    out = proc.stdout
    assert "shard jobs: partition 'gpux' (cluster/slurm/config.yaml default-resources) does " \
           "not exist here; partitions: cpu, gpu (sinfo)" in out
    assert "shard jobs: account 'nosuch' (cluster/slurm/config.yaml default-resources) is " \
           "not one this user may use: meldflow" in out  # (and root's own, on this cluster)
    assert "training default/seed-0: a time limit of 3000 min (train.time_min) is over " \
           "partition gpu's MaxTime of 1440 min" in out
    assert "GPUs per node 4 (train.slurm" in out and "partition gpu has (2)" in out
    assert "rule transcribe: a time limit of 500 min (cluster/slurm/config.yaml " \
           "set-resources: transcribe) is over partition cpu's MaxTime of 240 min" in out
    # the site's QOS (issue 36): its submit limit, its MaxWall, and what sbatch refuses
    assert "this run may have 100 (cluster/slurm/config.yaml jobs) and 1 (training runs, at " \
           "most local-cores 4 at once) jobs submitted at once: 101 is over QOS site's " \
           "MaxSubmitJobsPU of 20" in out and "set jobs: 19 or fewer" in out
    assert "training default/seed-0: a time limit of 3000 min (train.time_min) is over QOS " \
           "site's MaxWall of 720 min: the job would wait forever" in out
    assert "rule frames: sbatch --test-only refuses what it asks (cluster/slurm/config.yaml " \
           "set-resources: frames): allocation failure: Invalid qos specification" in out
    assert "hf_home: Whisper model" in out and "meldflow stage" in out
    assert "problem(s): fix them before submitting" in proc.stderr


def test_the_workflow_stops_before_any_job_on_a_misconfigured_profile(slurm_cluster,
                                                                      tmp_path, hf_home):
    """Under the SLURM profile the same check runs at the start: nothing is submitted. A
    model that is not staged and that this host cannot stage is one of the problems."""
    work = _misconfigured(tmp_path / "work", hf_home)
    cfg = yaml.safe_load((work / "config" / "config.yaml").read_text())
    cfg["whisper_model"] = "small.en"  # not in hf_home, and offline only tiny.en is staged
    (work / "config" / "config.yaml").write_text(yaml.safe_dump(cfg))
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 3600))
    before = subprocess.run(["sacct", "-n", "-X", "-o", "JobID", "-S", since],
                            capture_output=True, text=True).stdout.split()
    start = time.monotonic()
    proc = subprocess.run(
        [str(BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "-d", str(work),
         "--profile", str(work / "cluster" / "slurm")],
        capture_output=True, text=True, cwd=work, env=env_with_venv() | {"HF_HUB_OFFLINE": "1"})
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0, text[-3000:]
    assert "nothing was submitted" in text and "partition 'gpux'" in text, text[-3000:]
    assert "GPUs per node 4" in text
    assert "rule transcribe: a time limit of 500 min (the profile's resources) is over " \
           "partition cpu's MaxTime of 240 min" in text
    assert "over QOS site's MaxSubmitJobsPU of 20" in text
    assert "hf_home: Whisper model Systran/faster-whisper-small.en is not in" in text
    assert "Florence-2" not in text  # the tiny one: the stage rule builds it here
    assert time.monotonic() - start < 60
    after = subprocess.run(["sacct", "-n", "-X", "-o", "JobID", "-S", since],
                           capture_output=True, text=True).stdout.split()
    assert after == before
    assert not list((work / "results").rglob("*.parquet")) if (work / "results").exists() \
        else True


def test_the_shipped_profile_passes_on_the_local_cluster(slurm_cluster, tmp_path, hf_home):
    """The profile's EDIT lines name the local cluster's partition and account."""
    from meldflow.model_cache.stage import stage_florence

    stage_florence(hf_home)
    work = make_workdir(tmp_path / "work", hf_home)
    shutil.copytree(REPO / "cluster" / "slurm", work / "cluster" / "slurm")
    env = env_with_venv()
    proc = subprocess.run([str(BIN / "meldflow"), "check"], capture_output=True, text=True,
                          cwd=work, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert os.path.exists(work / "cluster" / "slurm" / "config.yaml")


def test_a_run_under_a_tight_submit_limit_completes(slurm_cluster, tmp_path, hf_home):
    """Account meldflow-tight's QOS allows 1 submitted job a user; the run has two shard
    jobs ready at once (transcribe and frames). With the profile's jobs: 16 the check
    refuses it; with jobs: 1 it completes, never more than 1 job submitted at a time, none
    refused, lost or failed."""
    from slurm_helpers import start_snakemake

    work = make_workdir(tmp_path / "work", hf_home, splits=["dev"])
    profile = yaml.safe_load((REPO / "cluster" / "slurm" / "config.yaml").read_text())
    profile["default-resources"]["slurm_account"] = "meldflow-tight"
    (work / "cluster" / "slurm").mkdir(parents=True)
    path = work / "cluster" / "slurm" / "config.yaml"
    path.write_text(yaml.safe_dump(profile))
    check = subprocess.run([str(BIN / "meldflow"), "check"], capture_output=True, text=True,
                           cwd=work, env=env_with_venv())
    assert check.returncode == 2 and "16 (cluster/slurm/config.yaml jobs) jobs submitted at " \
        "once: 16 is over QOS tight's MaxSubmitJobsPU of 1" in check.stdout, check.stdout
    profile["jobs"] = 1
    path.write_text(yaml.safe_dump(profile))
    start = time.strftime("%Y-%m-%dT%H:%M:%S")
    proc = start_snakemake(work, tmp_path / "run.log", "preprocess",
                           profile=work / "cluster" / "slurm")
    assert proc.wait(timeout=900) == 0, (tmp_path / "run.log").read_text()[-4000:]
    out = subprocess.run(["sacct", "-X", "-P", "-n", "-S", start, "-o",
                          "JobIDRaw,State,Submit,End,Account,WorkDir%400"],
                         capture_output=True, text=True, check=True).stdout
    jobs = [r.split("|") for r in out.splitlines() if r.endswith(str(work))]
    assert len(jobs) >= 5 and {j[1] for j in jobs} == {"COMPLETED"}, jobs
    assert {j[4] for j in jobs} == {"meldflow-tight"}
    events = sorted([(j[2], 1) for j in jobs] + [(j[3], -1) for j in jobs],
                    key=lambda e: (e[0], e[1]))
    at_once = peak = 0
    for _, step in events:
        at_once += step
        peak = max(peak, at_once)
    assert peak == 1, peak  # one at a time, though two were ready
    assert "Job violates accounting/QOS policy" not in (tmp_path / "run.log").read_text()
