"""Every file meldflow writes is atomic and gets the mode the umask gives a new file."""
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pyarrow as pa
import pytest
from helpers import BIN, SAMPLE, env_with_venv, need_tool

from meldflow.model_cache.snapshots import cached_snapshot
from meldflow.model_cache.stage import LOCK_NAME, stage_whisper
from meldflow.settings import Settings

WHISPER = "Systran/faster-whisper-tiny.en"
NOBODY = 65534


def _shared_folder(tag: str) -> Path:
    """A folder outside pytest's private (0700) temporary root, writable by anyone."""
    shared = Path("/tmp") / f"meldflow-shared-{os.getpid()}-{tag}"
    shutil.rmtree(shared, ignore_errors=True)
    shared.mkdir()
    shared.chmod(0o1777)
    return shared


def _other_user_reads(path: Path) -> bool:
    proc = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}",
                           "--clear-groups", "cat", str(path)], capture_output=True)
    return proc.returncode == 0


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664)])
def test_written_files_honour_the_umask(umask, mode):
    from meldflow.storage import write_table, write_text

    shared = _shared_folder(f"{umask:o}")
    old = os.umask(umask)
    try:
        stage_whisper(shared / "hf_home", "tiny.en", source="package")
        write_table(pa.table({"a": [1]}), shared / "results" / "x.parquet")
        write_text("hello", shared / "results" / "x.txt")
    finally:
        os.umask(old)
    try:
        snap = cached_snapshot(shared / "hf_home", WHISPER, "main")
        files = [shared / "hf_home" / LOCK_NAME,
                 shared / "hf_home" / "hub" / "models--Systran--faster-whisper-tiny.en" / "refs"
                 / "main", (snap / "model.bin").resolve(), shared / "results" / "x.parquet",
                 shared / "results" / "x.txt"]
        for f in files:
            assert stat.S_IMODE(f.stat().st_mode) == mode, f
        if os.geteuid() == 0 and shutil.which("setpriv"):
            # another user (nobody) reads what root wrote: the cache and the results
            assert all(_other_user_reads(f) for f in files)
    finally:
        shutil.rmtree(shared, ignore_errors=True)


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_saved_model_honours_the_umask(florence_home, tmp_path, umask):
    """best/model.safetensors and heads.safetensors were 0600 (safetensors' own mode)."""
    from meldflow.training.classifier import EmotionClassifier, load_florence
    from meldflow.training.identity import florence_snapshot

    florence, processor = load_florence(florence_snapshot(Settings(hf_home=str(florence_home)))[0])
    old = os.umask(umask)
    try:
        EmotionClassifier(florence).save(processor, tmp_path / "best", {"x": 1}, {"y": 2})
    finally:
        os.umask(old)
    files = [p for p in (tmp_path / "best").rglob("*") if p.is_file()]
    assert {"model.safetensors", "heads.safetensors", "preprocessing.json"} <= \
        {p.name for p in files}
    assert {oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {oct(0o666 & ~umask)}
    assert oct(stat.S_IMODE((tmp_path / "best").stat().st_mode)) == oct(0o777 & ~umask)


def _as_colleague(command: list[str]) -> list[str]:
    """``command`` run as ``nobody`` when we are root (setpriv drops every capability), as
    ourselves otherwise."""
    if os.geteuid() != 0:
        return command
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *command]


@pytest.mark.integration
def test_every_writer_honours_the_umask_as_a_colleague_would_run_it(tmp_path):
    """Every meldflow command that writes, run as a non-root user under umask 002 (a group
    project folder): every file it leaves is 0664, every folder 0775."""
    need_tool("ffmpeg")
    shared = _shared_folder("writers")
    home = _shared_folder("home")  # the user's own caches, outside what is checked
    env = env_with_venv() | {"HOME": str(home), "MPLCONFIGDIR": str(home / "mpl"),
                             "XDG_CACHE_HOME": str(home / "cache"), "TQDM_DISABLE": "1"}
    hf, res = shared / "hf_home", shared / "results"
    rows, aligned = res / "ingest" / "dev.parquet", res / "aligned" / "dev" / "shard-0000.parquet"
    run_dir = res / "train" / "default" / "seed-0"
    clip = str(SAMPLE / "dev_splits_complete" / "dia0_utt0.mp4")
    shard = ["--rows", str(rows), "--shard", "0"]
    steps = [
        ["stage", "--hf-home", str(hf), "--models", "whisper,florence",
         "--source", "package", "--meld-dir", str(SAMPLE)],
        ["ingest", "--meld-dir", str(SAMPLE), "--split", "dev", "--shard-size", "1000",
         "--out", str(rows)],
        ["frames", *shard, "--out", str(res / "frames.parquet"), "--frames-per-utterance", "2",
         "--frame-size", "64"],
        ["transcribe", *shard, "--out", str(res / "asr.parquet"), "--hf-home", str(hf),
         "--whisper-device", "cpu"],
        ["align", *shard, "--transcripts", str(res / "asr.parquet"), "--frames",
         str(res / "frames.parquet"), "--out", str(aligned)],
        ["manifest", "--ingest", str(rows), "--aligned", str(aligned), "--out",
         str(res / "manifest" / "dev.parquet")],
        ["summary", "--manifests", str(res / "manifest" / "dev.parquet"), "--unused",
         str(res / "ingest" / "dev.unused.tsv"), "--out", str(res / "manifest" / "summary.tsv"),
         "--plot", str(res / "manifest" / "summary.png"), "--audit",
         str(res / "manifest" / "audit.tsv")],
        ["train", "--out", str(run_dir), "--hf-home", str(hf), "--train-shards", str(aligned),
         "--dev-shards", str(aligned), "--modalities", "text+vision", "--epochs", "1",
         "--checkpoint-every", "1", "--executor", "debug"],
        ["evaluate", "--runs", str(run_dir), "--out", str(res / "evaluate")],
        ["predict", "--model", str(run_dir / "best"), "--clips", clip, "--text", "Joey: Hi.",
         "--out", str(res / "predict.json")],
    ]
    try:
        for args in steps:
            proc = subprocess.run(_as_colleague([str(BIN / "meldflow"), *args]), env=env,
                                  umask=0o002, capture_output=True, text=True)
            assert proc.returncode == 0, (args[0], proc.stderr[-3000:])
        wrong = []
        for p in [shared, *shared.rglob("*")]:
            if p.is_symlink():
                continue
            want = 0o1777 if p == shared else 0o775 if p.is_dir() else 0o664
            if stat.S_IMODE(p.stat().st_mode) != want:
                wrong.append(f"{oct(stat.S_IMODE(p.stat().st_mode))} {p.relative_to(shared)}")
        assert not wrong, "\n".join(wrong)
        # what the commands wrote, the checkpoint and the model included
        written = {p.relative_to(shared).as_posix() for p in shared.rglob("*") if p.is_file()}
        for name in ("results/train/default/seed-0/best/model.safetensors",
                     "results/train/default/seed-0/best/heads.safetensors",
                     "results/train/default/seed-0/checkpoint/state.pt",
                     "results/train/default/seed-0/checkpoint/state.json",
                     "results/train/default/seed-0/run.json",
                     "results/evaluate/metrics.tsv", "results/manifest/summary.png",
                     "results/predict.json", "hf_home/meldflow-stage.lock.json"):
            assert name in written, name
        assert any(n.startswith("results/train/default/seed-0/tensorboard/events")
                   for n in written)
    finally:
        shutil.rmtree(shared, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)

