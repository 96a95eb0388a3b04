"""Whisper transcription throughput: one clip per call (the naive loop) against meldflow's
packed windows (the CPU path) and its batched decoding (the GPU path, whisper_batch_size:
faster-whisper's batched pipeline, one chunk per clip, so no word can cross clips, clips
handed over a batch at a time as `meldflow transcribe` does), same model, same clips, same
run. Beam 5 and word timestamps throughout.

On a GPU (float16):
    python benchmarks/bench_gpu_transcribe.py --hf-home H --audio clips.npz --device cuda
Where the machine has no PyAV (a bare GPU image), decode the clips here first:
    .venv/bin/python benchmarks/bench_gpu_transcribe.py --prepare clips.npz
which writes the sample's clips with audio as 16 kHz arrays plus their gold text.
Transcripts go to --out (JSON); WER is computed where jiwer is installed (or later, from
that file, with --score).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

SAMPLE = Path(__file__).resolve().parents[1] / "src" / "meldflow" / "data" / "sample"


def prepare(out: Path) -> None:
    import numpy as np

    from meldflow.annotations import clip_dir, find_csv, read_annotations
    from meldflow.preprocess.audio import decode_audio

    arrays, texts, names = [], [], []
    for split in ("train", "dev", "test"):
        for ann in read_annotations(find_csv(SAMPLE, split)):
            path = clip_dir(SAMPLE, split) / ann.clip_name
            try:
                audio = decode_audio(str(path), 30.0).samples
            except Exception:  # missing, empty, truncated, silent: not a transcription input
                continue
            arrays.append(audio.astype(np.float16))
            texts.append(ann.utterance)
            names.append(f"{split}/{ann.clip_name}")
    np.savez_compressed(out, names=np.array(names), texts=np.array(texts),
                        lengths=np.array([len(a) for a in arrays]),
                        audio=np.concatenate(arrays))
    print(f"{len(arrays)} clips, {sum(len(a) for a in arrays) / 16000:.0f} s of audio -> {out}")


def load(path: Path, repeat: int):
    import numpy as np

    z = np.load(path)
    bounds = np.cumsum([0, *z["lengths"]])
    audios = [z["audio"][a:b].astype(np.float32) for a, b in zip(bounds[:-1], bounds[1:],
                                                                   strict=True)]
    return audios * repeat, list(z["texts"]) * repeat


def score(texts: list[str], gold: list[str]) -> float | None:
    try:
        import jiwer
    except ImportError:
        return None
    from meldflow.preprocess.wer import normalise_for_wer

    pairs = [(normalise_for_wer(g), normalise_for_wer(h)) for g, h in zip(gold, texts,
                                                                         strict=True)]
    pairs = [(g, h) for g, h in pairs if g]
    return float(jiwer.wer([g for g, _ in pairs], [h or "<empty>" for _, h in pairs]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prepare", type=Path, help="write the sample's audio to this .npz, exit")
    ap.add_argument("--score", type=Path, help="print WERs of an --out file, exit")
    ap.add_argument("--audio", type=Path, help=".npz written by --prepare")
    ap.add_argument("--hf-home", type=Path)
    ap.add_argument("--model", default="tiny.en")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 16, 32])
    ap.add_argument("--repeat-clips", type=int, default=3,
                    help="use every clip this many times (more work per measurement)")
    ap.add_argument("--repeats", type=int, default=2, help="timed runs per mode (best kept)")
    ap.add_argument("--beam", type=int, default=5)
    ap.add_argument("--out", type=Path, help="transcripts and timings as JSON")
    args = ap.parse_args()
    if args.prepare:
        return prepare(args.prepare)
    if args.score:
        res = json.loads(args.score.read_text())
        for mode, r in res["modes"].items():
            print(f"{mode:>12}  WER {score(r['texts'], res['gold']):.3f}")
        return None

    from meldflow.preprocess.transcribe import Transcriber
    from meldflow.settings import Settings

    audios, gold = load(args.audio, args.repeat_clips)
    seconds = sum(len(a) for a in audios) / 16000
    packed = Transcriber(Settings(hf_home=args.hf_home, whisper_model=args.model,
                                  whisper_device=args.device, whisper_beam_size=args.beam,
                                  whisper_pack_seconds=28.0))
    print(f"{len(audios)} clips ({seconds:.0f} s of audio), {args.model}, {packed.device} "
          f"{packed.compute_type}, beam {args.beam}, word timestamps")
    naive = Transcriber.__new__(Transcriber)  # the same loaded model, one clip per call
    naive.__dict__.update(packed.__dict__, pack_seconds=0.0)

    def run_packed(t):
        out, pack = [], []
        for a in audios:
            if not t.fits(pack, a):
                out += [x for x, _ in t.transcribe_pack(pack)]
                pack = []
            pack.append(a)
        return out + [x for x, _ in t.transcribe_pack(pack)]

    def run_batched(b):
        t = Transcriber.__new__(Transcriber)
        t.__dict__.update(packed.__dict__, batch_size=b)
        return [x for i in range(0, len(audios), b) for x, _ in t.transcribe_batch(
            audios[i:i + b])]

    modes = {"sequential": lambda: run_packed(naive), "packed": lambda: run_packed(packed)}
    for b in args.batch_sizes:
        modes[f"batched-{b}"] = lambda b=b: run_batched(b)
    naive.transcribe_pack(audios[:1])  # warm-up: CUDA initialisation is not throughput
    results = {}
    print(f"{'mode':>12} {'clips/s':>9} {'vs sequential':>14} {'WER':>6}")
    for name, fn in modes.items():
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            texts = fn()
            times.append(time.perf_counter() - start)
        rate = len(audios) / min(times)
        results[name] = {"clips_per_s": rate, "times": times, "texts": texts}
        wer = score(texts, gold)
        ratio = rate / results["sequential"]["clips_per_s"]
        shown = "-" if wer is None else f"{wer:.3f}"
        print(f"{name:>12} {rate:9.1f} {ratio:13.2f}x {shown:>6}", flush=True)
    print(f"(best of {args.repeats} runs; spread of runs: "
          f"{statistics.mean(max(r['times']) / min(r['times']) for r in results.values()):.2f}x)")
    if args.out:
        args.out.write_text(json.dumps({"gold": gold, "modes": results,
                                        "device": packed.device,
                                        "compute_type": packed.compute_type}))


if __name__ == "__main__":
    main()
