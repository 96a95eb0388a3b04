"""The `meldflow` command: help, one-line errors, and a launcher that stays light."""
import subprocess
import sys

import pytest
from helpers import BIN, SAMPLE, env_with_venv, fill_disk, read_only


def test_help_lists_every_step():
    out = subprocess.run([str(BIN / "meldflow"), "--help"], capture_output=True, text=True,
                         check=True).stdout
    for cmd in ("ingest", "frames", "transcribe", "align", "manifest", "summary", "stage",
                "make-sample"):
        assert cmd in out
    sub = subprocess.run([str(BIN / "meldflow"), "frames", "--help"], capture_output=True,
                         text=True, check=True).stdout
    sub = " ".join(sub.split())  # argparse wraps lines
    assert "--frames-per-utterance" in sub and "(default 8)" in sub


def test_user_errors_are_one_line_not_tracebacks(tmp_path):
    proc = subprocess.run([str(BIN / "meldflow"), "ingest", "--meld-dir", str(tmp_path),
                           "--split", "dev", "--out", str(tmp_path / "x.parquet")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "no annotation CSV for split 'dev'" in proc.stderr and "Traceback" not in proc.stderr


def test_the_waiting_launcher_does_not_load_torch():
    """`meldflow train` only submits and waits (one per experiment and seed on a login
    node): it must not hold PyTorch in memory."""
    code = ("import sys, meldflow.cli, meldflow.training.launch; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=env_with_venv()).stdout
    assert out.strip() == "False"


def _parsed(*argv: str):
    from meldflow.cli import build_parser

    return build_parser().parse_args(list(argv))


def test_the_job_options_default_to_what_the_library_does_on_its_own():
    """`--workers`, `--threads` and `--source` are written in the CLI (so `--help` stays
    light) and in the library's signatures: they must say the same."""
    import inspect

    from meldflow.model_cache.stage import stage_whisper
    from meldflow.preprocess.frames import frames_for_rows, run_frames
    from meldflow.preprocess.transcribe import Transcriber, run_transcribe

    def default(fn, name):
        return inspect.signature(fn).parameters[name].default

    shard = ("--rows", "r.parquet", "--shard", "0", "--out", "o.parquet")
    assert _parsed("frames", *shard).workers == default(run_frames, "workers") \
        == default(frames_for_rows, "workers")
    assert _parsed("transcribe", *shard).threads == default(run_transcribe, "threads") \
        == default(Transcriber, "cpu_threads")
    assert _parsed("stage").source == default(stage_whisper, "source")


def _meldflow(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "meldflow"), *args], capture_output=True, text=True,
                          env=env_with_venv())


@pytest.mark.integration  # five `meldflow` processes on a file system of its own
def test_a_full_or_read_only_disk_is_one_line_and_loses_nothing(small_disk, tmp_path):
    """`meldflow ingest` and `meldflow frames` on a full disk or a read-only folder gave
    OSError [Errno 28] / [Errno 30] tracebacks."""
    rows = tmp_path / "rows.parquet"
    assert _meldflow("ingest", "--meld-dir", str(SAMPLE), "--split", "dev", "--out",
                     str(rows)).returncode == 0
    ingest = ["ingest", "--meld-dir", str(SAMPLE), "--split", "dev", "--out",
              str(small_disk / "rows.parquet")]
    frames = ["frames", "--rows", str(rows), "--shard", "0", "--out",
              str(small_disk / "frames.parquet")]
    (small_disk / "rows.parquet").write_bytes(b"earlier")
    fill_disk(small_disk)
    for args in (ingest, frames):
        proc = _meldflow(*args)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert "the disk is full" in proc.stderr and str(small_disk) in proc.stderr
        assert "free space" in proc.stderr
    assert (small_disk / "rows.parquet").read_bytes() == b"earlier"
    (small_disk / "filler").unlink()
    read_only(small_disk)
    for args in (ingest, frames):
        proc = _meldflow(*args)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert "read-only" in proc.stderr and str(small_disk) in proc.stderr
    assert (small_disk / "rows.parquet").read_bytes() == b"earlier"


def test_status_into_a_closed_pipe_ends_quietly(tmp_path):
    """`meldflow status --json | head -1` ended in a BrokenPipeError traceback."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("sacct", "squeue"):
        (bin_dir / name).write_text("#!/bin/sh\n")
        (bin_dir / name).chmod(0o755)
    env = env_with_venv() | {"PATH": f"{bin_dir}:{env_with_venv()['PATH']}"}
    proc = subprocess.run(f"{BIN / 'meldflow'} status --dir {tmp_path} --json | head -1",
                          shell=True, capture_output=True, text=True, env=env)
    assert proc.stdout.strip() == "{" and "Traceback" not in proc.stderr, proc.stderr
