"""The Whisper model a transcription job loads: its verified files and its device."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

from meldflow import MeldflowError
from meldflow.model_cache.snapshots import verified_snapshot
from meldflow.model_cache.stage import WHISPER_FILES, WHISPER_REVISION, whisper_repo_id

log = logging.getLogger(__name__)


def model_dir(name: str, hf_home: str | Path) -> tuple[Path, dict[str, str]]:
    """The staged, verified CTranslate2 folder of ``name`` and its file hashes.

    Fails in seconds, naming ``meldflow stage``, if the model is missing, incomplete or
    damaged: a damaged model.bin otherwise loads and transcribes every clip as silence.
    """
    hint = f"run `meldflow stage --hf-home {hf_home} --whisper-model {name}` first"
    return verified_snapshot(hf_home, whisper_repo_id(name), WHISPER_REVISION, WHISPER_FILES,
                             "Whisper model", hint)


_PROBE = """
import sys, numpy as np
from faster_whisper import WhisperModel
m = WhisperModel(sys.argv[1], device="cuda", compute_type="float16")
list(m.transcribe(np.zeros(16000, dtype=np.float32))[0])
"""


def choose_device(device: str, model_path: Path) -> tuple[str, str]:
    """(device, compute_type). ``auto`` tries CUDA in a child process first, where a
    CUDA device is visible.

    A missing cuDNN aborts the process natively at the first transcribe, beyond the reach
    of try/except, so the GPU path is proven in a subprocess before this process uses it;
    with no device visible (a CPU node) there is nothing to prove and no process to start.
    """
    if device == "cpu":
        return "cpu", "int8"
    if device == "cuda":
        return "cuda", "float16"
    if device != "auto":
        raise MeldflowError(f"unknown device {device!r}: use auto, cpu or cuda")
    import ctranslate2

    if ctranslate2.get_cuda_device_count() == 0:  # counting is safe here; using CUDA is not
        log.warning("Whisper runs on the CPU (int8): no CUDA device visible")
        return "cpu", "int8"
    try:
        proc = subprocess.run([sys.executable, "-c", _PROBE, str(model_path)],
                              capture_output=True, text=True, timeout=300)
        rc, detail = proc.returncode, (proc.stderr.strip().splitlines() or [""])[-1]
    except subprocess.TimeoutExpired:
        rc, detail = -1, "probe timed out"
    if rc == 0:
        return "cuda", "float16"
    log.warning("Whisper runs on the CPU (int8): CUDA probe failed (%s)", detail or rc)
    return "cpu", "int8"
