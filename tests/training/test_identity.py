"""A run's identity: what it covers, and a changed setting that starts a fresh run."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import (
    TRAIN_CSV,
    env_with_venv,
    train_config,
)

from meldflow import MeldflowError
from meldflow.training.train_options import LaunchConfig

_cfg = train_config


def _heads(run):
    from safetensors.torch import load_file

    return load_file(str(Path(run) / "best" / "heads.safetensors"))


def test_changed_setting_starts_a_fresh_run_and_keeps_the_old_one(florence_home, tmp_path):
    from meldflow.training.launch import launch

    out = tmp_path / "train"
    first = launch(_cfg(florence_home, out), LaunchConfig(executor="debug"))
    before = _heads(out)
    # The user adds lr: 0.5. Before, this "resumed" from the finished checkpoint: the same
    # weights, with metrics.json claiming lr 0.5.
    second = launch(_cfg(florence_home, out, lr=0.5), LaunchConfig(executor="debug"))
    assert second["run"]["options"]["lr"] == 0.5 and second["config"]["lr"] == 0.5
    assert second["run"]["identity"] != first["run"]["identity"]
    assert any(not (before[k] == v).all() for k, v in _heads(out).items())
    archived = list((tmp_path / "train-archive").iterdir())
    assert len(archived) == 1 and archived[0].name.endswith(first["run"]["identity"][:12])
    old = json.loads((archived[0] / "run.json").read_text())
    assert old["digest"] == first["run"]["identity"] and "dev" in old["metrics"]
    assert (archived[0] / "checkpoint" / "state.pt").is_file()
    # Changing modalities ended in a traceback about parameter groups; now a fresh run.
    third = launch(_cfg(florence_home, out, lr=0.5, context_turns=2),
                   LaunchConfig(executor="debug"))
    assert third["run"]["options"]["context_turns"] == 2
    assert len(list((tmp_path / "train-archive").iterdir())) == 2
    # The same options again: nothing is redone.
    stamp = (out / "metrics.json").stat().st_mtime_ns
    assert launch(_cfg(florence_home, out, lr=0.5, context_turns=2),
                  LaunchConfig(executor="debug"))["run"] == third["run"]
    assert (out / "metrics.json").stat().st_mtime_ns == stamp
    # metrics.json says what made it
    assert third["run"]["model"]["files"]["model.safetensors"]
    assert len(third["run"]["data"]["train"][0]) == 64
    assert third["versions"]["torch"] and third["versions"]["meldflow"]
    assert third["hardware"]["cpus"] >= 1 and third["hardware"]["world_size"] == 1
    assert third["git"] is None or len(third["git"]["commit"]) == 40


def test_identity_covers_data_and_model_not_paths_or_workers(florence_home, tmp_path):
    from meldflow.training.identity import identity_of

    base = identity_of(_cfg(florence_home, tmp_path / "a"), 1)
    assert identity_of(_cfg(florence_home, tmp_path / "b", loader_workers=2,
                            checkpoint_every=7), 1)["digest"] == base["digest"]
    changed_csv = tmp_path / "train_sent_emo.csv"
    changed_csv.write_text(Path(TRAIN_CSV).read_text().replace("sadness", "anger", 1))
    assert identity_of(_cfg(florence_home, tmp_path / "c", train_csv=str(changed_csv)),
                       1)["digest"] != base["digest"]
    # streams=1 fixes the batches whatever the world size; streams=0 means one per rank
    assert identity_of(_cfg(florence_home, tmp_path / "d"), 2)["digest"] == base["digest"]
    auto = identity_of(_cfg(florence_home, tmp_path / "e", streams=0), 1)
    assert auto["digest"] == base["digest"]
    assert identity_of(_cfg(florence_home, tmp_path / "f", streams=0), 2)["digest"] != \
        base["digest"]


def test_damaged_aligned_shard_is_named(preprocessed, florence_home, tmp_path):
    shard = sorted((preprocessed / "results" / "aligned" / "train").glob("*.parquet"))[0]
    cut = tmp_path / "shard-0000.parquet"
    cut.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    proc = subprocess.run(
        [sys.executable, "-m", "meldflow.cli", "train", "--out", str(tmp_path / "run"),
         "--hf-home", str(florence_home), "--train-shards", str(cut), "--executor", "debug"],
        capture_output=True, text=True, env=env_with_venv())
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert str(cut) in proc.stderr and "rebuild" in proc.stderr


def test_a_damaged_run_record_is_archived_not_a_blocked_rerun(florence_home, tmp_path, caplog):
    """A truncated run.json blocked every rerun with a JSONDecodeError traceback; now the
    folder is taken as another run's, archived whole with a warning, and training runs."""
    from meldflow.training.launch import launch

    out = tmp_path / "train"
    first = launch(_cfg(florence_home, out), LaunchConfig(executor="debug"))
    text = (out / "run.json").read_text()
    (out / "run.json").write_text(text[: len(text) // 2])
    with caplog.at_level("WARNING"):
        again = launch(_cfg(florence_home, out), LaunchConfig(executor="debug"))
    assert again["run"]["identity"] == first["run"]["identity"]
    assert any("run.json is damaged" in r.getMessage() for r in caplog.records)
    archived = list((tmp_path / "train-archive").iterdir())
    assert len(archived) == 1 and (archived[0] / "run.json").read_text() == text[: len(text) // 2]
    assert json.loads((out / "run.json").read_text())["digest"] == first["run"]["identity"]


def test_the_model_is_hashed_once_per_job_and_a_restaged_one_is_caught(florence_home, tmp_path,
                                                                     monkeypatch):
    """The snapshot was hashed file by file at launch, on rank 0 and on every other rank;
    now the verified snapshot travels with the job, and only its links are checked."""
    from meldflow.model_cache import snapshots
    from meldflow.training.identity import florence_snapshot, run_snapshot
    from meldflow.training.launch import launch

    hashed = []
    real = snapshots.verify_snapshot
    monkeypatch.setattr(snapshots, "verify_snapshot", lambda snap: hashed.append(snap)
                        or real(snap))
    cfg = _cfg(florence_home, tmp_path / "run", max_steps=1, dev_csv=None)
    launch(cfg, LaunchConfig(executor="debug"))
    assert len(hashed) == 1
    identity = json.loads((tmp_path / "run" / "run.json").read_text())
    snap = run_snapshot(identity, florence_home)
    assert snap == florence_snapshot(cfg)[0]
    # A file re-linked to another blob after launch (the model re-staged) is an error.
    home = tmp_path / "home"
    shutil.copytree(florence_home, home, symlinks=True)
    snap = run_snapshot(identity, home)
    config = snap / "config.json"
    other = config.resolve().with_name("0" * 64)
    other.write_bytes(config.resolve().read_bytes())
    config.unlink()
    config.symlink_to(other)
    with pytest.raises(MeldflowError, match="changed after the job was launched"):
        run_snapshot(identity, home)
