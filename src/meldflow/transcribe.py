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
import jiwer
import numpy as np
import pyarrow as pa
from tqdm import tqdm

from meldflow import MeldflowError
from meldflow.ingest import normalise_text
from meldflow.stage import cached_snapshot, whisper_repo_id
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
    missing = [f for f in ("model.bin", "config.json", "tokenizer.json") if not (snap / f).exists()]
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
    """One loaded Whisper model and the decoding options used for every clip."""

    def __init__(self, name: str, hf_home: str | Path, device: str = "auto",
                 beam_size: int = 1, cpu_threads: int = 0):
        from faster_whisper import WhisperModel

        path = model_dir(name, hf_home)
        self.device, self.compute_type = choose_device(device, path)
        self.model = WhisperModel(str(path), device=self.device, compute_type=self.compute_type,
                                  cpu_threads=cpu_threads)
        self.beam_size = beam_size

    def transcribe(self, audio: np.ndarray) -> tuple[str, list[dict]]:
        # Greedy and no conditioning on earlier windows: clips are one line each, and
        # conditioning is what makes Whisper loop on short or noisy inputs.
        segments, _ = self.model.transcribe(
            audio, language="en", beam_size=self.beam_size, word_timestamps=True,
            condition_on_previous_text=False, vad_filter=False,
        )
        text, words = [], []
        for seg in segments:
            text.append(seg.text.strip())
            for w in seg.words or []:
                words.append({"word": w.word.strip(), "start": float(w.start),
                              "end": float(w.end), "probability": float(w.probability)})
        return " ".join(t for t in text if t), words


def transcribe_rows(rows: pa.Table, transcriber: Transcriber, max_clip_seconds: float) -> pa.Table:
    """Transcripts for every row of an ingest table, decoding the next clip while one runs."""
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

    results: list[AsrResult] = []
    with ThreadPoolExecutor(max_workers=1) as pool:
        for rec, got in tqdm(zip(recs, pool.map(fetch, recs), strict=True), total=len(recs),
                             desc="transcribe", unit="clip", mininterval=2.0):
            if isinstance(got, AsrResult):
                results.append(got)
                continue
            res = AsrResult()
            res.transcript, res.words = transcriber.transcribe(got)
            if not res.words:
                res.flags.append("empty_transcript")
            res.wer = word_error_rate(rec["utterance"], res.transcript)
            if res.wer is None:
                res.flags.append("no_gold_text")
            results.append(res)
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
                   device: str = "auto", beam_size: int = 1, max_clip_seconds: float = 30.0,
                   threads: int = 0) -> pa.Table:
    if os.environ.get("HF_HUB_OFFLINE") != "1":
        log.warning("HF_HUB_OFFLINE is not 1: transcription never downloads, but set it")
    transcriber = Transcriber(model, hf_home, device, beam_size, threads)
    table = transcribe_rows(rows, transcriber, max_clip_seconds)
    write_table(table, out)
    return table
