import io
import subprocess

import pytest
from conftest import SAMPLE, need_tool
from PIL import Image

from meldflow.frames import extract_frames, split_jpegs, target_times
from meldflow.probe import ClipError, clip_info, read_mp4_info

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
    res = extract_frames(TRAIN / "dia2_utt1.mp4")
    assert res.status == "unreadable_video" and res.frames == []


def test_frames_are_k_jpegs_spread_over_the_clip():
    need_tool("ffmpeg")
    clip = TRAIN / "dia0_utt0.mp4"
    res = extract_frames(clip, k=5, size=128)
    assert res.status == "ok" and len(res.frames) == 5
    for jpg in res.frames:
        img = Image.open(io.BytesIO(jpg))
        assert img.format == "JPEG" and max(img.size) == 128
        assert img.size == (128, 72)  # aspect ratio kept
    assert res.times == sorted(res.times)
    frame_step = 1 / 15
    for got, want in zip(res.times, target_times(res.duration, 5), strict=True):
        assert want - 1e-3 <= got <= want + frame_step + 1e-3
    # background colour follows the label: the sample's first train row is 'sadness' (blue)
    r, g, b = Image.open(io.BytesIO(res.frames[0])).convert("RGB").resize((1, 1)).getpixel((0, 0))
    assert b > r and b > g


def make_clip(path, seconds: float):
    """A small silent H.264 test-pattern clip of ``seconds`` at 5 fps."""
    subprocess.run([need_tool("ffmpeg"), "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i",
                    f"testsrc=s=64x36:r=5:d={seconds}", "-c:v", "libx264", "-pix_fmt",
                    "yuv420p", str(path)], check=True)
    return path


def test_long_clip_is_capped(tmp_path):
    clip = make_clip(tmp_path / "long.mp4", 40)
    res = extract_frames(clip, k=4, size=64, max_clip_seconds=8)
    assert res.status == "ok" and "clip_capped" in res.flags
    assert res.duration == pytest.approx(40, abs=0.5)
    assert max(res.times) < 8 and len(res.frames) == 4


def test_short_clip_repeats_frames(tmp_path):
    clip = make_clip(tmp_path / "short.mp4", 0.4)
    res = extract_frames(clip, k=8, size=64)
    assert res.status == "ok" and len(res.frames) == 8
    assert len(set(res.frames)) <= 2


def test_split_jpegs():
    a, b = b"\xff\xd8abc\xff\xd9", b"\xff\xd8de\xff\x00f\xff\xd9"
    assert split_jpegs(a + b) == [a, b]
    assert split_jpegs(b"") == []
