"""Helpers the tests share: paths, the venv, clip makers, configs, weights (fixtures are
in conftest.py)."""

import csv
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from meldflow.shard_schema import FRAMES_SCHEMA, INGEST_SCHEMA, TRANSCRIPT_SCHEMA

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "src" / "meldflow" / "data" / "sample"
SHARED_MELD = REPO.parent / "shared" / "meld"
BIN = Path(sys.executable).parent
IN_CI = os.environ.get("CI", "").lower() == "true"
TRAIN_CSV = str(SAMPLE / "train_sent_emo.csv")
DEV_CSV = str(SAMPLE / "dev_sent_emo.csv")


def need_tool(name: str) -> str:
    """Path of a tool the setup installs: a failure in CI, a skip elsewhere."""
    path = shutil.which(name) or (str(BIN / name) if (BIN / name).exists() else None)
    if path is None:
        msg = f"{name} not found; `make setup` installs it"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def env_with_venv() -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def run_snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    need_tool("ffmpeg")
    cmd = [str(BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "-d", str(workdir),
           "--cores", "2", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env_with_venv(), cwd=workdir)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def make_workdir(root: Path, hf_home: Path, **overrides) -> Path:
    """A working folder whose config points at the bundled sample and ``hf_home``."""
    import yaml

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config.update({"meld_dir": str(SAMPLE), "hf_home": str(hf_home)} | overrides)
    (root / "config").mkdir(parents=True, exist_ok=True)
    (root / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    return root


def copy_preprocessed(preprocessed: Path, dest: Path, training: bool = False) -> Path:
    """A copy of the `preprocessed` folder, without its training results unless
    ``training``, mtimes kept, so that Snakemake there redoes nothing of what it holds."""
    skip = {preprocessed / ".snakemake" / "locks"}
    if not training:
        skip |= {preprocessed / "results" / "train", preprocessed / "results" / "evaluate"}
    shutil.copytree(preprocessed, dest, symlinks=True,
                    ignore=lambda d, names: [n for n in names if Path(d) / n in skip])
    return dest


def whisper_settings(hf_home: Path, **kw):
    """Settings that transcribe on the CPU with the tiny.en staged in ``hf_home``."""
    from meldflow.settings import Settings

    return Settings(hf_home=str(hf_home), whisper_device="cpu", **kw)


def train_config(florence_home: Path, out: Path, **kw):
    """A small text-only training on the sample's CSVs (one process, one epoch)."""
    from meldflow.training.train_options import TrainConfig

    base = dict(out=str(out), hf_home=str(florence_home), train_csv=TRAIN_CSV, dev_csv=DEV_CSV,
                modalities="text", epochs=1, streams=1, checkpoint_every=3)
    return TrainConfig(**(base | kw))


def weights(model_dir: Path) -> dict:
    """Every tensor of a saved run (Florence-2 and heads), as float32 CPU tensors."""
    from safetensors.torch import load_file

    out = {}
    for name in ("model.safetensors", "heads.safetensors"):
        out |= {f"{name}:{k}": v.float() for k, v in load_file(str(model_dir / name)).items()}
    return out


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def without_key_biases(w: dict) -> dict:
    """All tensors but the attention key projections' biases. Their gradient is zero in
    exact arithmetic (softmax ignores a constant added to every score), and AdamW scales
    its rounding noise up to lr-sized steps, so they drift apart with any change in
    summation order (process count, a resumed process) without changing any output."""
    return {k: v for k, v in w.items() if not k.endswith("k_proj.bias")}


def tensorboard_events(run: Path):
    """The run's TensorBoard events, as TensorBoard itself reads them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0,
                                                                     "images": 0})
    events.Reload()
    return events


def corrupt_middle(src: Path, dst: Path, n: int = 3000) -> Path:
    data = bytearray(src.read_bytes())
    rng = random.Random(1)
    mid = len(data) // 2
    data[mid:mid + n] = bytes(rng.randrange(256) for _ in range(n))
    dst.write_bytes(bytes(data))
    return dst


def speech_clip(path: Path, text: str, video_seconds: float | None = None,
                 video_extra_s: float = 0.0) -> Path:
    """espeak-ng speech on a plain video; with ``video_seconds`` (or ``video_extra_s`` more
    than the speech) the video runs on after the audio has ended (the audio track is
    shorter than the container)."""
    wav = path.with_suffix(".wav")
    subprocess.run([need_tool("espeak-ng"), "-v", "en-us", "-s", "150", "-w", str(wav), text],
                   check=True)
    cmd = [need_tool("ffmpeg"), "-nostdin", "-y", "-loglevel", "error", "-f", "lavfi", "-i",
           "color=c=0x3050a0:s=160x90:r=15", "-i", str(wav), "-map", "0:v", "-map", "1:a",
           "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-ac", "1"]
    import wave

    with wave.open(str(wav)) as w:
        seconds = w.getnframes() / w.getframerate()
    video = video_seconds or seconds + video_extra_s
    subprocess.run(cmd + ["-t", f"{video:.3f}", str(path)], check=True)
    wav.unlink()
    return path


def tight_clip(path: Path, text: str | None, seconds: float = 3.0,
               noise: float = 0.0) -> Path:
    """A clip cut from an episode: espeak-ng speech (190 words a minute) with its silence
    trimmed, so the speech starts at the clip's first sample and runs to its last; audio
    and video end together. ``text=None``: ``seconds`` of silence. ``noise``: Gaussian noise
    of that RMS (a fraction of full scale) added to the whole clip."""
    import wave

    import numpy as np

    wav = path.with_suffix(".wav")
    if text is None:
        rate, pcm = 22050, np.zeros(int(seconds * 22050), np.int16)
    else:
        subprocess.run([need_tool("espeak-ng"), "-v", "en-us", "-s", "190", "-w", str(wav),
                        text], check=True)
        with wave.open(str(wav)) as w:
            rate, pcm = w.getframerate(), np.frombuffer(w.readframes(w.getnframes()), np.int16)
        loud = np.nonzero(np.abs(pcm) > 0.01 * 32768)[0]
        pcm = pcm[loud[0]:loud[-1] + 1]
    if noise:
        hiss = np.random.default_rng(len(pcm)).normal(0, noise * 32768, len(pcm))
        pcm = np.clip(pcm + hiss, -32768, 32767).astype(np.int16)
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    subprocess.run([need_tool("ffmpeg"), "-nostdin", "-y", "-loglevel", "error", "-f", "lavfi",
                    "-i", "color=c=0x3050a0:s=160x90:r=25", "-i", str(wav), "-map", "0:v",
                    "-map", "1:a", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac",
                    "-ac", "1", "-t", f"{len(pcm) / rate:.3f}", str(path)], check=True)
    wav.unlink()
    return path


def clip_rows(clips: list[Path], texts: list[str], csv_seconds: list[float] | None = None,
              dialogues: list[int] | None = None):
    """An ingest table of ``clips``, one dialogue in clip order unless ``dialogues`` gives
    each clip's dialogue (utterances numbered in order within each); ``csv_seconds``: each
    row's EndTime - StartTime."""
    n = len(clips)
    dialogues = dialogues or [0] * n
    utterances = [dialogues[:i].count(d) for i, d in enumerate(dialogues)]
    ends = [10.0 + s for s in csv_seconds] if csv_seconds else [None] * n
    return pa.table({"split": ["test"] * n, "dialogue_id": dialogues,
                     "utterance_id": utterances, "clip_path": [str(c) for c in clips],
                     "status": ["ok"] * n, "utterance": texts,
                     "start_s": [10.0 if csv_seconds else None] * n, "end_s": ends},
                    schema=pa.schema([("split", pa.string()), ("dialogue_id", pa.int32()),
                                      ("utterance_id", pa.int32()), ("clip_path", pa.string()),
                                      ("status", pa.string()), ("utterance", pa.string()),
                                      ("start_s", pa.float64()), ("end_s", pa.float64())]))


def damage_middle(blob: Path) -> None:
    data = bytearray(blob.read_bytes())
    rng = random.Random(0)
    mid = len(data) // 2
    data[mid:mid + 4096] = bytes(rng.randrange(256) for _ in range(4096))
    blob.write_bytes(bytes(data))  # same size: a size check cannot see it


def shard_fingerprint(aligned: Path, meld_dir: Path = SAMPLE) -> dict:
    """Per split, the SHA-256 of every column of the aligned shards (rows in order; the
    clips' folder in `reason` written as <meld_dir>), and the ffmpeg that made the frames."""
    import hashlib
    import json

    import pyarrow.parquet as pq

    from meldflow.storage import read_metadata

    out: dict = {}
    for split_dir in sorted(p for p in aligned.iterdir() if p.is_dir()):
        shards = sorted(split_dir.glob("shard-*.parquet"))
        table = pa.concat_tables(pq.read_table(p) for p in shards)
        columns = {}
        for name in table.column_names:
            values = table.column(name).to_pylist()
            if name == "reason":
                values = [v.replace(str(meld_dir), "<meld_dir>") if v else v for v in values]
            text = json.dumps(values, default=lambda b: b.hex() if isinstance(b, bytes) else b)
            columns[name] = hashlib.sha256(text.encode()).hexdigest()
        out[split_dir.name] = {"shards": [p.name for p in shards], "columns": columns,
                               "ffmpeg": read_metadata(shards[0])["meldflow_frames"]["ffmpeg"],
                               "whisper_kernels": whisper_kernels()}
    return out


def whisper_kernels() -> str:
    """What Whisper's CPU results depend on besides the model: the CTranslate2 version and
    the vector instructions its int8 kernels pick (on an AVX-512 VNNI CPU a few of the
    sample's transcripts differ from an AVX2 CPU's)."""
    import ctranslate2

    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    isa = [f for f in ("avx512f", "avx512_vnni", "avx512bw", "avx_vnni", "avx2") if f in flags]
    return f"ctranslate2 {ctranslate2.__version__}, {' '.join(isa) or 'no avx'}"


def csv_keys(split: str) -> list[tuple[int, int]]:
    """(dialogue, utterance) of every row of the sample's CSV of ``split``."""
    with (SAMPLE / f"{split}_sent_emo.csv").open(encoding="utf-8") as f:
        return sorted((int(r["Dialogue_ID"]), int(r["Utterance_ID"])) for r in csv.DictReader(f))


MELD_HEADER = ["Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID",
          "Utterance_ID", "Season", "Episode", "StartTime", "EndTime"]


def meld_csv(path, rows, header=MELD_HEADER, encoding="utf-8"):
    """An annotation CSV in MELD's columns at ``path``."""
    with path.open("w", newline="", encoding=encoding) as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def meld_row(dia, utt, text="Hi there.", emotion="neutral", sentiment="neutral",
        start="00:00:01,000", end="00:00:02,500"):
    """One row of a MELD annotation CSV."""
    return [1, text, "Avery", emotion, sentiment, dia, utt, 1, 1, start, end]


def clip_samples(clip: str | Path, row: dict | None = None):
    """The 16 kHz audio meldflow transcribes from ``clip`` (cut to ``row``'s CSV times)."""
    from meldflow.preprocess.audio import decode_audio

    row = row or {}
    return decode_audio(str(clip), 30.0, row.get("start_s"), row.get("end_s")).samples


def tight_meld(root: Path, split: str, dialogues: list[list[str | None]],
               noise: dict[tuple[int, int], float] | None = None) -> Path:
    """A MELD.Raw-like folder at ``root`` whose ``split`` holds ``dialogues`` (dialogue i's
    lines as utterances 0, 1, ...; None: a silent clip) cut as MELD's clips are, speech to
    both edges (tight_clip), with CSV times the clips' own lengths; ``noise``: the RMS of
    noise added to the clip of (dialogue, utterance)."""
    from meldflow.annotations import CLIP_DIRS
    from meldflow.preprocess.probe import clip_info

    folder = root / CLIP_DIRS[split]
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for d, lines in enumerate(dialogues):
        for u, text in enumerate(lines):
            clip = tight_clip(folder / f"dia{d}_utt{u}.mp4", text,
                              noise=(noise or {}).get((d, u), 0.0))
            ms = round(clip_info(clip).duration * 1000)
            rows.append(meld_row(d, u, text or "Hmm.", start="00:00:01,000",
                                 end=f"00:00:{1 + ms // 1000:02d},{ms % 1000:03d}"))
    meld_csv(root / f"{split}_sent_emo.csv", rows)
    return root


def readme_recipe(work: Path) -> dict:
    """The names the README's Python block (loading the aligned shards) defines, run as it
    is written in the project folder ``work``."""
    import re

    code = re.search(r"```python\n(import .*?)```", (REPO / "README.md").read_text(),
                     re.S).group(1)
    found: dict = {}
    cwd = os.getcwd()
    try:
        os.chdir(work)
        exec(code, found)
    finally:
        os.chdir(cwd)
    return found


def fill_disk(mount: Path) -> None:
    """Fill the file system at ``mount`` to its last byte."""
    fd = os.open(mount / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        for size in (65536, 1):
            try:
                while os.write(fd, b"\0" * size):
                    pass
            except OSError:
                pass
    finally:
        os.close(fd)


def read_only(mount: Path) -> None:
    """Remount the file system at ``mount`` read-only."""
    subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)


def ingest_rows(keys, status="ok"):
    n = len(keys)
    return pa.table({
        "split": ["dev"] * n, "csv_line": list(range(2, n + 2)), "sr_no": list(range(n)),
        "dialogue_id": [k[0] for k in keys], "utterance_id": [k[1] for k in keys],
        "speaker": ["A"] * n, "utterance": ["hi there"] * n, "emotion": ["joy"] * n,
        "sentiment": ["positive"] * n, "season": [1] * n, "episode": [1] * n,
        "start_s": [0.0] * n, "end_s": [1.0] * n, "clip_path": ["x.mp4"] * n, "shard": [0] * n,
        "status": [status] * n, "reason": [""] * n, "flags": [[] for _ in keys],
    }, schema=INGEST_SCHEMA)


def step_tables(keys, asr_status="ok"):
    n = len(keys)
    base = {"split": ["dev"] * n, "dialogue_id": [k[0] for k in keys],
            "utterance_id": [k[1] for k in keys]}
    asr = pa.table(base | {
        "asr_status": [asr_status] * n, "asr_reason": ["clip has no audio stream"] * n,
        "asr_flags": [[] for _ in keys], "transcript": ["hi there"] * n,
        "words": [WORDS] * n, "wer": [0.0] * n,
    }, schema=TRANSCRIPT_SCHEMA)
    frm = pa.table(base | {
        "frame_status": ["ok"] * n, "frame_reason": [""] * n,
        "frame_flags": [["clip_capped"] for _ in keys], "clip_duration_s": [1.0] * n,
        "frames": [[b"\xff\xd8a\xff\xd9", b"\xff\xd8b\xff\xd9"]] * n,
        "frame_times": [[0.25, 0.5]] * n,
    }, schema=FRAMES_SCHEMA)
    return asr, frm


WORDS = [{"word": "hi", "start": 0.0, "end": 0.4, "probability": 0.9},
         {"word": "there", "start": 0.6, "end": 1.0, "probability": 0.8}]
