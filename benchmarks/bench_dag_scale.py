"""The workflow at full MELD size: Snakemake's planning and the ingest checkpoints.

A MELD.Raw layout of 13,708 utterances: the real train (9,989) and dev (1,109) CSVs from
../shared/meld, and a test CSV of 2,610 train rows renumbered into 280 dialogues (the real
test CSV is not there); every clip a link to one small sample clip (planning reads only
the CSVs and the clips' sizes and times). For each shard_size (default 1000, 250, 50) in a
fresh folder: Snakemake's start-up (`snakemake --version`), a dry run before the ingest
checkpoints have run, the three ingest jobs, and a dry run once they have (the whole DAG,
every shard job known). Ratios against the 1000-row run; per-job costs.

Run: .venv/bin/python benchmarks/bench_dag_scale.py [--shard-sizes 1000 250 50]
"""

from __future__ import annotations

import argparse
import csv
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from meldflow.annotations import CLIP_DIRS

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "meld"
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
SAMPLE_CLIP = REPO / "src" / "meldflow" / "data" / "sample" / "train_splits" / "dia0_utt0.mp4"
TEST_ROWS, TEST_DIALOGUES = 2610, 280


def full_size_meld(root: Path) -> dict[str, int]:
    """The layout described above; rows per split."""
    root.mkdir(parents=True)
    rows = {}
    for split in ("train", "dev", "test"):
        src = SHARED / f"{'train' if split == 'test' else split}_sent_emo.csv"
        with src.open(encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f)
            header, body = reader.fieldnames, list(reader)
        if split == "test":  # the real test CSV is absent: train rows, renumbered
            body = body[:TEST_ROWS]
            for i, r in enumerate(body):
                r["Dialogue_ID"], r["Utterance_ID"] = str(i % TEST_DIALOGUES), str(
                    i // TEST_DIALOGUES)
        with (root / f"{split}_sent_emo.csv").open("w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, header)
            w.writeheader()
            w.writerows(body)
        clips = root / CLIP_DIRS[split]
        clips.mkdir(parents=True)
        for r in body:
            (clips / f"dia{r['Dialogue_ID']}_utt{r['Utterance_ID']}.mp4").symlink_to(
                SAMPLE_CLIP)
        rows[split] = len(body)
    return rows


def snakemake(work: Path, *args: str) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run([str(SNAKEMAKE), "-s", str(REPO / "Snakefile"), "-d", str(work),
                           *args], capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError(f"snakemake {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return elapsed, proc.stdout + proc.stderr


def jobs_in(dry_run: str) -> int:
    m = re.search(r"^total\s+(\d+)", dry_run, re.M)
    return int(m.group(1)) if m else 0


def measure(meld: Path, shard_size: int, tmp: Path) -> dict:
    import yaml

    work = tmp / f"shard{shard_size}"
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config |= {"meld_dir": str(meld), "shard_size": shard_size, "hf_home": str(tmp / "hf")}
    (work / "config").mkdir(parents=True)
    (work / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    before, _ = snakemake(work, "-n", "--cores", "2")
    targets = [f"results/ingest/{s}.shards.json" for s in CLIP_DIRS]
    ingest, _ = snakemake(work, "--cores", "2", *targets)
    after, text = snakemake(work, "-n", "--cores", "2")
    return {"shard_size": shard_size, "before": before, "ingest": ingest, "after": after,
            "jobs": jobs_in(text)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shard-sizes", type=int, nargs="+", default=[1000, 250, 50])
    args = ap.parse_args()
    if not (SHARED / "train_sent_emo.csv").is_file():
        raise SystemExit(f"{SHARED} is absent: the layout is built from the real MELD CSVs")
    tmp = Path(tempfile.mkdtemp(prefix="meldflow-dag-"))
    try:
        rows = full_size_meld(tmp / "meld")
        startup = min(snakemake(tmp, "--version")[0] for _ in range(3))
        print(f"full-size MELD layout: {sum(rows.values())} rows ({rows}); Snakemake "
              f"starting (`--version`): {startup:.1f} s")
        results = [measure(tmp / "meld", n, tmp) for n in args.shard_sizes]
        base = results[0]
        print(f"{'shard_size':>10} {'jobs':>6} {'dry run before ingest':>22} "
              f"{'3 ingest jobs':>14} {'dry run, whole DAG':>19} {'per job':>9}")
        for r in results:
            print(f"{r['shard_size']:>10} {r['jobs']:>6} {r['before']:>8.1f} s "
                  f"({r['before'] / base['before']:.2f}x) {r['ingest']:>7.1f} s "
                  f"({r['ingest'] / base['ingest']:.2f}x) {r['after']:>8.1f} s "
                  f"({r['after'] / base['after']:.2f}x) "
                  f"{1000 * (r['after'] - startup) / max(1, r['jobs']):>6.0f} ms")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
