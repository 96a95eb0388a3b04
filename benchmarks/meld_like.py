"""MELD-like clips for the benchmarks: MELD's utterances spoken by espeak-ng on noisy
1280x720 H.264 + AAC, as long as the CSV says (or cut to the speech: ``tight``); cached
under ~/.cache/meldflow/bench-clips/."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import tempfile
import wave
from pathlib import Path

from meldflow.sample_data import LINES, VOICES


def trim_silence(wav: Path) -> float:
    """Cut ``wav``'s leading and trailing silence, so that its speech starts at its first
    sample and ends at its last (a clip cut mid-sentence from an episode); its new length."""
    import numpy as np

    with wave.open(str(wav)) as w:
        params, pcm = w.getparams(), np.frombuffer(w.readframes(w.getnframes()), np.int16)
    loud = np.nonzero(np.abs(pcm) > 0.01 * 32768)[0]
    pcm = pcm[loud[0]:loud[-1] + 1]
    with wave.open(str(wav), "wb") as w:
        w.setparams(params)
        w.writeframes(pcm.tobytes())
    return len(pcm) / params.framerate


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


SHARED_CSV = Path(__file__).resolve().parents[2] / "shared" / "meld" / "train_sent_emo.csv"
CLIPS_VERSION = 4  # bump when the way clips are made changes (a new cache folder)
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


def _speakable(a) -> bool:
    return (a.start_s is not None and a.end_s is not None and bool(a.utterance.strip())
            and 1.5 <= a.end_s - a.start_s <= 30)


def _speed(a, wav: Path) -> int | None:
    """espeak-ng's words per minute for ``a``'s line to end SPEECH_ENDS_BEFORE_S before its
    clip does (at most MAX_SPEED), else None."""
    room = a.end_s - a.start_s - SPEECH_ENDS_BEFORE_S
    length = _speech(a.utterance, wav, SPEED)
    if length <= room:
        return SPEED
    speed = int(SPEED * length / room) + 1  # MELD's actors speak faster than espeak
    return speed if speed <= MAX_SPEED else None


def plan_utterances(csv_path: Path, n: int, seed: int) -> list[dict]:
    """The first ``n`` utterances (in a seeded order) whose line espeak-ng can speak, at
    most MAX_SPEED, within the CSV's length less SPEECH_ENDS_BEFORE_S: text, times, speed;
    each a dialogue of its own. The order does not depend on ``n``: a smaller set is a
    prefix of a larger one."""
    from meldflow.annotations import read_annotations

    anns = [a for a in read_annotations(csv_path) if _speakable(a)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "s.wav"
        for a in random.Random(seed).sample(anns, len(anns)):
            if len(rows) == n:
                break
            speed = _speed(a, wav)
            if speed is not None:
                rows.append({"clip": f"dia{len(rows)}_utt0.mp4", "text": a.utterance,
                             "start": a.start_s, "end": a.end_s, "speed": speed})
    return rows


def plan_dialogues(csv_path: Path, n: int, seed: int) -> list[dict]:
    """``n`` utterances of whole dialogues, as a shard holds them: dialogues in a seeded
    order, each with its lines in order, those plan_utterances would draw (a line espeak-ng
    cannot fit, or shorter than 1.5 s, is left out; the dialogue keeps the rest); the last
    dialogue is cut at ``n``. Clips ``dia{k}_utt{j}.mp4``: the k-th dialogue drawn, its j-th
    line kept. A smaller set is a prefix of a larger one."""
    from meldflow.annotations import read_annotations

    dialogues: dict[int, list] = {}
    for a in read_annotations(csv_path):
        dialogues.setdefault(a.dialogue_id, []).append(a)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "s.wav"
        k = 0
        for dia in random.Random(seed).sample(sorted(dialogues), len(dialogues)):
            j = 0
            for a in sorted(dialogues[dia], key=lambda a: a.utterance_id):
                if len(rows) == n:
                    return rows
                speed = _speed(a, wav) if _speakable(a) else None
                if speed is not None:
                    rows.append({"clip": f"dia{k}_utt{j}.mp4", "text": a.utterance,
                                 "start": a.start_s, "end": a.end_s, "speed": speed})
                    j += 1
            k += bool(j)
    return rows


def make_meld_like_clips(csv_path: Path, n: int, seed: int = 3, cache: Path | None = None,
                         audio_short_s: float = 0.0, tight: bool = False,
                         workers: int = 2) -> tuple[Path, list[dict]]:
    """``n`` clips of the utterances of whole dialogues drawn from a MELD CSV
    (:func:`plan_dialogues`), as long as the CSV says, their AAC track ending
    ``audio_short_s`` before the video; cached. ``tight``: each clip is cut to
    its speech instead (first to last sample) and its CSV times say so. ``workers`` clips
    are encoded at once; an interrupted build resumes where it stopped.

    Returns (folder, rows): each row has the clip, the text and the CSV's times. The same
    utterances and speech for every variant.
    """
    from concurrent.futures import ThreadPoolExecutor

    key = f"{n}:{seed}:{CLIPS_VERSION}:{audio_short_s:g}" + (":tight" if tight else "")
    digest = hashlib.sha256(csv_path.read_bytes() + key.encode())
    root = cache or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    folder = root / "meldflow" / "bench-clips" / digest.hexdigest()[:16]
    if (folder / "clips.json").is_file():
        return folder, json.loads((folder / "clips.json").read_text())
    tmp = folder.with_name(folder.name + ".part")
    tmp.mkdir(parents=True, exist_ok=True)
    plan = tmp / "plan.json"
    if not plan.is_file():
        plan.write_text(json.dumps(plan_dialogues(csv_path, n, seed), indent=1))
    rows = json.loads(plan.read_text())

    def encode(row: dict) -> None:
        clip = tmp / row["clip"]
        if clip.is_file():  # encoded before an interruption (renamed when complete)
            return
        wav, part = clip.with_suffix(".wav"), clip.with_suffix(".part.mp4")
        _speech(row["text"], wav, row["speed"])
        if tight:
            row["end"] = row["start"] + round(trim_silence(wav), 3)
        encode_clip(wav, row["end"] - row["start"], part, audio_short_s)
        wav.unlink()
        os.replace(part, clip)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(encode, rows))
    if tight:  # the rows' lengths are the speech's (encode() set them; re-read if resumed)
        for r in rows:
            r["end"] = r["start"] + round(_container_seconds(tmp / r["clip"]), 3)
    (tmp / "clips.json").write_text(json.dumps(rows, indent=1))
    plan.unlink()
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return folder, rows


def _container_seconds(clip: Path) -> float:
    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of",
                          "csv=p=0", str(clip)], capture_output=True, text=True, check=True)
    return float(out.stdout)
