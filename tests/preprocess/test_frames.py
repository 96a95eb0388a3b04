"""Frame extraction (meldflow.preprocess.frames) with real ffmpeg: K frames at their times,
a long clip capped."""
import io
import subprocess

import pytest
from helpers import SAMPLE, need_tool
from PIL import Image

from meldflow.preprocess.frames import extract_frames, split_jpegs, target_times

TRAIN = SAMPLE / "train_splits"


def test_frames_are_k_jpegs_spread_over_the_clip():
    need_tool("ffmpeg")
    clip = TRAIN / "dia0_utt0.mp4"
    res = extract_frames(clip, frames_per_utterance=5, frame_size=128,
                         max_clip_seconds=30.0)
    assert res.status == "ok" and len(res.frames) == 5
    for jpg in res.frames:
        img = Image.open(io.BytesIO(jpg))
        assert img.format == "JPEG" and max(img.size) == 128
        assert img.size == (128, 72)  # aspect ratio kept
    assert res.frame_times == sorted(res.frame_times)
    frame_step = 1 / 15
    for got, want in zip(res.frame_times, target_times(res.clip_duration_s, 5), strict=True):
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
    res = extract_frames(clip, frames_per_utterance=4, frame_size=64,
                         max_clip_seconds=8)
    assert res.status == "ok" and "clip_capped" in res.flags
    assert res.clip_duration_s == pytest.approx(40, abs=0.5)
    assert max(res.frame_times) < 8 and len(res.frames) == 4


def test_short_clip_repeats_frames(tmp_path):
    clip = make_clip(tmp_path / "short.mp4", 0.4)
    res = extract_frames(clip, frames_per_utterance=8, frame_size=64,
                         max_clip_seconds=30.0)
    assert res.status == "ok" and len(res.frames) == 8
    assert len(set(res.frames)) <= 2


def test_split_jpegs():
    a, b = b"\xff\xd8abc\xff\xd9", b"\xff\xd8de\xff\x00f\xff\xd9"
    assert split_jpegs(a + b) == [a, b]
    assert split_jpegs(b"") == []


@pytest.mark.parametrize("fps", [25, 100])
def test_a_clip_of_one_frame_gives_that_frame(tmp_path, fps):
    """MELD has clips of a few hundredths of a second: one video frame, at 0 s. Every
    target time was above it, so the clip was `unreadable_video`."""
    clip = tmp_path / "one.mp4"
    subprocess.run([need_tool("ffmpeg"), "-nostdin", "-y", "-loglevel", "error", "-f", "lavfi",
                    "-i", f"testsrc=s=64x48:r={fps}", "-f", "lavfi", "-i",
                    "sine=frequency=440:sample_rate=16000", "-frames:v", "1", "-t",
                    f"{1 / fps:.3f}", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac",
                    str(clip)], check=True)
    res = extract_frames(clip, frames_per_utterance=8, frame_size=64, max_clip_seconds=30.0)
    assert res.status == "ok", res.reason
    assert len(res.frames) == 8 and len(set(res.frames)) == 1
    assert res.frame_times == [0.0] * 8
