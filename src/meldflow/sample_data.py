"""Generate meldflow's own small sample in the MELD.Raw layout.

Speech comes from espeak-ng, video from ffmpeg: a background whose colour follows the
emotion label (so a model can learn from frames) and a moving box (so frames differ).
The lines are written for this sample, not taken from MELD. A few deliberate faults
mirror the ones MELD users meet; ``FAULTS`` lists them.
"""

from __future__ import annotations

import csv
import random
import shutil
import subprocess
import tempfile
import wave
from pathlib import Path

from meldflow import MeldflowError
from meldflow.annotations import CLIP_DIRS

COLOURS = {  # emotion -> base RGB of the background
    "neutral": (128, 128, 128), "joy": (230, 200, 40), "surprise": (240, 120, 30),
    "anger": (200, 30, 30), "sadness": (40, 70, 200), "disgust": (60, 160, 60),
    "fear": (120, 40, 160),
}
LINES = {
    "neutral": ["I think the meeting starts at nine.", "Can you pass me the remote?",
                "We should probably order lunch soon.", "The bus comes every twenty minutes.",
                "She said she’d call back later.", "Let me check the calendar first."],
    "joy": ["This is the best day ever!", "I got the job, I actually got it!",
            "You guys are the greatest friends.", "We won tickets to the concert!",
            "I love this song so much.", "That’s wonderful news, congratulations!"],
    "surprise": ["Wait, you’re moving to Paris?", "No way, is that really you?",
                 "What? Since when do you play the drums?", "You did all of this yourself?",
                 "Oh my, I did not see that coming.", "Seriously? Right now?"],
    "anger": ["Stop touching my stuff!", "I can’t believe you lied to me again.",
              "This is completely unacceptable.", "Get out of my apartment right now.",
              "You never listen to a word I say!", "Don’t you dare walk away from me."],
    "sadness": ["I really miss how things used to be.", "She’s not coming back, is she…",
                "I just feel so alone lately.", "We lost the house last week.",
                "Nobody remembered my birthday.", "It’s over between us."],
    "disgust": ["Ew, what is that smell?", "That is the grossest thing I’ve ever seen.",
                "Please don’t eat that off the floor.", "Yuck, there’s hair in my soup.",
                "That’s disgusting, put it away.", "I can’t even look at it."],
    "fear": ["Did you hear that noise downstairs?", "I’m scared to open the letter.",
             "Please don’t leave me here alone.", "What if the plane crashes?",
             "Something is moving in the closet.", "I think someone is following us."],
}
EMOTION_WEIGHTS = {"neutral": 3, "joy": 2, "surprise": 2, "anger": 2, "sadness": 2,
                   "disgust": 1, "fear": 1}
SPEAKERS = ["Avery", "Blake", "Casey", "Devon", "Emery", "Frankie"]
VOICES = {"Avery": ("en-us+f3", 165, 60), "Blake": ("en-us+m3", 150, 40),
          "Casey": ("en-us+f2", 175, 70), "Devon": ("en-us+m1", 145, 35),
          "Emery": ("en-us+f4", 160, 55), "Frankie": ("en-us+m2", 155, 45)}
DIALOGUES = {"train": 16, "dev": 5, "test": 5}
HEADER = ["Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID",
          "Utterance_ID", "Season", "Episode", "StartTime", "EndTime"]

# (split, dialogue, utterance) -> fault, mirroring what MELD.Raw holds.
FAULTS = {
    ("train", 2, 1): "truncated",    # like train dia125_utt3: no moov atom
    ("train", 4, 2): "empty",        # a zero-byte file
    ("train", 6, 0): "bad_times",    # EndTime before StartTime
    ("dev", 1, 2): "missing",        # like dev dia110_utt7
    ("test", 2, 3): "no_audio",      # some test clips have no sound
    ("test", 3, 1): "only_duplicate",  # only the final_videos_test copy exists
}
EXTRA = {"dev": "unannotated", "test": "duplicate"}


def sentiment_of(emotion: str, rng: random.Random) -> str:
    if emotion == "neutral":
        return "neutral"
    if emotion == "joy":
        return "positive"
    if emotion == "surprise":
        return rng.choice(["positive", "positive", "negative"])
    return "negative"


def _timestamp(seconds: float) -> str:
    ms = int(round(seconds * 1000))
    h, rem = divmod(ms, 3_600_000)
    m, rem = divmod(rem, 60_000)
    s, ms = divmod(rem, 1000)
    return f"{h:02d}:{m:02d}:{s:02d},{ms:03d}"


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise MeldflowError(f"{cmd[0]} failed: {proc.stderr.strip()[-500:]}")


def make_clip(out: Path, text: str, speaker: str, emotion: str, rng: random.Random,
              size: tuple[int, int], audio: bool = True, extra_seconds: float = 0.4) -> float:
    """Write one H.264+AAC clip of ``speaker`` saying ``text``; returns its duration."""
    voice, speed, pitch = VOICES[speaker]
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "speech.wav"
        _run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(wav), text])

        with wave.open(str(wav)) as w:
            duration = w.getnframes() / w.getframerate() + extra_seconds
        r, g, b = (min(255, max(0, c + rng.randint(-25, 25))) for c in COLOURS[emotion])
        w_, h_ = size
        box = max(8, h_ // 5)
        speed_px = rng.randint(20, 90)
        y = rng.randint(0, h_ - box)
        shade = rng.choice(["white", "black", "0x404040", "0xd0d0d0"])
        cmd = ["ffmpeg", "-nostdin", "-y", "-loglevel", "error",
               "-f", "lavfi", "-i", f"color=c=0x{r:02x}{g:02x}{b:02x}:s={w_}x{h_}:r=15",
               "-f", "lavfi", "-i", f"color=c={shade}:s={box}x{box}:r=15"]
        if audio:
            cmd += ["-i", str(wav)]
        cmd += ["-filter_complex",
                f"[0:v][1:v]overlay=x='mod(t*{speed_px},{w_})':y={y}:shortest=1[v]",
                "-map", "[v]"]
        if audio:
            cmd += ["-map", "2:a", "-c:a", "aac", "-b:a", "48k", "-ac", "1", "-af", "apad"]
        cmd += ["-t", f"{duration:.3f}", "-c:v", "libx264", "-preset", "veryfast", "-crf", "30",
                "-pix_fmt", "yuv420p", "-g", "150", str(out)]
        _run(cmd)
    return duration


def make_sample(out: str | Path, seed: int, size: tuple[int, int]) -> Path:
    """Write the whole sample (CSVs and clips) under ``out``, replacing what is there."""
    for tool in ("espeak-ng", "ffmpeg"):
        if shutil.which(tool) is None:
            raise MeldflowError(f"{tool} is needed to generate the sample (apt-get install {tool})")
    out = Path(out)
    rng = random.Random(seed)
    emotions, weights = zip(*EMOTION_WEIGHTS.items(), strict=True)
    sr = 0
    for split, n_dialogues in DIALOGUES.items():
        folder = out / CLIP_DIRS[split]
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        rows = []
        clock = rng.uniform(60, 300)
        for dia in range(n_dialogues):
            season, episode = rng.randint(1, 10), rng.randint(1, 24)
            pair = rng.sample(SPEAKERS, 2)
            need = max((u + 1 for (sp, d, u) in FAULTS if (sp, d) == (split, dia)), default=0)
            for utt in range(max(rng.randint(3, 5), need)):
                emotion = rng.choices(emotions, weights)[0]
                text = rng.choice(LINES[emotion])
                speaker = pair[utt % 2]
                fault = FAULTS.get((split, dia, utt))
                clip = folder / f"dia{dia}_utt{utt}.mp4"
                duration = make_clip(clip, text, speaker, emotion, rng, size,
                                     audio=fault != "no_audio")
                if fault == "truncated":
                    data = clip.read_bytes()
                    clip.write_bytes(data[: len(data) * 3 // 5])
                elif fault == "empty":
                    clip.write_bytes(b"")
                elif fault == "missing":
                    clip.unlink()
                elif fault == "only_duplicate":
                    clip.rename(folder / f"final_videos_test{clip.name}")
                start, end = clock, clock + duration
                if fault == "bad_times":
                    start, end = end, start
                clock += duration + rng.uniform(0.1, 1.5)
                sr += 1
                rows.append([sr, text, speaker, emotion, sentiment_of(emotion, rng), dia, utt,
                             season, episode, _timestamp(start), _timestamp(end)])
        extra = EXTRA.get(split)
        if extra == "unannotated":  # a clip with no annotation row: listed, never processed
            make_clip(folder / "dia99_utt0.mp4", "This line has no annotation.", "Avery",
                      "neutral", rng, size)
        elif extra == "duplicate":  # the test folder's final_videos_test copies
            shutil.copyfile(folder / "dia0_utt0.mp4", folder / "final_videos_testdia0_utt0.mp4")
        with (out / f"{split}_sent_emo.csv").open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(HEADER)
            writer.writerows(rows)
    (out / "README.md").write_text(
        "# meldflow sample\n\nGenerated by `meldflow make-sample` (src/meldflow/sample_data.py):\n"
        "synthetic speech (espeak-ng) and video (ffmpeg) in the MELD.Raw layout. The lines\n"
        "are meldflow's own. The background colour follows the emotion label.\n\n"
        "Deliberate faults: a truncated clip (train dia2_utt1), an empty file (train\n"
        "dia4_utt2), EndTime before StartTime (train dia6_utt0), a missing clip (dev\n"
        "dia1_utt2), a clip with no annotation row (dev dia99_utt0), a clip without audio\n"
        "(test dia2_utt3), a final_videos_test duplicate (test dia0_utt0) and a clip present\n"
        "only as its final_videos_test copy (test dia3_utt1).\n"
    )
    return out
