"""Preprocessing benchmark: frames and transcription against naive baselines, same run.

Clips like MELD's (1280x720 H.264 + AAC, noisy picture so the bitrate is realistic): with
the real MELD CSV at ../shared/meld/train_sent_emo.csv (or --meld-csv), N utterances drawn
from it, their text spoken by espeak-ng (sped up, to at most 260 words a minute, to end
0.9 s before the clip does; lines that would need faster speech are not drawn) and each
clip as long as the CSV's EndTime - StartTime; built once and cached under
~/.cache/meldflow/bench-clips/. Two variants of the same clips (--variants): `full`, the
AAC track as long as the video, and `short`, the AAC track ending --audio-short seconds
(0.8) before the video, what `ffmpeg -shortest` with x264 gives. Without the CSV, N
synthetic clips (the sample's lines, speech length + 0.5 s). Then, per variant, ratios,
never lone times:
  (a) frame extraction in-process vs a bare decode (`ffmpeg -an -f null`) and vs decoding
      every frame to JPEG files;
  (b) transcription clips/s and corpus WER in-process vs a naive loop (one model, one
      clip at a time, beam 5, Whisper's default options), with how far each clip's audio
      falls short of the CSV's length and how many clips that flags `audio_short`;
  (c) `snakemake --cores 2 preprocess` from scratch on the same clips: each step's job
      time (from the DAG's own benchmark files, with peak memory) against the naive
      loops of (a) and (b), the wall clock against their sum, and the audit's length;
  (d) where the naive loop's transcription time goes (first variant only).

Run: .venv/bin/python benchmarks/bench_preprocess.py [--clips 88] [--repeats 2]
"""

from __future__ import annotations

import argparse
import collections
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

from meldflow.preprocess.sample import LINES, VOICES


def encode_clip(wav: Path, seconds: float, clip: Path, audio_short_s: float = 0.0) -> Path:
    """A MELD-sized clip: noisy 1280x720 H.264 picture, ``seconds`` long; ``wav`` padded
    to ``seconds`` less ``audio_short_s`` (AAC), so the audio track may end first."""
    subprocess.run(
        ["ffmpeg", "-nostdin", "-y", "-loglevel", "error", "-f", "lavfi", "-i",
         "testsrc2=s=1280x720:r=24", "-i", str(wav), "-vf", "noise=alls=8:allf=t",
         "-map", "0:v", "-map", "1:a", "-af",
         f"apad=whole_dur={seconds - audio_short_s:.3f},atrim=0:{seconds - audio_short_s:.3f}",
         "-t", f"{seconds:.3f}", "-c:v", "libx264", "-preset", "veryfast", "-crf", "26",
         "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "96k", str(clip)], check=True)
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
CLIPS_VERSION = 3  # bump when the way clips are made changes (a new cache folder)
SPEECH_ENDS_BEFORE_S = 0.9  # speech ends this long before the clip: both variants hold it
# espeak-ng's words per minute: 170 by default, faster where the line would overrun its
# clip, up to what actors speak (MELD's lines run at about 150-250); a line that does not
# fit even then is not drawn (at 500 wpm, as before, a quarter of the lines were noise
# that Whisper could not follow, WER > 0.75).
SPEED, MAX_SPEED = 170, 260


def _speech(text: str, wav: Path, speed: int) -> float:
    """espeak-ng's reading of ``text`` into ``wav``; its length in seconds."""
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", str(speed), "-w", str(wav), text],
                   check=True, capture_output=True)
    with wave.open(str(wav)) as w:
        return w.getnframes() / w.getframerate()


def plan_utterances(csv_path: Path, n: int, seed: int) -> list[dict]:
    """The first ``n`` utterances (in a seeded order) whose line espeak-ng can speak, at
    most MAX_SPEED, within the CSV's length less SPEECH_ENDS_BEFORE_S: text, times, speed.
    The order does not depend on ``n``: a smaller set is a prefix of a larger one."""
    from meldflow.annotations import read_annotations

    anns = [a for a in read_annotations(csv_path)
            if a.start_s is not None and a.end_s is not None and a.utterance.strip()
            and 1.5 <= a.end_s - a.start_s <= 30]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "s.wav"
        for a in random.Random(seed).sample(anns, len(anns)):
            if len(rows) == n:
                break
            room = a.end_s - a.start_s - SPEECH_ENDS_BEFORE_S
            speed = SPEED
            length = _speech(a.utterance, wav, speed)
            if length > room:  # MELD's actors speak faster than espeak: fit the clip
                speed = int(speed * length / room) + 1
                if speed > MAX_SPEED:
                    continue
            rows.append({"clip": f"dia{len(rows)}_utt0.mp4", "text": a.utterance,
                         "start": a.start_s, "end": a.end_s, "speed": speed})
    return rows


def make_meld_like_clips(csv_path: Path, n: int, seed: int = 3, cache: Path | None = None,
                         audio_short_s: float = 0.0,
                         workers: int = 2) -> tuple[Path, list[dict]]:
    """``n`` clips of utterances drawn from a MELD CSV, as long as the CSV says, their AAC
    track ending ``audio_short_s`` before the video; cached. ``workers`` clips are encoded
    at once; an interrupted build resumes where it stopped.

    Returns (folder, rows): each row has the clip, the text and the CSV's times. The same
    utterances and speech for every ``audio_short_s``.
    """
    from concurrent.futures import ThreadPoolExecutor

    key = f"{n}:{seed}:{CLIPS_VERSION}:{audio_short_s:g}"
    digest = hashlib.sha256(csv_path.read_bytes() + key.encode())
    root = cache or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    folder = root / "meldflow" / "bench-clips" / digest.hexdigest()[:16]
    if (folder / "clips.json").is_file():
        return folder, json.loads((folder / "clips.json").read_text())
    tmp = folder.with_name(folder.name + ".part")
    tmp.mkdir(parents=True, exist_ok=True)
    plan = tmp / "plan.json"
    if not plan.is_file():
        plan.write_text(json.dumps(plan_utterances(csv_path, n, seed), indent=1))
    rows = json.loads(plan.read_text())

    def encode(row: dict) -> None:
        clip = tmp / row["clip"]
        if clip.is_file():  # encoded before an interruption (renamed when complete)
            return
        wav, part = clip.with_suffix(".wav"), clip.with_suffix(".part.mp4")
        _speech(row["text"], wav, row["speed"])
        encode_clip(wav, row["end"] - row["start"], part, audio_short_s)
        wav.unlink()
        os.replace(part, clip)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(encode, rows))
    (tmp / "clips.json").write_text(json.dumps(rows, indent=1))
    plan.unlink()
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

    from meldflow.preprocess.wer import normalise_for_wer

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
    from meldflow.preprocess.frames import extract_frames

    for c, _ in clips:
        res = extract_frames(c, frames_per_utterance=k, frame_size=256, max_clip_seconds=30.0)
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


def write_csv(meld: Path, clips, times) -> None:
    """The train split's annotation CSV for ``clips``: their text and CSV times."""
    with (meld / "train_sent_emo.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID",
                    "Utterance_ID", "Season", "Episode", "StartTime", "EndTime"])
        for i, ((_, text), (start, end)) in enumerate(zip(clips, times, strict=True)):
            w.writerow([i + 1, text, "A", "neutral", "neutral", i, 0, 1, 1,
                        _timestamp(start), _timestamp(end)])


def prepare(args, meld: Path, audio_short_s: float):
    """A MELD.Raw-like folder of the variant's clips: (clips as (path, text), CSV times)."""
    if args.meld_csv.is_file():
        folder, made = make_meld_like_clips(args.meld_csv, args.clips,
                                            audio_short_s=audio_short_s)
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
    import pyarrow as pa
    from faster_whisper import WhisperModel

    from meldflow.preprocess.transcribe import Transcriber, model_dir, transcribe_rows
    from meldflow.settings import Settings

    naive_model = WhisperModel(str(model_dir("tiny.en", hf)[0]), device="cpu",
                               compute_type="int8")
    ours = Transcriber(Settings(hf_home=str(hf), whisper_device="cpu"), cpu_threads=2)
    n = len(clips)
    rows = pa.table({"split": ["train"] * n, "dialogue_id": list(range(n)),
                     "utterance_id": [0] * n, "clip_path": [str(c) for c, _ in clips],
                     "status": ["ok"] * n, "utterance": [t for _, t in clips],
                     "start_s": [s for s, _ in times], "end_s": [e for _, e in times]})

    def naive_asr():
        out = []
        for c, _ in clips:
            segs, _ = naive_model.transcribe(str(c), beam_size=5, word_timestamps=True)
            out.append(" ".join(s.text.strip() for s in segs))
        return out

    t_naive, t_ours, naive_txt, our_txt = [], [], None, None
    for _ in range(repeats):
        s = time.perf_counter()
        naive_txt = naive_asr()
        t_naive.append(time.perf_counter() - s)
        s = time.perf_counter()
        our_txt = transcribe_rows(rows, ours).column("transcript").to_pylist()
        t_ours.append(time.perf_counter() - s)
    speed = statistics.median(t_naive) / statistics.median(t_ours)
    wer_naive, wer_ours = corpus_wer(clips, naive_txt), corpus_wer(clips, our_txt)
    print("\n(b) transcription in-process (tiny.en, CPU int8), median of", repeats, "runs")
    print(f"    ours: beam {ours.beam_size}, clips packed into {ours.pack_seconds:g} s "
          f"windows, {ours.workers} packs at once")
    print(f"    clips/s ratio ours/naive  {speed:.2f}x "
          f"(target >= 2x: {'met' if speed >= 2 else 'NOT met'})")
    print(f"    corpus WER naive {wer_naive:.3f}  ours {wer_ours:.3f}")
    audio_shortfall(clips, times)
    return {"naive_s": statistics.median(t_naive), "wer_naive": wer_naive,
            "wer_ours": wer_ours, "speed": speed, "model": naive_model}


def audit_share(work: Path) -> tuple[int, int, collections.Counter]:
    """(rows the audit lists, rows in all, how often each reason) of a `preprocess` run."""
    import pyarrow.parquet as pq

    with (work / "results" / "manifest" / "audit.tsv").open() as f:
        listed = list(csv.DictReader(f, delimiter="\t"))
    why = collections.Counter(w for r in listed for w in r["why"].split(","))
    total = pq.read_metadata(work / "results" / "manifest" / "train.parquet").num_rows
    return len(listed), total, why


def bench_dag(work: Path, meld: Path, hf: Path, clips, args, frames: dict, asr: dict) -> None:
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
         f"  corpus WER {corpus_wer(clips, dag_transcripts(work)):.3f} "
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
    listed, total, why = audit_share(work)
    print(f"    audit: {listed} of {total} rows listed ({listed / total:.0%}; target < 10%: "
          f"{'met' if listed < 0.1 * total else 'NOT met'})"
          + (f": {', '.join(f'{n} {w}' for w, n in why.most_common())}" if why else ""))
    if startup > 5:
        print("    (Snakemake's SLURM plugin runs `scontrol show config` when it loads; "
              "where SLURM's client is installed and no controller answers, that waits "
              "about 9 s)")


def run_variant(args, tmp: Path, name: str, breakdown: bool) -> None:
    """(a)-(c), and (d) if ``breakdown``, on one variant of the clips."""
    from meldflow.models.stage import stage_whisper

    audio_short_s = {"full": 0.0, "short": args.audio_short}[name]
    print(f"\n=== variant {name}: the AAC track ends {audio_short_s:g} s before the video ===")
    root = tmp / name
    clips, times = prepare(args, root / "meld", audio_short_s)
    hf = tmp / "hf"
    if not hf.is_dir():
        stage_whisper(hf, "tiny.en", source="package")
    frames = bench_frames(clips, root, args.repeats, args.frames)
    os.environ["HF_HOME"], os.environ["HF_HUB_OFFLINE"] = str(hf), "1"
    asr = bench_transcription(clips, times, hf, args.repeats)
    work = root / "work"
    bench_dag(work, root / "meld", hf, clips, args, frames, asr)
    if args.keep_aligned and breakdown:
        shutil.copytree(work / "results" / "aligned", args.keep_aligned, dirs_exist_ok=True)
    if breakdown:
        print(f"\n(d) where the naive loop's transcription time goes (fastest of "
              f"{args.repeats} passes each, some by difference):")
        for part, share in transcription_breakdown(asr["model"], clips, args.repeats):
            note = "  (below the run-to-run noise)" if share < 0.02 else ""
            print(f"    {part:44s} {share:6.1%}{note}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=88)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--shard-size", type=int, default=88,
                    help="utterances per shard in the end-to-end run (default 88)")
    ap.add_argument("--variants", default="full,short",
                    help="full: audio as long as the video; short: the AAC track ends "
                         "--audio-short seconds early (default both)")
    ap.add_argument("--audio-short", type=float, default=0.8,
                    help="seconds the short variant's audio ends before its video (0.8)")
    ap.add_argument("--meld-csv", type=Path, default=SHARED_CSV,
                    help="MELD annotation CSV to draw utterances and durations from; "
                         "synthetic clips when it is absent")
    ap.add_argument("--keep-aligned", type=Path, metavar="DIR",
                    help="copy the DAG's aligned shards (first variant) to DIR (for "
                         "bench_train.py --aligned DIR: the reader on MELD-like frames)")
    args = ap.parse_args()
    os.environ["TQDM_DISABLE"] = "1"  # the jobs' progress bars, here and in the DAG
    tmp = Path(tempfile.mkdtemp(prefix="meldflow-bench-"))
    try:
        for i, name in enumerate(v.strip() for v in args.variants.split(",")):
            run_variant(args, tmp, name, breakdown=i == 0)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
