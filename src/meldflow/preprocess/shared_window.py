"""Several clips in one Whisper window: one encoder pass, each clip decoded on its own.

Whisper encodes fixed 30 s windows, so a 3 s clip alone pays for 27 s of padding. Clips are
therefore packed, a second of silence apart, into one window that is encoded once. Decoding
the window as one stream would give each word to the clip its time falls in, and Whisper's
word times are off by up to a second: a clip's last word, spoken to its last sample, would
land in the next clip.

So each clip is decoded from its own copy of the window's encoding in which every frame
outside the clip (and a margin of ``MARGIN_FRAMES``) is the encoding of silence. The
decoder, told by its first timestamp token where the clip starts, cannot attend to a
neighbour's speech, so every word it gives belongs to that clip, and its time is found in
that clip's frames. The copies are decoded as one batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from meldflow.preprocess.audio import SAMPLE_RATE
from meldflow.settings import WINDOW_SECONDS

FRAMES_PER_SECOND = 50  # Whisper's encoder frames and timestamp tokens are 20 ms apart
WINDOW_FRAMES = WINDOW_SECONDS * FRAMES_PER_SECOND
# Encoder frames of the gap kept on each side of a clip: 0.1 s. Measured on 300 clips
# whose speech runs to both edges (benchmarks/bench_window_layout.py): WER 0.199 with
# none, 0.186 with 5; wider margins and gaps trade the clips with silence against them.
MARGIN_FRAMES = (5, 5)  # before the clip, after it
# Encoder frames of masked silence kept on each side of the longest clip for the word
# alignment: 0.5 s (see SharedWindow._align).
ALIGN_CONTEXT_FRAMES = 25
# faster-whisper's own rules for a decode it does not trust (its defaults): text that
# compresses this well is a loop; a mean log-probability below this is a guess.
MAX_COMPRESSION_RATIO = 2.4
MIN_AVG_LOGPROB = -1.0
NO_SPEECH_PROB = 0.6  # with a low log-probability: silence, not speech
PREPEND = "\"'“¿([{-"
APPEND = "\"'.。,，!！?？:：”)]}、"


@dataclass
class Decoded:
    """One clip's words from a shared window, and whether to trust them."""

    text: str = ""
    words: list[dict] = field(default_factory=list)
    doubtful: bool = False  # a loop, a guess or nothing heard: transcribe the clip alone


class SharedWindow:
    """Decodes packed clips with a loaded ``faster_whisper.WhisperModel``."""

    def __init__(self, model, beam_size: int) -> None:
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_suppressed_tokens

        self.model, self.beam_size = model, beam_size
        self.tokenizer = Tokenizer(model.hf_tokenizer, model.model.is_multilingual,
                                   task="transcribe", language="en")
        self.suppress = get_suppressed_tokens(self.tokenizer, [-1])
        self._silence: np.ndarray | None = None

    def _encode(self, windows: list[np.ndarray]) -> np.ndarray:
        from faster_whisper.audio import pad_or_trim

        features = np.stack([pad_or_trim(self.model.feature_extractor(w)) for w in windows])
        return np.array(self.model.encode(features))  # (windows, WINDOW_FRAMES, width)

    @property
    def silence(self) -> np.ndarray:
        """The encoding of a silent window, in place of everything outside a clip."""
        if self._silence is None:
            self._silence = self._encode([np.zeros(WINDOW_SECONDS * SAMPLE_RATE, np.float32)])
        return self._silence

    def decode(self, audios: list[np.ndarray], gap_s: float,
               heard: int | None = None) -> list[Decoded]:
        """Each clip's words, times relative to the clip, from one encoder pass; with
        ``heard``, only the first ``heard`` clips are decoded (the others are context: the
        encoder hears them, no decoder reads them)."""
        return self.decode_windows([audios], gap_s, None if heard is None else [heard])

    def decode_windows(self, windows: list[list[np.ndarray]], gap_s: float,
                       heard: list[int] | None = None) -> list[Decoded]:
        """:meth:`decode` for the heard clips of several windows in one call, in order."""
        import ctranslate2

        gap = np.zeros(int(gap_s * SAMPLE_RATE), np.float32)
        packed, bounds = [], []  # bounds: (window, start s, end s) of each heard clip
        for k, audios in enumerate(windows):
            pieces, offset = [], 0
            for i, a in enumerate(audios):
                if i:
                    pieces.append(gap)
                    offset += len(gap)
                pieces.append(a.astype(np.float32, copy=False))
                if heard is None or i < heard[k]:
                    bounds.append((k, offset / SAMPLE_RATE, (offset + len(a)) / SAMPLE_RATE))
                offset += len(a)
            packed.append(np.concatenate(pieces))
        encoded = self._encode(packed)
        spans = [(max(0, int(b0 * FRAMES_PER_SECOND) - MARGIN_FRAMES[0]),
                  min(WINDOW_FRAMES, int(np.ceil(b1 * FRAMES_PER_SECOND)) + MARGIN_FRAMES[1]))
                 for _, b0, b1 in bounds]
        masked = np.repeat(self.silence, len(spans), axis=0)
        for i, ((k, _, _), (f0, f1)) in enumerate(zip(bounds, spans, strict=True)):
            masked[i, f0:f1] = encoded[k, f0:f1]
        masked_view = ctranslate2.StorageView.from_array(np.ascontiguousarray(masked))
        tok = self.tokenizer
        results = self.model.model.generate(
            masked_view, [[*tok.sot_sequence, tok.timestamp_begin + f0] for f0, _ in spans],
            beam_size=self.beam_size, max_length=self.model.max_length // 2,
            suppress_blank=True, suppress_tokens=self.suppress, return_scores=True,
            return_no_speech_prob=True)
        tokens = [self._inside(r.sequences_ids[0], f1) for r, (_, f1) in zip(results, spans,
                                                                            strict=True)]
        timings, starts = self._align(tokens, masked, spans)
        return [self._judge(r, text_tokens, timing, b0 - a / FRAMES_PER_SECOND,
                            b1 - a / FRAMES_PER_SECOND)
                for r, text_tokens, timing, (_, b0, b1), a in zip(
                    results, tokens, timings, bounds, starts, strict=True)]

    def _align(self, tokens: list[list[int]], masked: np.ndarray,
               spans: list[tuple[int, int]]) -> tuple[list[list[dict]], list[int]]:
        """Each clip's word timings, and the encoder frame their times count from.

        The words are aligned on the frames around each clip, not the whole window: over
        1,500 frames the alignment's cross-attention and time warping work mostly on masked
        silence. The decoder forced through the clip's own tokens finds them there all the
        same (benchmarks/bench_asr_levers.py on 88 MELD-like clips: the alignment 2.6x-3.9x
        faster, transcription up to 1.14x; the words' times nearer the clip's alone, 95th
        percentile 0.146 s off against 0.177 s). One length for all clips of the call, as
        the batch needs: the longest clip's.
        """
        import ctranslate2

        length = min(WINDOW_FRAMES, max(f1 - f0 for f0, f1 in spans) + 2 * ALIGN_CONTEXT_FRAMES)
        starts = [max(0, min(f0 - ALIGN_CONTEXT_FRAMES, WINDOW_FRAMES - length))
                  for f0, _ in spans]
        around = np.stack([masked[i, a:a + length] for i, a in enumerate(starts)])
        # find_alignment counts log-mel frames (two per encoder frame), not encoder frames
        return self.model.find_alignment(self.tokenizer, tokens, ctranslate2.StorageView
                                         .from_array(around), 2 * length), starts

    def _judge(self, result, text_tokens: list[int], timing: list[dict], b0: float,
               b1: float) -> Decoded:
        """One clip's decode as words relative to the clip, and whether to trust it.
        ``b0``, ``b1``: the clip's bounds on the time axis of ``timing``."""
        from faster_whisper.transcribe import get_compression_ratio, merge_punctuations

        n = len(result.sequences_ids[0])
        avg_logprob = result.scores[0] * n / (n + 1)
        if result.no_speech_prob > NO_SPEECH_PROB and avg_logprob < MIN_AVG_LOGPROB:
            return Decoded()  # silence, as faster-whisper would skip it
        text = self.tokenizer.decode(text_tokens).strip()
        merge_punctuations(timing, PREPEND, APPEND)
        words = [{"word": w["word"].strip(),
                  "start": float(min(max(w["start"] - b0, 0.0), b1 - b0)),
                  "end": float(min(max(w["end"] - b0, 0.0), b1 - b0)),
                  "probability": float(w["probability"])}
                 for w in timing if w["word"].strip()]
        doubtful = (not words or avg_logprob < MIN_AVG_LOGPROB
                    or get_compression_ratio(text) > MAX_COMPRESSION_RATIO)
        return Decoded(text, words, doubtful)

    def _inside(self, sequence: list[int], end_frame: int) -> list[int]:
        """The text tokens of the segments that start inside the clip: what the decoder
        says after the clip's end is heard in silence."""
        tok, kept, segment = self.tokenizer, [], []
        for t in sequence:
            if t >= tok.timestamp_begin:
                kept += segment
                segment = []
                if t - tok.timestamp_begin >= end_frame:
                    break
            elif t < tok.eot:
                segment.append(t)
        return kept + segment


def dialogue_windows(seconds: list[float], pack_seconds: float,
                     gap_seconds: float) -> list[tuple[list[int], int]]:
    """The windows of one dialogue's clips (their lengths, in utterance order): for each,
    the clips it holds and how many of the first are heard from it.

    Each clip is heard from one window, filled in turn up to ``pack_seconds``, clips
    ``gap_seconds`` apart; then the window is filled up, as context that the encoder
    hears and no decoder reads, with the clips that follow in the dialogue and the
    dialogue again from its start. Whisper hears a clip better in a window full of speech
    than in one of padding (benchmarks/bench_asr_levers.py on 300 MELD-like clips: WER
    0.173 in the windows as filled, 0.164 filled up), and the context is the clip's own
    dialogue, so its words depend on nothing else.
    """
    def fits(window: list[int], clip: int) -> bool:
        span = sum(seconds[j] + gap_seconds for j in window) + seconds[clip]
        return not window or span <= pack_seconds

    runs: list[list[int]] = []
    for i in range(len(seconds)):
        if runs and fits(runs[-1], i):
            runs[-1].append(i)
        else:
            runs.append([i])
    out = []
    for run in runs:
        window, k = list(run), run[-1] + 1
        while fits(window, k % len(seconds)):  # each clip adds a gap: a few dozen at most
            window.append(k % len(seconds))
            k += 1
        out.append((window, len(run)))
    return out
