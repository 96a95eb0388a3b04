import subprocess

from conftest import BIN, REPO, env_with_venv


def test_help_lists_every_step():
    out = subprocess.run([str(BIN / "meldflow"), "--help"], capture_output=True, text=True,
                         check=True).stdout
    for cmd in ("ingest", "frames", "transcribe", "align", "manifest", "summary", "stage",
                "make-sample"):
        assert cmd in out
    sub = subprocess.run([str(BIN / "meldflow"), "frames", "--help"], capture_output=True,
                         text=True, check=True).stdout
    assert "--max-clip-seconds" in sub and "default 8" in sub


def test_user_errors_are_one_line_not_tracebacks(tmp_path):
    proc = subprocess.run([str(BIN / "meldflow"), "ingest", "--meld-dir", str(tmp_path),
                           "--split", "dev", "--out", str(tmp_path / "x.parquet")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "no annotation CSV for split 'dev'" in proc.stderr and "Traceback" not in proc.stderr


def test_snakemake_lint_is_clean():
    proc = subprocess.run([str(BIN / "snakemake"), "--lint"], cwd=REPO, capture_output=True,
                          text=True, env=env_with_venv())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Congratulations" in proc.stdout + proc.stderr


def test_ruff_is_clean():
    proc = subprocess.run([str(BIN / "ruff"), "check", "src", "tests", "benchmarks"], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout
