"""The workflow on a real one-node SLURM cluster with accounting (cluster/local-slurm/up.sh)."""

import json
import shutil
import subprocess

import pyarrow.parquet as pq
import pytest
from conftest import IN_CI, REPO, make_workdir, run_snakemake

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


def test_whole_workflow_on_slurm_matches_local_run(slurm_cluster, trained, hf_home, tmp_path):
    preprocessed, _ = trained  # the local run of the same configuration
    work = make_workdir(tmp_path / "slurm", hf_home)
    (work / "cluster" / "slurm").mkdir(parents=True)
    shutil.copy(REPO / "cluster" / "slurm" / "workflow-overrides.yaml",
                work / "cluster" / "slurm")
    start = subprocess.run(["date", "+%Y-%m-%dT%H:%M:%S"], capture_output=True,
                           text=True).stdout.strip()
    proc = run_snakemake(work, "--profile", str(REPO / "cluster" / "slurm"))
    assert "Florence-2 results" in proc.stdout + proc.stderr
    jobs = sacct("-S", start, "-o", "JobID,JobName%60,State,NTasks,AllocCPUS")
    names = {j[1] for j in jobs}
    workflow_jobs = [j for j in jobs if j[1] != "submitit"]
    assert len(workflow_jobs) >= 15 and all(j[2] == "COMPLETED" for j in jobs), jobs
    assert len({j[1] for j in workflow_jobs}) == 1  # one run, one UUID as the job name
    assert "submitit" in names
    train_job = json.loads((work / "results" / "train" / "job.json").read_text())
    assert train_job["executor"] == "slurm"
    assert any(j[0] == train_job["job_id"] and j[2] == "COMPLETED" for j in jobs)
    # Same shards and the same metrics as the local run of the same configuration.
    for split in ("train", "dev", "test"):
        for local in sorted((preprocessed / "results" / "aligned" / split).glob("*.parquet")):
            remote = work / "results" / "aligned" / split / local.name
            assert pq.read_table(remote).equals(pq.read_table(local)), remote
    assert (work / "results" / "evaluate" / "metrics.tsv").read_text() == \
        (preprocessed / "results" / "evaluate" / "metrics.tsv").read_text()
