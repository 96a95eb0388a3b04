"""Frame extraction: each clip decoded once by ffmpeg, K frames kept as JPEG bytes.

Owns ``results/frames/{split}/shard-NNNN.parquet``.
"""

from __future__ import annotations

import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import ffmpeg
import pyarrow as pa
from tqdm import tqdm

from meldflow.preprocess.ingest import shard_of
from meldflow.preprocess.probe import ClipError, clip_info, duration_flag, last_line
from meldflow.settings import Settings, recorded_settings
from meldflow.shard_schema import (
    FRAMES_SCHEMA,
    METHOD_VERSIONS,
    ROWS_METADATA,
    StepResult,
    step_table,
    without_clip,
)
from meldflow.storage import write_table

_PTS_RE = re.compile(rb"Parsed_showinfo.*?\bn:\s*\d+.*?pts_time:\s*(-?[\d.]+)")


@dataclass
class FrameResult(StepResult):
    """A clip's frames (columns of FRAMES_SCHEMA)."""

    clip_duration_s: float | None = None
    frames: list[bytes] = field(default_factory=list)
    frame_times: list[float] = field(default_factory=list)


def target_times(duration: float, k: int) -> list[float]:
    """K instants spread evenly over the clip: the centres of K equal slices."""
    return [(i + 0.5) * duration / k for i in range(k)]


def _select_expr(times: list[float]) -> str:
    # Keep the first decoded frame at or after each target; isnan(prev_t) covers frame 0.
    terms = [f"gte(t,{t:.4f})*(lt(prev_t,{t:.4f})+isnan(prev_t))" for t in times]
    return "+".join(terms)


def split_jpegs(stream: bytes) -> list[bytes]:
    """Cut ffmpeg's concatenated MJPEG output into images.

    ffmpeg's JPEGs carry no thumbnails, and inside entropy-coded data 0xFF is always
    followed by 0x00 or a restart marker, so 0xFFD9 only ever marks the end of an image.
    """
    parts = stream.split(b"\xff\xd9")
    return [p + b"\xff\xd9" for p in parts if p.startswith(b"\xff\xd8")]


def decode_errors(stderr: bytes) -> int:
    """Error lines in ffmpeg's ``-loglevel level+info`` output (damaged packets, bad NALs)."""
    return stderr.count(b"[error]")


def errors_example(stderr: bytes) -> str:
    line = next(ln for ln in stderr.decode("utf-8", "replace").splitlines() if "[error]" in ln)
    return line.split("[error]", 1)[1].strip()


def _decode(path: str | Path, span: float, select: str, size: int, jpeg_quality: int,
            threads: int) -> tuple[list[bytes], list[float], bytes]:
    """(JPEG images, their times, ffmpeg's log) of the frames ``select`` keeps in the
    clip's first ``span`` seconds, scaled to fit ``size``."""
    stream = (
        ffmpeg.input(str(path), t=f"{span + 0.05:.3f}", threads=threads)
        .video.filter("select", select)
        .filter("showinfo")
        .filter("scale", size, size, force_original_aspect_ratio="decrease",
                force_divisible_by=2)
        .output("pipe:", format="image2pipe", vcodec="mjpeg", fps_mode="passthrough",
                **{"q:v": jpeg_quality})
        .global_args("-nostdin", "-hide_banner", "-loglevel", "level+info")
    )
    out, err = stream.run(capture_stdout=True, capture_stderr=True)
    return split_jpegs(out), [float(m) for m in _PTS_RE.findall(err)], err


def extract_frames(path: str | Path, frames_per_utterance: int, frame_size: int,
                   max_clip_seconds: float, jpeg_quality: int = 3,
                   threads: int = 0) -> FrameResult:
    """Decode ``path`` once and return ``frames_per_utterance`` JPEG frames spread over it.

    ``frame_size`` bounds the longer side (aspect ratio kept). Clips longer than
    ``max_clip_seconds`` (MELD's mis-cut clips run for minutes) are decoded only that far.
    Always returns that many frames for a readable clip: if the clip has fewer distinct
    frames than targets, the nearest frame is repeated.
    """
    k, size = frames_per_utterance, frame_size
    res = FrameResult()
    try:
        info = clip_info(path)
    except ClipError as exc:
        return FrameResult(status=exc.status, reason=str(exc))
    if not info.has_video:
        return FrameResult(status="no_video_stream", reason="clip has no video stream",
                           clip_duration_s=info.duration)
    res.clip_duration_s = info.duration
    span = info.duration
    if span > max_clip_seconds:
        span = max_clip_seconds
        res.flags.append("clip_capped")
        res.reason = f"clip is {info.duration:.1f} s; frames taken from its first {span:g} s"
    if span <= 0:
        span = 1.0 / 30  # a zero-length header still holds at least one frame
    targets = target_times(span, k)
    try:
        images, pts, err = _decode(path, span, _select_expr(targets), size, jpeg_quality,
                                   threads)
        if not images:  # every frame precedes the first target (a clip of one frame)
            images, pts, err = _decode(path, span, "1", size, jpeg_quality, threads)
    except ffmpeg.Error as exc:
        return FrameResult(status="unreadable_video", clip_duration_s=info.duration,
                           reason=f"ffmpeg failed: {last_line(exc.stderr)}")
    if not images:
        return FrameResult(status="unreadable_video", clip_duration_s=info.duration,
                           reason=f"no frame decoded: {last_line(err)}")
    errors = decode_errors(err)
    if errors:
        res.flags.append("decode_errors")
        res.reason = "; ".join(filter(None, [res.reason, f"{errors} video decode error(s), "
                                             f"e.g. {errors_example(err)}"]))
    if len(pts) != len(images):  # showinfo lost a line; fall back to the targets
        pts = targets[: len(images)]
    for t in targets:
        j = min(range(len(pts)), key=lambda i: abs(pts[i] - t))
        res.frames.append(images[j])
        res.frame_times.append(round(pts[j], 4))
    return res


def frames_for_rows(rows: pa.Table, settings: Settings, workers: int = 1) -> pa.Table:
    """Frames for every row of an ingest table; rows without a clip are passed through."""
    recs = rows.select(["split", "dialogue_id", "utterance_id", "clip_path", "status",
                        "start_s", "end_s"]).to_pylist()
    framing = frame_settings(settings)

    def one(rec: dict) -> FrameResult:
        skipped = without_clip(rec, FrameResult)
        if skipped:
            return skipped
        # With several clips in flight, one decoding thread each avoids oversubscription.
        res = extract_frames(rec["clip_path"], **framing, threads=1 if workers > 1 else 0)
        off = duration_flag(res.clip_duration_s, rec["start_s"], rec["end_s"])
        if off:
            res.flags.append("duration_mismatch")
            res.reason = "; ".join(filter(None, [res.reason, off]))
        return res

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(tqdm(pool.map(one, recs), total=len(recs), desc="frames",
                            unit="clip", mininterval=2.0))
    return step_table(recs, results, FRAMES_SCHEMA, "frame_")


def frame_settings(settings: Settings) -> dict:
    """The settings that decide a clip's frames, by name: what the shards record, and what
    ``meldflow predict`` repeats for new clips."""
    return {name: getattr(settings, name) for name in recorded_settings("frames")}


def run_frames(rows: pa.Table, out: str | Path, settings: Settings,
               workers: int = 1) -> pa.Table:
    table = frames_for_rows(rows, settings, workers)
    write_table(table, out, row_group_size=64, metadata={"meldflow_frames": {
        **frame_settings(settings), "method": METHOD_VERSIONS["frames"],
        "ffmpeg": ffmpeg_version()}, ROWS_METADATA: shard_of(rows)})
    return table


def ffmpeg_version() -> str:
    try:
        out = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True).stdout
    except OSError:
        return "unknown"
    return out.split("\n", 1)[0]
