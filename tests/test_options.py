"""The option machinery (meldflow.options): flags and KEY=VALUE values checked, without a
traceback."""
import subprocess

import pytest
from helpers import (
    BIN,
    SAMPLE,
    env_with_venv,
)


@pytest.mark.parametrize("flags, message", [
    (["--max-clip-seconds", "nan"], "max_clip_seconds: nan is not a number"),
    (["--max-clip-seconds", "inf"], "max_clip_seconds: inf is not a number"),
])
def test_flags_no_code_can_use_are_refused_without_a_traceback(tmp_path, flags, message):
    proc = subprocess.run([str(BIN / "meldflow"), "frames", "--rows", "x", "--shard", "0",
                           "--out", str(tmp_path / "f.parquet"), *flags],
                          capture_output=True, text=True, env=env_with_venv())
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and message in proc.stderr


def test_a_key_value_flag_without_a_value_is_one_line(tmp_path):
    proc = subprocess.run([str(BIN / "meldflow"), "train", "--out", str(tmp_path / "run"),
                           "--train-csv", str(SAMPLE / "train_sent_emo.csv"), "--sbatch", "qos"],
                          capture_output=True, text=True, env=env_with_venv())
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--sbatch: 'qos' is not KEY=VALUE (for example --sbatch qos=high)" in proc.stderr
