"""Training at MELD's size on the CPU: the real step and reader, 1 rank against 2.

Shards of MELD's size: the real train CSV's 9,989 rows (../shared/meld) in the aligned
schema, 1,000 rows a shard, each row with 8 MELD-like frames (the frames of
bench_preprocess.py's cached clips, preprocessed here by the workflow and dealt round the
rows), text+vision, the tiny Florence-2. Then, in this run: the reader alone and a training
step on these shards (benchmarks/bench_train.py's measures), one epoch on 1 rank
(in-process) and one epoch on 2 gloo ranks (submitit local tasks) with the same batches
(streams 2): samples/s, epoch time, peak memory per rank, and the scaling efficiency
(2-rank samples/s over twice the 1-rank samples/s).

Run: .venv/bin/python benchmarks/bench_train_scale.py [--epochs 1] [--max-steps 0]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from meld_like import SHARED_CSV, make_meld_like_clips
from workflow_run import run_workflow, write_csv


def frame_pool(tmp: Path) -> Path:
    """One aligned shard of the 88 cached MELD-like clips, made by the workflow."""
    from meldflow.model_cache.stage import stage_whisper

    folder, rows = make_meld_like_clips(SHARED_CSV, 88)
    meld = tmp / "meld"
    (meld / "train_splits").mkdir(parents=True)
    for r in rows:
        (meld / "train_splits" / r["clip"]).symlink_to(folder / r["clip"])
    write_csv(meld, [(meld / "train_splits" / r["clip"], r["text"]) for r in rows],
              [(r["start"], r["end"]) for r in rows])
    stage_whisper(tmp / "hf", "tiny.en", source="package")
    run_workflow(tmp / "pool", meld, tmp / "hf", 88)
    return next((tmp / "pool" / "results" / "aligned" / "train").glob("*.parquet"))


def meld_sized_shards(pool_path: Path, csv: Path, out: Path, shard_rows: int = 1000) -> list:
    """The CSV's rows in the aligned schema, frames dealt from the pool; one file per
    ``shard_rows`` (row groups as the align step sizes them)."""
    from meldflow.annotations import read_annotations
    from meldflow.preprocess.align import rows_per_group
    from meldflow.storage import table_metadata, write_table

    pool = pq.read_table(pool_path)
    frames = [r for r in pool.to_pylist() if r["status"] == "ok"]
    anns = read_annotations(csv)
    out.mkdir(parents=True)
    paths = []
    for s in range(0, len(anns), shard_rows):
        recs = []
        for i, a in enumerate(anns[s:s + shard_rows], start=s):
            f = frames[i % len(frames)]
            recs.append(f | {"dialogue_id": a.dialogue_id, "utterance_id": a.utterance_id,
                             "speaker": a.speaker, "utterance": a.utterance,
                             "emotion": a.emotion, "sentiment": a.sentiment, "shard": s})
        table = pa.Table.from_pylist(recs, schema=pool.schema)
        path = out / f"shard-{s // shard_rows:04d}.parquet"
        write_table(table, path, row_group_size=rows_per_group(table),
                    metadata=table_metadata(pool))
        paths.append(str(path))
    return paths


def run_one(spec: str) -> None:
    """(In a fresh process, so that its resource usage is this run's alone) one training
    run through ``launch``; prints seconds, steps and the peak RSS of the busiest rank."""
    from meldflow.training.launch import launch
    from meldflow.training.train_options import LaunchConfig, TrainConfig

    spec = json.loads(spec)
    cfg, how = TrainConfig(**spec["cfg"]), LaunchConfig(**spec["how"])
    start = time.perf_counter()
    metrics = launch(cfg, how)
    secs = time.perf_counter() - start
    who = resource.RUSAGE_SELF if how.executor == "debug" else resource.RUSAGE_CHILDREN
    print(json.dumps({"secs": secs, "steps": metrics["steps"],
                      "peak_mb": resource.getrusage(who).ru_maxrss / 1024}))


def timed_run(cfg: dict, how: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "--run-one",
                          json.dumps({"cfg": cfg, "how": how})],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--max-steps", type=int, default=0, help="stop each run here (0: epochs)")
    ap.add_argument("--run-one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.run_one:
        return run_one(args.run_one)
    if not SHARED_CSV.is_file():
        raise SystemExit(f"{SHARED_CSV} is absent: the rows are MELD's")
    os.environ["TQDM_DISABLE"], os.environ["HF_HUB_OFFLINE"] = "1", "1"
    tmp = Path(tempfile.mkdtemp(prefix="meldflow-train-scale-"))
    try:
        shards = meld_sized_shards(frame_pool(tmp), SHARED_CSV, tmp / "aligned" / "train")
        size = sum(Path(p).stat().st_size for p in shards) / 2**20
        print(f"{len(shards)} shards, 9,989 rows, {size:.0f} MB; reader and step:", flush=True)
        os.system(f"{sys.executable} {Path(__file__).with_name('bench_train.py')} --aligned "
                  f"{tmp / 'aligned'} --steps 20 --workers")
        from meldflow.model_cache.stage import stage_florence

        stage_florence(tmp / "hf")
        kw = dict(hf_home=str(tmp / "hf"), train=shards, modalities="text+vision",
                  epochs=args.epochs, max_steps=args.max_steps, streams=2,
                  checkpoint_every=10**6, loader_workers=0)
        runs = {"1 rank": timed_run(kw | {"out": str(tmp / "one")}, {"executor": "debug"}),
                "2 ranks": timed_run(kw | {"out": str(tmp / "two")},
                                     {"executor": "local", "tasks": 2})}
        print(f"\ntraining, text+vision, global batch 8, {runs['1 rank']['steps']} steps "
              f"each ({os.cpu_count()} cores):")
        for name, r in runs.items():
            r["sps"] = r["steps"] * 8 / r["secs"]
            print(f"    {name:8s} {r['secs']:7.0f} s  {r['sps']:6.1f} samples/s  peak RSS "
                  f"per rank {r['peak_mb']:5.0f} MB")
        ratio = runs["2 ranks"]["sps"] / runs["1 rank"]["sps"]
        print(f"    2 ranks: {ratio:.2f}x the samples/s of 1 (scaling efficiency "
              f"{ratio / 2:.0%})")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
