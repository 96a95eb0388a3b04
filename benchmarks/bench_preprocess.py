"""Preprocessing benchmark: frames and transcription against naive baselines, same run.

Clips like MELD's (1280x720 H.264 + AAC, noisy picture so the bitrate is realistic): with
the real MELD CSV at ../shared/meld/train_sent_emo.csv (or --meld-csv), N utterances drawn
from it, their text spoken by espeak-ng (sped up where the speech would overrun) and each
clip as long as the CSV's EndTime - StartTime; built once and cached under
~/.cache/meldflow/bench-clips/. Without the CSV, N synthetic clips (the sample's lines,
speech length + 0.5 s). Then prints ratios, never lone times:
  (a) frame extraction vs a bare decode (`ffmpeg -an -f null`) and vs decoding every frame
      to JPEG files;
  (b) transcription clips/s and WER vs a naive loop (one model, one clip at a time,
      beam 5, Whisper's default options);
  (c) peak memory (max RSS) of the `meldflow frames` and `meldflow transcribe` jobs.

Run: .venv/bin/python benchmarks/bench_preprocess.py [--clips 88] [--repeats 3]
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


def transcription_breakdown(model, clips) -> list[tuple[str, float]]:
    """Shares of one-clip-per-call transcription time (beam 5, word timestamps): audio
    decoding, features + encoder (one padded 30 s window per clip), beam search, word
    timestamps (cross-attention alignment) and the rest, each measured or by difference."""
    from faster_whisper.audio import decode_audio, pad_or_trim

    def run(**kw) -> float:
        start = time.perf_counter()
        for c, _ in clips:
            segs, _ = model.transcribe(str(c), **kw)
            list(segs)
        return time.perf_counter() - start

    start = time.perf_counter()
    audios = [decode_audio(str(c)) for c, _ in clips]
    t_audio = time.perf_counter() - start
    start = time.perf_counter()
    for a in audios:
        model.encode(pad_or_trim(model.feature_extractor(a)))
    t_encoder = time.perf_counter() - start
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


def peak_rss_mb(cmd: list[str]) -> tuple[float, float]:
    """(max RSS in MB, seconds) of one child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    err = proc.stderr.read().decode()
    proc.stderr.close()
    if status != 0:
        raise RuntimeError(f"{cmd[:2]} failed: {err[-2000:]}")
    return usage.ru_maxrss / 1024, elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=88)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--meld-csv", type=Path, default=SHARED_CSV,
                    help="MELD annotation CSV to draw utterances and durations from; "
                         "synthetic clips when it is absent")
    args = ap.parse_args()
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
        # (c) first, while this process is small: a forked child's peak RSS counts
        # what it inherited before exec.
        with (meld / "train_sent_emo.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID",
                        "Utterance_ID", "Season", "Episode", "StartTime", "EndTime"])
            for i, ((_, text), (start, end)) in enumerate(zip(clips, times, strict=True)):
                w.writerow([i + 1, text, "A", "neutral", "neutral", i, 0, 1, 1,
                            _timestamp(start), _timestamp(end)])
        cli = [sys.executable, "-m", "meldflow.cli"]
        ingest = tmp / "ingest.parquet"
        subprocess.run(cli + ["ingest", "--meld-dir", str(meld), "--split", "train",
                              "--shard-size", str(len(clips)), "--out", str(ingest)],
                       check=True, capture_output=True)
        print("\n(c) peak memory per job (max RSS), one shard of", len(clips), "clips:")
        for name, extra in (
            ("frames", ["--workers", "2"]),
            ("transcribe", ["--hf-home", str(hf), "--device", "cpu"]),
        ):
            mb, _ = peak_rss_mb(cli + [name, "--rows", str(ingest), "--shard", "0", "--out",
                                       str(tmp / f"{name}.parquet"), *extra])
            print(f"    meldflow {name:10s} {mb:7.0f} MB")

        # (a) frames: interleave the three so that machine noise hits all of them alike
        times = {"bare decode": [], "ours": [], "naive every-frame JPEG": []}
        for _ in range(args.repeats):
            times["bare decode"].append(timed(lambda: bare_decode(clips)))
            times["ours"].append(timed(lambda: our_frames(clips, args.frames)))
            times["naive every-frame JPEG"].append(
                timed(lambda: naive_frames(clips, tmp, args.frames)))
        med = {k: statistics.median(v) for k, v in times.items()}
        print("\n(a) frame extraction, median of", args.repeats, "runs, ratio to bare decode:")
        for k, v in med.items():
            print(f"    {k:24s} {v / med['bare decode']:.2f}x")
        print(f"    ours is {med['naive every-frame JPEG'] / med['ours']:.2f}x faster than naive; "
              f"target <= 1.25x of bare decode: "
              f"{'met' if med['ours'] <= 1.25 * med['bare decode'] else 'NOT met'}")

        # (b) transcription
        os.environ["HF_HOME"], os.environ["HF_HUB_OFFLINE"] = str(hf), "1"
        import pyarrow as pa
        from faster_whisper import WhisperModel

        from meldflow.transcribe import Transcriber, model_dir, transcribe_rows, word_error_rate

        naive_model = WhisperModel(str(model_dir("tiny.en", hf)[0]), device="cpu",
                                   compute_type="int8")
        ours = Transcriber("tiny.en", hf, device="cpu")
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

        def mean_wer(txt):
            return statistics.mean(word_error_rate(g, h) for (_, g), h in zip(clips, txt,
                                                                              strict=True))

        speed = statistics.median(t_naive) / statistics.median(t_ours)
        dwer = mean_wer(our_txt) - mean_wer(naive_txt)
        print("\n(b) transcription (tiny.en, CPU int8), median of", args.repeats, "runs;")
        print(f"    ours: beam {ours.beam_size}, clips packed into {ours.pack_seconds:g} s windows")
        print(f"    clips/s ratio ours/naive  {speed:.2f}x "
              f"(target >= 2x: {'met' if speed >= 2 else 'NOT met'})")
        print(f"    WER naive {mean_wer(naive_txt):.3f}  ours {mean_wer(our_txt):.3f}  "
              f"(difference {dwer:+.3f}; target <= +0.02: {'met' if dwer <= 0.02 else 'NOT met'})")

        print("\n(d) where the naive loop's transcription time goes (one pass each, "
              "by difference):")
        for name, share in transcription_breakdown(naive_model, clips):
            print(f"    {name:44s} {share:6.1%}")

    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
