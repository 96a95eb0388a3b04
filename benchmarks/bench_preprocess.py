"""Preprocessing benchmark: frames and transcription against naive baselines, same run.

Clips like MELD's (1280x720 H.264 + AAC, noisy picture so the bitrate is realistic): with
the real MELD CSV at ../shared/meld/train_sent_emo.csv (or --meld-csv), N utterances drawn
from it, their text spoken by espeak-ng (sped up, to at most 260 words a minute, to end
0.9 s before the clip does; lines that would need faster speech are not drawn) and each
clip as long as the CSV's EndTime - StartTime; built once and cached under
~/.cache/meldflow/bench-clips/ (benchmarks/meld_like.py). Three variants of the same clips
(--variants): `full`, the AAC track as long as the video; `short`, the AAC track ending
--audio-short seconds (0.8) before the video, what `ffmpeg -shortest` with x264 gives;
`tight`, each clip cut to its speech (first to last sample, as a clip cut mid-sentence
from an episode is) with CSV times to match. Without the CSV, N synthetic clips (the
sample's lines, speech length + 0.5 s). Then, per variant, ratios, never lone times:
  (a) frame extraction in-process vs a bare decode (`ffmpeg -an -f null`) and vs decoding
      every frame to JPEG files;
  (b) transcription clips/s and corpus WER in-process vs a naive loop (one model, one
      clip at a time, beam 5, Whisper's default options), words moved across a clip
      boundary (against each clip alone, and against the gold text), how far each clip's
      audio falls short of the CSV's length and how many clips that flags `audio_short`;
  (c) `snakemake --cores 2 preprocess` from scratch on the same clips: each step's job
      time (from the DAG's own benchmark files, with peak memory) against the naive
      loops of (a) and (b), the wall clock against their sum, and the audit's length;
  (d) where the naive loop's transcription time goes (first variant only);
a summary of the variants side by side, with the WER of tight against full and its 95%
paired bootstrap interval; and (e) that gap on --wer-clips (300) utterances of the same
draw, whose prefix the timed clips are, for meldflow and the naive loop
(benchmarks/wer_gap.py): a shard of 88 clips cannot resolve a difference of 0.01.

Run: .venv/bin/python benchmarks/bench_preprocess.py [--clips 88] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from meld_like import SHARED_CSV, make_clips, make_meld_like_clips
from wer_gap import gap_line, ingest_table, larger_draw, naive_transcripts
from workflow_run import SNAKEMAKE, audit_share, dag_transcripts, job_times, run_workflow, write_csv


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


def corpus_wer(clips, hypotheses) -> float:
    """Word errors over all clips / reference words (MELD papers' convention)."""
    import jiwer

    from meldflow.preprocess.wer import normalise_for_wer

    return float(jiwer.wer([normalise_for_wer(g) for _, g in clips],
                           [normalise_for_wer(h or "") for h in hypotheses]))


def moved_words(clips, alone: list[str], ours: list[str]) -> tuple[int, int, str]:
    """(words moved against each clip transcribed alone, against the gold text, which):
    words the shard's transcripts give to a neighbouring clip."""
    from meldflow.preprocess.wer import words_moved

    gold = [g for _, g in clips]
    vs_gold = words_moved(gold, ours)
    return (len(words_moved(alone, ours, spoken=gold)), len(vs_gold),
            ", ".join(f"{w!r} clip {a}->{b}" for w, a, b in vs_gold[:5]))


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
    """Each clip's frames with the workflow's settings, but ``k`` frames a clip."""
    from meldflow.preprocess.frames import extract_frames, frame_settings
    from meldflow.settings import Settings

    framing = frame_settings(Settings()) | {"frames_per_utterance": k}
    for c, _ in clips:
        res = extract_frames(c, **framing)
        assert res.status == "ok" and len(res.frames) == k, res.reason


def prepare(args, meld: Path, audio_short_s: float, tight: bool = False):
    """A MELD.Raw-like folder of the variant's clips: (clips as (path, text), CSV times)."""
    if args.meld_csv.is_file():
        folder, made = make_meld_like_clips(args.meld_csv, args.clips,
                                            audio_short_s=audio_short_s, tight=tight)
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
    write_csv(meld, clips, times)
    durs = sorted(e - s for s, e in times)
    print(f"{len(clips)} clips, 1280x720 H.264+AAC, "
          f"{sum(c.stat().st_size for c, _ in clips) / len(clips) / 1e6:.2f} MB each; "
          f"{source}; CSV durations median {statistics.median(durs):.1f} s, "
          f"max {durs[-1]:.1f} s")
    return clips, times


def bench_frames(clips, tmp: Path, repeats: int, k: int) -> dict[str, float]:
    """(a): median seconds of a bare decode, ours and the naive loop; interleaved, so that
    machine noise hits all three alike."""
    frame_times = {"bare decode": [], "ours": [], "naive every-frame JPEG": []}
    for _ in range(repeats):
        frame_times["bare decode"].append(timed(lambda: bare_decode(clips)))
        frame_times["ours"].append(timed(lambda: our_frames(clips, k)))
        frame_times["naive every-frame JPEG"].append(timed(lambda: naive_frames(clips, tmp, k)))
    med = {k: statistics.median(v) for k, v in frame_times.items()}
    print("\n(a) frame extraction in-process, median of", repeats, "runs, ratio to bare decode:")
    for name, v in med.items():
        print(f"    {name:24s} {v / med['bare decode']:.2f}x")
    print(f"    ours is {med['naive every-frame JPEG'] / med['ours']:.2f}x faster than naive")
    return med


def audio_shortfall(clips, times) -> None:
    """How far each clip's decoded audio falls short of the CSV's length, and how many
    clips that makes `audio_short` (damage) by meldflow's thresholds."""
    from meldflow.preprocess.audio import decode_audio

    short, flagged = [], 0
    for (clip, _), (start, end) in zip(clips, times, strict=True):
        audio = decode_audio(str(clip), 30.0, start, end)
        short.append(audio.expected_s - audio.seconds)
        flagged += "audio_short" in audio.faults()[0]
    print(f"    audio short of the CSV's length: median {statistics.median(short):.2f} s, "
          f"max {max(short):.2f} s; flagged audio_short: {flagged} of {len(clips)}")


def bench_transcription(clips, times, hf: Path, repeats: int) -> dict:
    """(b): the naive loop against meldflow's transcription, median of ``repeats``."""
    from faster_whisper import WhisperModel

    from meldflow.preprocess.transcribe import Transcriber, model_dir, transcribe_rows
    from meldflow.settings import Settings

    naive_model = WhisperModel(str(model_dir("tiny.en", hf)[0]), device="cpu",
                               compute_type="int8")
    ours = Transcriber(Settings(hf_home=str(hf), whisper_device="cpu"), cpu_threads=2)
    rows = ingest_table(clips, times)

    t_naive, t_ours, naive_txt, our_txt = [], [], None, None
    for _ in range(repeats):
        s = time.perf_counter()
        naive_txt = naive_transcripts(naive_model, clips)
        t_naive.append(time.perf_counter() - s)
        s = time.perf_counter()
        our_txt = transcribe_rows(rows, ours).column("transcript").to_pylist()
        t_ours.append(time.perf_counter() - s)
    speed = statistics.median(t_naive) / statistics.median(t_ours)
    wer_naive, wer_ours = corpus_wer(clips, naive_txt), corpus_wer(clips, our_txt)
    moved = moved_words(clips, naive_txt, our_txt)
    print("\n(b) transcription in-process (tiny.en, CPU int8), median of", repeats, "runs")
    print(f"    ours: beam {ours.beam_size}, clips packed into {ours.pack_seconds:g} s "
          f"windows, {ours.workers} packs at once")
    print(f"    clips/s ratio ours/naive  {speed:.2f}x "
          f"(target >= 5x: {'met' if speed >= 5 else 'NOT met'})")
    print(f"    corpus WER naive {wer_naive:.3f}  ours {wer_ours:.3f}")
    print(f"    words moved across a clip boundary: {moved[0]} against each clip alone, "
          f"{moved[1]} against the gold text" + (f" ({moved[2]})" if moved[2] else ""))
    audio_shortfall(clips, times)
    return {"naive_s": statistics.median(t_naive), "wer_naive": wer_naive,
            "wer_ours": wer_ours, "speed": speed, "model": naive_model, "moved": moved,
            "naive_txt": naive_txt, "our_txt": our_txt, "gold": [g for _, g in clips],
            "ours": ours}


def bench_dag(work: Path, meld: Path, hf: Path, clips, args, frames: dict, asr: dict) -> dict:
    """(c): the DAG end to end against the naive loops of (a) and (b)."""
    wall = run_workflow(work, meld, hf, args.shard_size)
    jobs = job_times(work)
    naive_total = asr["naive_s"] + frames["naive every-frame JPEG"]
    rest = [r for r in jobs if r not in ("transcribe", "frames")]
    startup = timed(lambda: subprocess.run([str(SNAKEMAKE), "--version"],
                                           capture_output=True, check=True))
    print(f"\n(c) `snakemake --cores 2 preprocess`, {len(clips)} clips in shards of "
          f"{args.shard_size}, against the naive loops of (a) and (b):")
    print(f"    {'step':30s} {'meldflow':>9s} {'naive':>8s} {'ratio':>6s}  peak RSS")
    for name, (secs, rss), base, note in (
        ("transcription (sum of jobs)", jobs["transcribe"], asr["naive_s"],
         f"  corpus WER {corpus_wer(clips, dag_transcripts(work, clips)):.3f} "
         f"(naive {asr['wer_naive']:.3f})"),
        ("frames (sum of jobs)", jobs["frames"], frames["naive every-frame JPEG"],
         f"  {jobs['frames'][0] / frames['bare decode']:.2f}x a bare decode"),
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
    bare = frames["bare decode"]
    print(f"    frames job {jobs['frames'][0] / bare:.2f}x a bare decode (target <= 1.1x: "
          f"{'met' if jobs['frames'][0] <= 1.1 * bare else 'NOT met'})")
    dag_txt = dag_transcripts(work, clips)
    moved = moved_words(clips, asr["naive_txt"], dag_txt)
    print(f"    words moved by the DAG's transcripts: {moved[0]} against each clip alone, "
          f"{moved[1]} against the gold text" + (f" ({moved[2]})" if moved[2] else ""))
    listed, total, why = audit_share(work)
    print(f"    audit: {listed} of {total} rows listed ({listed / total:.0%}; target < 10%: "
          f"{'met' if listed < 0.1 * total else 'NOT met'})"
          + (f": {', '.join(f'{n} {w}' for w, n in why.most_common())}" if why else ""))
    if startup > 5:
        print("    (Snakemake's SLURM plugin runs `scontrol show config` when it loads; "
              "where SLURM's client is installed and no controller answers, that waits "
              "about 9 s)")
    return {"moved": moved, "wer": corpus_wer(clips, dag_txt),
            "transcription": asr["naive_s"] / jobs["transcribe"][0],
            "end_to_end": naive_total / wall}


VARIANTS = {"full": "audio as long as the video, speech ending 0.9 s before both",
            "short": "the AAC track ends --audio-short s before the video",
            "tight": "each clip cut to its speech: first to last sample, CSV times alike"}


def run_variant(args, tmp: Path, name: str, breakdown: bool) -> dict:
    """(a)-(c), and (d) if ``breakdown``, on one variant of the clips; the summary row."""
    from meldflow.model_cache.stage import stage_whisper

    audio_short_s = args.audio_short if name == "short" else 0.0
    print(f"\n=== variant {name}: {VARIANTS[name]} ===")
    root = tmp / name
    clips, times = prepare(args, root / "meld", audio_short_s, tight=name == "tight")
    hf = tmp / "hf"
    if not hf.is_dir():
        stage_whisper(hf, "tiny.en", source="package")
    frames = bench_frames(clips, root, args.repeats, args.frames)
    os.environ["HF_HOME"], os.environ["HF_HUB_OFFLINE"] = str(hf), "1"
    asr = bench_transcription(clips, times, hf, args.repeats)
    work = root / "work"
    dag = bench_dag(work, root / "meld", hf, clips, args, frames, asr)
    if args.keep_aligned and breakdown:
        shutil.copytree(work / "results" / "aligned", args.keep_aligned, dirs_exist_ok=True)
    if breakdown:
        print(f"\n(d) where the naive loop's transcription time goes (fastest of "
              f"{args.repeats} passes each, some by difference):")
        for part, share in transcription_breakdown(asr["model"], clips, args.repeats):
            note = "  (below the run-to-run noise)" if share < 0.02 else ""
            print(f"    {part:44s} {share:6.1%}{note}")
    return {"variant": name, "asr": asr, "dag": dag}


def summary(rows: list[dict]) -> None:
    """The variants side by side: words moved, WER, and the ratios to the naive loops."""
    print("\nsummary (ratios: the naive loop's time over meldflow's, same run)")
    print(f"    {'variant':8s} {'moved/alone':>11s} {'moved/gold':>10s} {'WER':>6s} "
          f"{'naive WER':>9s} {'transcr.':>8s} {'DAG transcr.':>12s} {'end to end':>10s}")
    for r in rows:
        asr, dag = r["asr"], r["dag"]
        print(f"    {r['variant']:8s} {asr['moved'][0]:11d} {asr['moved'][1]:10d} "
              f"{asr['wer_ours']:6.3f} {asr['wer_naive']:9.3f} {asr['speed']:7.2f}x "
              f"{dag['transcription']:11.2f}x {dag['end_to_end']:9.2f}x")
    asr = {r["variant"]: r["asr"] for r in rows}
    if {"full", "tight"} <= asr.keys():
        print(f"WER of tight against full on these {len(asr['full']['gold'])} clips (95% "
              "paired bootstrap interval; (e) measures it on more):")
        for who, key in (("ours", "our_txt"), ("naive", "naive_txt")):
            print(gap_line(who, asr["full"]["gold"], asr["full"][key], asr["tight"][key]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=88)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--shard-size", type=int, default=88,
                    help="utterances per shard in the end-to-end run (default 88)")
    ap.add_argument("--variants", default="full,short,tight",
                    help="; ".join(f"{k}: {v}" for k, v in VARIANTS.items())
                         + " (default all three)")
    ap.add_argument("--audio-short", type=float, default=0.8,
                    help="seconds the short variant's audio ends before its video (0.8)")
    ap.add_argument("--meld-csv", type=Path, default=SHARED_CSV,
                    help="MELD annotation CSV to draw utterances and durations from; "
                         "synthetic clips when it is absent")
    ap.add_argument("--no-breakdown", action="store_true",
                    help="skip (d), where the naive loop's time goes (four more passes)")
    ap.add_argument("--wer-clips", type=int, default=300,
                    help="(e): utterances on which tight's WER is compared with full's "
                         "(default 300, built once and cached; 0 skips it)")
    ap.add_argument("--keep-aligned", type=Path, metavar="DIR",
                    help="copy the DAG's aligned shards (first variant) to DIR (for "
                         "bench_train.py --aligned DIR: the reader on MELD-like frames)")
    args = ap.parse_args()
    os.environ["TQDM_DISABLE"] = "1"  # the jobs' progress bars, here and in the DAG
    tmp = Path(tempfile.mkdtemp(prefix="meldflow-bench-"))
    try:
        names = [v.strip() for v in args.variants.split(",")]
        if set(names) - VARIANTS.keys():
            ap.error(f"--variants: unknown {sorted(set(names) - VARIANTS.keys())}; "
                     f"choose from {', '.join(VARIANTS)}")
        rows = [run_variant(args, tmp, name, breakdown=i == 0 and not args.no_breakdown)
                for i, name in enumerate(names)]
        summary(rows)
        if {"full", "tight"} <= set(names) and args.wer_clips and args.meld_csv.is_file():
            larger_draw(args.meld_csv, max(args.wer_clips, args.clips), rows[0]["asr"]["ours"],
                        rows[0]["asr"]["model"])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
