"""Training benchmark on the CPU with the tiny Florence-2: samples/s of the real training
step (meldflow.training.loop.Recipe.train_step), of the run's data reader alone, of the
same reader decoding frames with PIL (the decoder before simplejpeg) and of a naive
reader, all measured in this run on the same shards.

Run after `make demo` (it reads results/aligned):
    .venv/bin/python benchmarks/bench_train.py [--aligned results/aligned] [--steps 30]
        [--workers 1 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path


def setup(args):
    """The real training run's parts (meldflow.training.loop.Recipe) on the shards under
    ``args.aligned``, and ``args.steps`` of its steps."""
    shards = sorted(str(p) for p in Path(args.aligned, "train").glob("shard-*.parquet"))
    if not shards:
        raise SystemExit(f"no shards under {args.aligned}/train: run `make demo` first")
    os.environ["HF_HUB_OFFLINE"] = "1"
    from meldflow.model_cache.stage import stage_florence
    from meldflow.training.loop import Recipe
    from meldflow.training.train_options import TrainConfig

    hf = Path(tempfile.mkdtemp(prefix="meldflow-bench-hf-"))
    entry = stage_florence(hf)
    cfg = TrainConfig(out=str(hf / "run"), hf_home=str(hf), florence_repo=entry["repo_id"],
                      train=shards, modalities=args.modalities, global_batch=args.batch,
                      streams=1, epochs=1000, checkpoint_every=10**9, loader_workers=0)
    run = Recipe(cfg)
    run.setup()
    plan = run.epoch_plan()
    return run, [plan[i % len(plan)] for i in range(args.steps)]


def naive_read(run, step):
    """One whole-file read per sample, as a per-row loader would."""
    import pyarrow.parquet as pq

    src, rows = run.train_src, []
    for picks, _ in step.micro:
        for u, r, _ in picks:
            before = sum(x.rows for x in src.units if x.path == u.path and x.group < u.group)
            rows.append(pq.read_table(u.path).slice(before + r, 1).to_pylist()[0])
    return rows, run.encoder.inputs(rows)


def per_batch(fn, steps, batch: int) -> float:
    """Samples/s of ``fn`` over ``steps``, median of per-step times after a warm-up."""
    fn(steps[0])
    times = []
    for s in steps:
        t = time.perf_counter()
        fn(s)
        times.append(time.perf_counter() - t)
    return batch / statistics.median(times)


def through_workers(run, steps, batch: int, workers: int, train_too: bool) -> float:
    """Samples/s of the loader workers alone, or of the step fed by them."""
    from meldflow.training.batches import micro_batches

    jobs = [job for s in steps for job in s.micro]
    t = time.perf_counter()
    loaded = iter(micro_batches(run.encoder, run.train_src, jobs, workers))
    if train_too:
        for s in steps:
            run.train_step(s, loaded)
    else:
        for _ in loaded:
            pass
    return len(steps) * batch / (time.perf_counter() - t)


def measure(run, steps, args) -> dict[str, float]:
    import meldflow.training.dataset as dataset

    def read(s):
        return list(run.read([s]))

    b = args.batch
    results = {
        "train step (read in-process + fwd/bwd)": per_batch(
            lambda s: run.train_step(s, run.read([s])), steps, b),
        "reader alone, in-process": per_batch(read, steps, b),
        "naive reader (file per sample)": per_batch(lambda s: naive_read(run, s), steps, b),
    }
    fast = dataset.decode_jpeg  # the same reader with PIL decoding every frame, as before
    dataset.decode_jpeg = dataset.decode_jpeg_pil
    results["reader alone, in-process, PIL decoding"] = per_batch(read, steps, b)
    dataset.decode_jpeg = fast
    for w in args.workers:
        results[f"reader alone, {w} worker processes"] = through_workers(run, steps, b, w, False)
        results[f"train step fed by {w} workers"] = through_workers(run, steps, b, w, True)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--aligned", default="results/aligned")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--modalities", default="text+vision")
    ap.add_argument("--workers", type=int, nargs="*", default=[2],
                    help="loader worker counts to measure")
    args = ap.parse_args()
    results = measure(*setup(args), args)
    base = results["train step (read in-process + fwd/bwd)"]
    print(f"tiny Florence-2, {args.modalities}, batch {args.batch}, CPU ({os.cpu_count()} "
          f"cores), {args.steps} batches; samples/s relative to a training step:")
    for name, sps in results.items():
        print(f"    {name:42s} {sps / base:6.2f}x")
    best = max(v for k, v in results.items()
               if k.startswith("reader alone") and "PIL" not in k)
    print(f"    reader feeds {best / base:.1f}x what a step consumes at best "
          f"(target >= 5x: {'met' if best >= 5 * base else 'NOT met'}); in-process reader "
          f"{results['reader alone, in-process'] / results['naive reader (file per sample)']:.1f}x"
          f" the naive one")


if __name__ == "__main__":
    main()
