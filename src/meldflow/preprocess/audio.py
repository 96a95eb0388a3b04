"""A clip's audio, decoded once for transcription, with what decoding revealed.

faster-whisper's own decoder skips bad packets silently, so a clip corrupted mid-stream
would pass as ``ok``: here every failed packet is counted, and the audio's length is
compared with what the clip should hold (``meldflow.preprocess.probe``).
"""

from __future__ import annotations

import itertools
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import av
import numpy as np

from meldflow.preprocess.probe import audio_short, check_clip_file, expected_audio_seconds

SAMPLE_RATE = 16000
# How many clips a reader decodes ahead of their consumers: enough to keep them busy, few
# enough that a job's memory does not grow with its shard.
READ_AHEAD_CLIPS = 16


@dataclass
class Audio:
    """A clip's decoded audio and what decoding it revealed."""

    samples: np.ndarray  # 16 kHz mono float32, at most max_seconds
    errors: int  # packets that failed to decode (skipped)
    expected_s: float  # how long it should be (meldflow.preprocess.probe.expected_audio_seconds)
    stream: str = ""  # which of several audio streams was heard (empty if only one)
    speech: float = 1.0  # the highest probability of speech in it (meldflow.preprocess.speech)

    @property
    def seconds(self) -> float:
        return len(self.samples) / SAMPLE_RATE

    def faults(self) -> tuple[list[str], list[str]]:
        """(flags, reasons) for damage: decode errors, audio that stops far too early. A
        clip with either is transcribed alone, so its damage cannot reach its neighbours."""
        flags, reasons = [], []
        if self.errors:
            flags.append("decode_errors")
            reasons.append(f"{self.errors} audio packet(s) failed to decode")
        if audio_short(self.seconds, self.expected_s):
            flags.append("audio_short")
            reasons.append(f"audio stops at {self.seconds:.2f} s of {self.expected_s:.2f} s")
        return flags, reasons

    def flags(self) -> tuple[list[str], list[str]]:
        """(flags, reasons) for the transcript: the faults, and ``multiple_audio_streams``."""
        flags, reasons = self.faults()
        if self.stream:
            flags.append("multiple_audio_streams")
            reasons.append(self.stream)
        return flags, reasons


def pick_audio_stream(streams: list) -> tuple[object, str]:
    """(stream, what to say of it) among a clip's audio streams: the one marked default, as
    ffmpeg would play it (the first if none or several are).

    Several audio streams are always flagged ``multiple_audio_streams``: an MP4 muxer marks
    the first stream default when nobody chose one, so the mark cannot say which track
    holds the dialogue.
    """
    if len(streams) == 1:
        return streams[0], ""
    default = [s for s in streams if s.disposition & av.stream.Disposition.default]
    chosen = (default or streams)[0]
    marked = "the default" if len(default) == 1 else f"{len(default) or 'none'} marked default"
    place = f"audio stream {streams.index(chosen) + 1} of {len(streams)}"
    return chosen, f"{place} ({marked}) transcribed"


def decode_audio(path: str, max_seconds: float, start_s: float | None = None,
                 end_s: float | None = None) -> Audio:
    """16 kHz mono audio of the first ``max_seconds``, counting packets that fail to decode;
    ``start_s``/``end_s`` (the CSV's times) say how long the audio should be.

    Raises :class:`ClipError` for a file fault and ``LookupError`` if there is no audio
    stream.
    """
    check_clip_file(path)
    limit = int(max_seconds * SAMPLE_RATE)
    chunks, have, errors = [], 0, 0
    with av.open(path) as container:
        if not container.streams.audio:
            raise LookupError("clip has no audio stream")
        stream, note = pick_audio_stream(list(container.streams.audio))
        total = (container.duration or 0) / 1_000_000
        if stream.duration and stream.time_base:
            total = max(total, float(stream.duration * stream.time_base))
        resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
        packets = container.demux(stream)
        while have < limit:
            try:
                packet = next(packets)
                frames = packet.decode()
            except StopIteration:
                break
            except av.error.FFmpegError:
                errors += 1
                continue
            for frame in frames:
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
                    have += chunks[-1].size
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray().reshape(-1))
    pcm = np.concatenate(chunks) if chunks else np.zeros(0, np.int16)
    samples = pcm[:limit].astype(np.float32) / 32768.0
    return Audio(samples, errors, expected_audio_seconds(total, start_s, end_s, max_seconds),
                 note)


def read_ahead(pool: ThreadPoolExecutor, fn, items, depth: int = READ_AHEAD_CLIPS):
    """``fn(item)`` for each item, in order, computed in ``pool`` at most ``depth`` ahead."""
    items = iter(items)
    pending = deque(pool.submit(fn, item) for item in itertools.islice(items, depth))
    while pending:
        done = pending.popleft()
        pending.extend(pool.submit(fn, item) for item in itertools.islice(items, 1))
        yield done.result()
