"""Clip faults are decided once (meldflow.preprocess.probe) and agree in every step."""
import os
import shutil
import subprocess
from pathlib import Path

import pyarrow as pa
import pytest
from helpers import (
    SAMPLE,
    need_tool,
    whisper_settings,
)

from meldflow.preprocess.frames import extract_frames
from meldflow.preprocess.probe import ClipError, clip_info, read_mp4_info

TRAIN = SAMPLE / "train_splits"


def ffprobe_duration(path) -> float:
    out = subprocess.run([need_tool("ffprobe"), "-v", "error", "-show_entries",
                          "format=duration", "-of", "csv=p=0", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return float(out)


def test_mp4_header_reader_matches_ffprobe():
    for clip in sorted(TRAIN.glob("dia1_utt*.mp4")):
        info = read_mp4_info(clip)
        assert info.has_video and info.has_audio
        assert info.duration == pytest.approx(ffprobe_duration(clip), abs=0.1)
    silent = SAMPLE / "output_repeated_splits_test" / "dia2_utt3.mp4"
    assert clip_info(silent).has_audio is False


def test_truncated_and_empty_clips_are_reported():
    with pytest.raises(ClipError, match="no moov atom"):
        read_mp4_info(TRAIN / "dia2_utt1.mp4")
    with pytest.raises(ClipError, match="empty"):
        read_mp4_info(TRAIN / "dia4_utt2.mp4")
    res = extract_frames(TRAIN / "dia2_utt1.mp4", 8, 256, 30.0)
    assert res.status == "unreadable_video" and res.frames == []


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
    from meldflow.preprocess.frames import frames_for_rows
    from meldflow.preprocess.ingest import ingest_split
    from meldflow.preprocess.transcribe import Transcriber, transcribe_rows

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
    settings = whisper_settings(hf_home, frames_per_utterance=4, frame_size=64)
    frames = frames_for_rows(unchecked, settings).to_pylist()
    asr = transcribe_rows(unchecked, Transcriber(settings)).to_pylist()
    for f, a in zip(frames, asr, strict=True):
        key = (f["dialogue_id"], f["utterance_id"])
        if key in want:
            assert f["frame_status"] == a["asr_status"] == want[key][0]
            assert want[key][1] in f["frame_reason"] and want[key][1] in a["asr_reason"]


def test_unreadable_clip_is_a_status(tmp_path, monkeypatch):
    """Mode 000 as a non-root user: open() raises PermissionError (root reads anything,
    so the error is injected where the check opens the file)."""
    from meldflow.preprocess import probe
    from meldflow.preprocess.frames import extract_frames

    clip = tmp_path / "dia0_utt0.mp4"
    shutil.copy(SAMPLE / "train_splits" / "dia0_utt0.mp4", clip)
    clip.chmod(0)
    if os.geteuid() != 0:  # the real thing
        res = extract_frames(clip, 8, 256, 30.0)
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


def test_duration_far_from_the_csv_is_flagged():
    from meldflow.preprocess.probe import duration_flag

    assert duration_flag(3.0, 10.0, 12.9) is None
    assert "clip is 270.00 s" in duration_flag(270.0, 10.0, 13.0)  # MELD's mis-cut clips
    assert duration_flag(3.0, 10.0, 9.0) is None  # bad timestamps are their own flag
