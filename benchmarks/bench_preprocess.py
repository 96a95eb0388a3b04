"""Preprocessing benchmark: frames and transcription against naive baselines, same run.

Clips like MELD's (1280x720 H.264 + AAC, noisy picture so the bitrate is realistic): with
the real MELD CSV at ../shared/meld/train_sent_emo.csv (or --meld-csv), N utterances drawn
from it, their text spoken by espeak-ng (sped up where the speech would overrun) and each
clip as long as the CSV's EndTime - StartTime; built once and cached under
~/.cache/meldflow/bench-clips/. Without the CSV, N synthetic clips (the sample's lines,
speech length + 0.5 s). Then prints ratios, never lone times:
  (a) frame extraction in-process vs a bare decode (`ffmpeg -an -f null`) and vs decoding
      every frame to JPEG files;
  (b) transcription clips/s and corpus WER in-process vs a naive loop (one model, one
      clip at a time, beam 5, Whisper's default options);
  (c) `snakemake --cores 2 preprocess` from scratch on the same clips: each step's job
      time (from the DAG's own benchmark files, with peak memory) against the naive
      loops of (a) and (b), and the wall clock against their sum;
  (d) where the naive loop's transcription time goes.

Run: .venv/bin/python benchmarks/bench_preprocess.py [--clips 88] [--repeats 2]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path

from meldflow.samplegen import LINES, VOICES


def encode_clip(wav: Path, seconds: float, clip: Path) -> Path:
    """A MELD-sized clip: noisy 1280x720 H.264 picture, ``wav`` padded to ``seconds`` (AAC)."""
    subprocess.run(
        ["ffmpeg", "-nostdin", "-y", "-loglevel", "error", "-f", "lavfi", "-i",
         "testsrc2=s=1280x720:r=24", "-i", str(wav), "-vf", "noise=alls=8:allf=t",
         "-map", "0:v", "-map", "1:a", "-af", "apad", "-t", f"{seconds:.3f}",
         "-c:v", "libx264", "-preset", "veryfast", "-crf", "26", "-pix_fmt", "yuv420p",
         "-c:a", "aac", "-b:a", "96k", str(clip)], check=True)
    return clip


def make_clips(folder: Path, n: int, seed: int = 3) -> list[tuple[Path, str]]:
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        emotion = rng.choice(list(LINES))
        text = rng.choice(LINES[emotion])
        voice, speed, pitch = VOICES[rng.choice(list(VOICES))]
        wav = folder / f"s{i}.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w",
                        str(wav), text], check=True, capture_output=True)
        with wave.open(str(wav)) as w:
            dur = w.getnframes() / w.getframerate() + 0.5
        clip = encode_clip(wav, dur, folder / f"dia{i}_utt0.mp4")
        wav.unlink()
        out.append((clip, text))
    return out


REPO = Path(__file__).resolve().parents[1]
SHARED_CSV = REPO.parent / "shared" / "meld" / "train_sent_emo.csv"
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
CLIPS_VERSION = 1  # bump when the way clips are made changes (a new cache folder)


def _speech(text: str, wav: Path, speed: int) -> float:
    """espeak-ng's reading of ``text`` into ``wav``; its length in seconds."""
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", str(speed), "-w", str(wav), text],
                   check=True, capture_output=True)
    with wave.open(str(wav)) as w:
        return w.getnframes() / w.getframerate()


def make_meld_like_clips(csv_path: Path, n: int, seed: int = 3,
                         cache: Path | None = None) -> tuple[Path, list[dict]]:
    """``n`` clips of utterances drawn from a MELD CSV, as long as the CSV says; cached.

    Returns (folder, rows): each row has the clip, the text and the CSV's times.
    """
    from meldflow.ingest import read_annotations

    digest = hashlib.sha256(csv_path.read_bytes() + f"{n}:{seed}:{CLIPS_VERSION}".encode())
    root = cache or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    folder = root / "meldflow" / "bench-clips" / digest.hexdigest()[:16]
    manifest = folder / "clips.json"
    if manifest.is_file():
        return folder, json.loads(manifest.read_text())
    anns = [a for a in read_annotations(csv_path)
            if a.start_s is not None and a.end_s is not None and a.utterance.strip()
            and 0.8 <= a.end_s - a.start_s <= 30]
    picked = random.Random(seed).sample(anns, n)
    tmp = folder.with_name(folder.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    rows = []
    for i, a in enumerate(picked):
        dur = a.end_s - a.start_s
        wav = tmp / f"s{i}.wav"
        speed = 170
        length = _speech(a.utterance, wav, speed)
        if length > dur - 0.1:  # MELD's actors speak faster than espeak: fit the clip
            speed = min(500, int(speed * length / max(0.3, dur - 0.2)) + 1)
            _speech(a.utterance, wav, speed)
        clip = encode_clip(wav, dur, tmp / f"dia{i}_utt0.mp4")
        wav.unlink()
        rows.append({"clip": clip.name, "text": a.utterance, "start": a.start_s,
                     "end": a.end_s, "speed": speed})
    (tmp / "clips.json").write_text(json.dumps(rows, indent=1))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return folder, rows


def transcription_breakdown(model, clips, repeats: int = 1) -> list[tuple[str, float]]:
    """Shares of one-clip-per-call transcription time (beam 5, word timestamps): audio
    decoding, features + encoder (one padded 30 s window per clip), beam search, word
    timestamps (cross-attention alignment) and the rest, each measured (fastest of
    ``repeats`` passes) or by difference."""
    from faster_whisper.audio import decode_audio, pad_or_trim

    def best(fn):
        """(fastest time of ``repeats`` calls of ``fn``, what the last call returned)"""
        times = []
        for _ in range(max(1, repeats)):
            start = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - start)
        return min(times), out

    def run(**kw) -> float:
        def once():
            for c, _ in clips:
                segs, _ = model.transcribe(str(c), **kw)
                list(segs)
        return best(once)[0]

    t_audio, audios = best(lambda: [decode_audio(str(c)) for c, _ in clips])
    t_encoder, _ = best(lambda: [model.encode(pad_or_trim(model.feature_extractor(a)))
                                 for a in audios])
    t_full = run(beam_size=5, word_timestamps=True)
    t_nowords = run(beam_size=5, word_timestamps=False)
    t_greedy = run(beam_size=1, word_timestamps=False)
    decoding = t_nowords - t_audio - t_encoder
    return [("audio decoding (PyAV, 16 kHz mono)", t_audio / t_full),
            ("log-mel features + encoder (30 s window each)", t_encoder / t_full),
            ("decoding, beam 5", decoding / t_full),
            ("  of which beam 5 over greedy", (t_nowords - t_greedy) / t_full),
            ("word timestamps (alignment)", (t_full - t_nowords) / t_full)]


def _timestamp(seconds: float) -> str:
    ms = round(seconds * 1000)
    return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"


def corpus_wer(clips, hypotheses) -> float:
    """Word errors over all clips / reference words (MELD papers' convention)."""
    import jiwer

    from meldflow.transcribe import normalise_for_wer

    return float(jiwer.wer([normalise_for_wer(g) for _, g in clips],
                           [normalise_for_wer(h or "") for h in hypotheses]))


def dag_transcripts(work: Path) -> list[str]:
    """The DAG's transcripts in clip order (dialogue_id is the clip's index)."""
    import pyarrow.parquet as pq

    table = pq.read_table(sorted((work / "results" / "transcripts" / "train").glob("*.parquet")))
    by_id = dict(zip(table.column("dialogue_id").to_pylist(),
                     table.column("transcript").to_pylist(), strict=True))
    return [by_id[i] for i in range(len(by_id))]


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bare_decode(clips):
    for c, _ in clips:
        subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(c), "-an",
                        "-f", "null", "-"], check=True)


def naive_frames(clips, tmp: Path, k: int):
    for c, _ in clips:
        d = tmp / "naive"
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir()
        subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(c), "-an",
                        "-q:v", "3", str(d / "%04d.jpg")], check=True)
        files = sorted(d.iterdir())
        [files[int((i + 0.5) * len(files) / k)].read_bytes() for i in range(k)]


def our_frames(clips, k: int):
    from meldflow.frames import extract_frames

    for c, _ in clips:
        res = extract_frames(c, k=k, size=256)
        assert res.status == "ok" and len(res.frames) == k, res.reason


def run_workflow(work: Path, meld: Path, hf: Path, shard_size: int) -> float:
    """Seconds of `snakemake --cores 2 preprocess` on ``meld``'s train split, from scratch."""
    import yaml

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config.update({"meld_dir": str(meld), "hf_home": str(hf), "splits": ["train"],
                   "shard_size": shard_size})
    (work / "config").mkdir(parents=True)
    (work / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    start = time.perf_counter()
    proc = subprocess.run([str(SNAKEMAKE), "-s", str(REPO / "Snakefile"), "-d", str(work),
                           "--cores", "2", "preprocess"], capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError(f"snakemake failed:\n{proc.stderr[-3000:]}")
    return elapsed


def job_times(work: Path) -> dict[str, tuple[float, float]]:
    """(sum of seconds, largest max RSS in MB) per rule, from the DAG's benchmark files
    (Snakemake samples memory every 0.5 s)."""
    out: dict[str, tuple[float, float]] = {}
    root = work / "results" / "benchmarks"
    for tsv in sorted(root.rglob("*.tsv")):
        rule = tsv.relative_to(root).parts[0].removesuffix(".tsv")
        with tsv.open() as f:
            row = next(csv.DictReader(f, delimiter="\t"))
        rss = float(row["max_rss"]) if row["max_rss"] not in ("", "NA", "-") else 0.0
        seconds, peak = out.get(rule, (0.0, 0.0))
        out[rule] = (seconds + float(row["s"]), max(peak, rss))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=88)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--shard-size", type=int, default=88,
                    help="utterances per shard in the end-to-end run (default 88)")
    ap.add_argument("--meld-csv", type=Path, default=SHARED_CSV,
                    help="MELD annotation CSV to draw utterances and durations from; "
                         "synthetic clips when it is absent")
    ap.add_argument("--keep-aligned", type=Path, metavar="DIR",
                    help="copy the DAG's aligned shards to DIR (for bench_train.py --aligned "
                         "DIR: the training reader on MELD-like frames)")
    args = ap.parse_args()
    os.environ["TQDM_DISABLE"] = "1"  # the jobs' progress bars, here and in the DAG
    tmp = Path(tempfile.mkdtemp(prefix="meldflow-bench-"))
    try:
        meld = tmp / "meld"
        if args.meld_csv.is_file():
            folder, made = make_meld_like_clips(args.meld_csv, args.clips)
            (meld / "train_splits").mkdir(parents=True)
            for r in made:
                shutil.copy(folder / r["clip"], meld / "train_splits" / r["clip"])
            clips = [(meld / "train_splits" / r["clip"], r["text"]) for r in made]
            times = [(r["start"], r["end"]) for r in made]
            source = f"utterances and durations from {args.meld_csv} (cached in {folder})"
        else:
            clips = make_clips(meld / "train_splits", args.clips)
            times = [(1.0, 4.0)] * len(clips)
            source = f"synthetic ({args.meld_csv} absent)"
        durs = sorted(e - s for s, e in times)
        print(f"{len(clips)} clips, 1280x720 H.264+AAC, "
              f"{sum(c.stat().st_size for c, _ in clips) / len(clips) / 1e6:.2f} MB each; "
              f"{source}; CSV durations median {statistics.median(durs):.1f} s, "
              f"max {durs[-1]:.1f} s")

        from meldflow.stage import stage_whisper

        hf = tmp / "hf"
        stage_whisper(hf, "tiny.en", source="package")
        with (meld / "train_sent_emo.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID",
                        "Utterance_ID", "Season", "Episode", "StartTime", "EndTime"])
            for i, ((_, text), (start, end)) in enumerate(zip(clips, times, strict=True)):
                w.writerow([i + 1, text, "A", "neutral", "neutral", i, 0, 1, 1,
                            _timestamp(start), _timestamp(end)])

        # (a) frames: interleave the three so that machine noise hits all of them alike
        frame_times = {"bare decode": [], "ours": [], "naive every-frame JPEG": []}
        for _ in range(args.repeats):
            frame_times["bare decode"].append(timed(lambda: bare_decode(clips)))
            frame_times["ours"].append(timed(lambda: our_frames(clips, args.frames)))
            frame_times["naive every-frame JPEG"].append(
                timed(lambda: naive_frames(clips, tmp, args.frames)))
        med = {k: statistics.median(v) for k, v in frame_times.items()}
        print("\n(a) frame extraction in-process, median of", args.repeats,
              "runs, ratio to bare decode:")
        for k, v in med.items():
            print(f"    {k:24s} {v / med['bare decode']:.2f}x")
        print(f"    ours is {med['naive every-frame JPEG'] / med['ours']:.2f}x faster than naive")

        # (b) transcription
        os.environ["HF_HOME"], os.environ["HF_HUB_OFFLINE"] = str(hf), "1"
        import pyarrow as pa
        from faster_whisper import WhisperModel

        from meldflow.transcribe import Transcriber, model_dir, transcribe_rows

        naive_model = WhisperModel(str(model_dir("tiny.en", hf)[0]), device="cpu",
                                   compute_type="int8")
        ours = Transcriber("tiny.en", hf, device="cpu", cpu_threads=2)
        rows = pa.table({"split": ["train"] * len(clips), "dialogue_id": list(range(len(clips))),
                         "utterance_id": [0] * len(clips),
                         "clip_path": [str(c) for c, _ in clips], "status": ["ok"] * len(clips),
                         "utterance": [t for _, t in clips]})

        def naive_asr():
            out = []
            for c, _ in clips:
                segs, _ = naive_model.transcribe(str(c), beam_size=5, word_timestamps=True)
                out.append(" ".join(s.text.strip() for s in segs))
            return out

        def our_asr():
            return transcribe_rows(rows, ours, 30.0).column("transcript").to_pylist()

        t_naive, t_ours, naive_txt, our_txt = [], [], None, None
        for _ in range(args.repeats):
            s = time.perf_counter()
            naive_txt = naive_asr()
            t_naive.append(time.perf_counter() - s)
            s = time.perf_counter()
            our_txt = our_asr()
            t_ours.append(time.perf_counter() - s)
        speed = statistics.median(t_naive) / statistics.median(t_ours)
        wer_naive, wer_ours = corpus_wer(clips, naive_txt), corpus_wer(clips, our_txt)
        print("\n(b) transcription in-process (tiny.en, CPU int8), median of", args.repeats,
              "runs")
        print(f"    ours: beam {ours.beam_size}, clips packed into {ours.pack_seconds:g} s "
              f"windows, {ours.workers} packs at once")
        print(f"    clips/s ratio ours/naive  {speed:.2f}x "
              f"(target >= 2x: {'met' if speed >= 2 else 'NOT met'})")
        print(f"    corpus WER naive {wer_naive:.3f}  ours {wer_ours:.3f}")

        # (c) the DAG, end to end, against the naive loops of (a) and (b)
        work = tmp / "work"
        wall = run_workflow(work, meld, hf, args.shard_size)
        jobs = job_times(work)
        if args.keep_aligned:
            shutil.copytree(work / "results" / "aligned", args.keep_aligned, dirs_exist_ok=True)
        naive_asr_s, naive_frames_s = statistics.median(t_naive), med["naive every-frame JPEG"]
        naive_total = naive_asr_s + naive_frames_s
        rest = [r for r in jobs if r not in ("transcribe", "frames")]
        startup = timed(lambda: subprocess.run([str(SNAKEMAKE), "--version"],
                                               capture_output=True, check=True))
        print(f"\n(c) `snakemake --cores 2 preprocess`, {len(clips)} clips in shards of "
              f"{args.shard_size}, against the naive loops of (a) and (b):")
        print(f"    {'step':30s} {'meldflow':>9s} {'naive':>8s} {'ratio':>6s}  peak RSS")
        for name, (secs, rss), base, note in (
            ("transcription (sum of jobs)", jobs["transcribe"], naive_asr_s,
             f"  corpus WER {corpus_wer(clips, dag_transcripts(work)):.3f} "
             f"(naive {wer_naive:.3f})"),
            ("frames (sum of jobs)", jobs["frames"], naive_frames_s,
             f"  {jobs['frames'][0] / med['bare decode']:.2f}x a bare decode"),
            (f"{len(rest)} other jobs", (sum(jobs[r][0] for r in rest),
                                         max(jobs[r][1] for r in rest)), None,
             f"  {', '.join(rest)}"),
            ("Snakemake starting", (startup, 0.0), None, "  `snakemake --version`"),
            ("end to end (wall clock)", (wall, 0.0), naive_total, ""),
        ):
            ratio = f"{secs / base:5.2f}x" if base else "      "
            naive = f"{base:7.1f}s" if base else "        "
            mem = f"{rss:5.0f} MB" if rss else "        "
            print(f"    {name:30s} {secs:8.1f}s {naive} {ratio}  {mem}{note}")
        print(f"    end to end {wall / naive_total:.2f}x the naive loops (target <= 0.5x: "
              f"{'met' if wall <= 0.5 * naive_total else 'NOT met'}); without Snakemake's "
              f"start-up {(wall - startup) / naive_total:.2f}x")
        print(f"    frames job {jobs['frames'][0] / med['bare decode']:.2f}x a bare decode "
              f"(target <= 1.1x: "
              f"{'met' if jobs['frames'][0] <= 1.1 * med['bare decode'] else 'NOT met'})")
        if startup > 5:
            print("    (Snakemake's SLURM plugin runs `scontrol show config` when it loads; "
                  "where SLURM's client is installed and no controller answers, that waits "
                  "about 9 s)")

        print(f"\n(d) where the naive loop's transcription time goes (fastest of "
              f"{args.repeats} passes each, some by difference):")
        for name, share in transcription_breakdown(naive_model, clips, args.repeats):
            note = "  (below the run-to-run noise)" if share < 0.02 else ""
            print(f"    {name:44s} {share:6.1%}{note}")

    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
