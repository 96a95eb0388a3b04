"""Clip faults, decided here for every step, and cheap clip inspection.

``check_clip_file`` (is there a readable regular file?) is what ingest, frames and
transcribe all call, so the steps cannot disagree about a clip. ``clip_info`` reads an
MP4's box headers instead of spawning ffprobe: a bare decode of a 3.6 s clip costs a few
hundred milliseconds, and an ffprobe process per clip would add a large share of that.
What only decoding reveals (decode errors, audio that stops early) is counted by the step
that decodes and turned into flags by the functions below.
"""

from __future__ import annotations

import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

import ffmpeg

# A clip whose length differs from the CSV's EndTime - StartTime by more than this many
# seconds and this fraction is flagged (MELD has mis-cut clips that run for minutes).
DURATION_TOLERANCE_S = 2.0
DURATION_TOLERANCE_FRACTION = 0.5
# Decoded audio is flagged `audio_short` (damage: transcribed alone, in the audit) when it
# stops more than AUDIO_SHORT_S and AUDIO_SHORT_FRACTION of the expected length short,
# the expected length being the CSV's EndTime - StartTime (capped by the container's
# duration and max_clip_seconds), or the container's duration without usable times.
# Measured (docs/integrity.md, bench_preprocess.py): an AAC track a little shorter than its
# H.264 video is common and healthy (`ffmpeg -shortest` with x264: 0.5-1 s; re-muxed clips:
# a few hundred ms), while damaged audio stops seconds early or after a fraction of the
# clip. 1.25 s clears the benign case with margin; 25% keeps long clips from being flagged
# for a second of trailing silence lost.
AUDIO_SHORT_S = 1.25
AUDIO_SHORT_FRACTION = 0.25


class ClipError(Exception):
    """The clip cannot be used; ``status`` is the row status, the message says why."""

    def __init__(self, reason: str, status: str = "unreadable_video"):
        super().__init__(reason)
        self.status = status


def check_clip_file(path: str | Path) -> None:
    """Raise :class:`ClipError` unless ``path`` is a non-empty regular file we can read.

    Missing and dangling-link clips are ``missing_video``; directories, devices, FIFOs and
    files we may not read are ``unreadable_video``; a 0-byte file is ``empty_video``.
    """
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        if path.is_symlink():
            raise ClipError(f"dangling symbolic link: {path} -> {os.readlink(path)}",
                            "missing_video") from None
        raise ClipError(f"clip not found: {path}", "missing_video") from None
    except OSError as exc:
        raise ClipError(f"cannot access clip: {path} ({exc.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise ClipError(f"clip path is {kind}: {path}")
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as exc:
        raise ClipError(f"clip cannot be read: {path} ({exc.strerror})") from None
    if st.st_size == 0:
        raise ClipError(f"clip is empty (0 bytes): {path}", "empty_video")


def duration_flag(duration: float | None, start_s: float | None,
                  end_s: float | None) -> str | None:
    """Reason text if the clip's length is far from the CSV's EndTime - StartTime."""
    if duration is None or start_s is None or end_s is None or end_s <= start_s:
        return None
    expected = end_s - start_s
    off = abs(duration - expected)
    if off > DURATION_TOLERANCE_S and off > DURATION_TOLERANCE_FRACTION * expected:
        return (f"clip is {duration:.2f} s but the CSV's EndTime - StartTime is "
                f"{expected:.2f} s")
    return None


def expected_audio_seconds(container_s: float, start_s: float | None, end_s: float | None,
                           max_seconds: float) -> float:
    """How long a clip's audio should be: the CSV's EndTime - StartTime where the row has
    usable times, else the container's duration; never more than either, nor the cap."""
    expected = min(container_s, max_seconds)
    if start_s is not None and end_s is not None and end_s > start_s:
        expected = min(expected, end_s - start_s)
    return expected


def audio_short(decoded_s: float, expected_s: float) -> bool:
    """Whether decoded audio stops far short of what it should hold (damage, not the
    fraction of a second an encoder leaves between an AAC track and its video)."""
    return expected_s - decoded_s > max(AUDIO_SHORT_S, AUDIO_SHORT_FRACTION * expected_s)


@dataclass
class ClipInfo:
    duration: float
    has_video: bool
    has_audio: bool


def _boxes(f, start: int, end: int):
    pos = start
    while pos + 8 <= end:
        f.seek(pos)
        head = f.read(8)
        if len(head) < 8:
            return
        size, kind = struct.unpack(">I4s", head)
        header = 8
        if size == 1:
            size = struct.unpack(">Q", f.read(8))[0]
            header = 16
        elif size == 0:
            size = end - pos
        if size < header:
            return
        yield kind, pos + header, min(pos + size, end), pos + size > end
        pos += size


def read_mp4_info(path: str | Path) -> ClipInfo | None:
    """Duration and stream kinds from the ``moov`` box; ``None`` if not an MP4 we can read.

    Raises :class:`ClipError` for an empty file or an MP4 without a ``moov`` box (the
    signature of a truncated download or a cut-off encode).
    """
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        raise ClipError("clip is empty (0 bytes)", "empty_video")
    with path.open("rb") as f:
        top = list(_boxes(f, 0, size))
        if not top or top[0][0] not in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip"):
            return None
        moov = next((b for b in top if b[0] == b"moov"), None)
        if moov is None:
            raise ClipError("no moov atom: the file is truncated or was never finalised")
        _, m_start, m_end, m_cut = moov
        if m_cut:
            raise ClipError("moov atom is cut off: the file is truncated")
        duration, handlers = None, []
        for kind, start, end, _ in _boxes(f, m_start, m_end):
            if kind == b"mvhd":
                f.seek(start)
                version = f.read(1)[0]
                if version == 1:
                    f.seek(start + 4 + 16)
                    timescale, dur = struct.unpack(">IQ", f.read(12))
                else:
                    f.seek(start + 4 + 8)
                    timescale, dur = struct.unpack(">II", f.read(8))
                duration = dur / timescale if timescale else None
            elif kind == b"trak":
                for k2, s2, e2, _ in _boxes(f, start, end):
                    if k2 != b"mdia":
                        continue
                    for k3, s3, _e3, _ in _boxes(f, s2, e2):
                        if k3 == b"hdlr":
                            f.seek(s3 + 8)
                            handlers.append(f.read(4))
        if duration is None:
            return None
        return ClipInfo(duration, b"vide" in handlers, b"soun" in handlers)


def clip_info(path: str | Path) -> ClipInfo:
    """Clip duration and streams: the MP4 fast path, else ffprobe.

    Raises :class:`ClipError` for any file fault (:func:`check_clip_file`) or container
    that cannot be read.
    """
    check_clip_file(path)
    info = read_mp4_info(path)
    if info is not None:
        return info
    try:
        meta = ffmpeg.probe(str(path))
    except ffmpeg.Error as exc:
        raise ClipError(f"ffprobe failed: {last_line(exc.stderr)}") from None
    kinds = {s.get("codec_type") for s in meta.get("streams", [])}
    duration = float(meta.get("format", {}).get("duration") or 0.0)
    return ClipInfo(duration, "video" in kinds, "audio" in kinds)


def last_line(stderr: bytes | str | None) -> str:
    """The last non-empty line of a tool's stderr, for a one-line reason."""
    if not stderr:
        return "no error output"
    if isinstance(stderr, bytes):
        stderr = stderr.decode("utf-8", "replace")
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    return lines[-1] if lines else "no error output"
