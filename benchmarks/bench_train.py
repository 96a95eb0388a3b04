"""Training benchmark on the CPU with the tiny Florence-2: samples/s of a training step, of
the data reader alone, and of a naive reader, all measured in this run on the same shards.

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--aligned", default="results/aligned")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--modalities", default="text+vision")
    ap.add_argument("--workers", type=int, nargs="*", default=[2],
                    help="loader worker counts to measure")
    args = ap.parse_args()
    shards = sorted(str(p) for p in Path(args.aligned, "train").glob("shard-*.parquet"))
    if not shards:
        raise SystemExit(f"no shards under {args.aligned}/train: run `make demo` first")
    os.environ["HF_HUB_OFFLINE"] = "1"
    import pyarrow.parquet as pq
    import torch
    import torch.nn.functional as F

    from meldflow.dataset import Source, plan_epoch
    from meldflow.stage import stage_florence
    from meldflow.train import (
        Encoder,
        MicroBatches,
        TrainConfig,
        build_heads,
        florence_snapshot,
        load_florence,
        micro_batches,
    )

    hf = Path(tempfile.mkdtemp(prefix="meldflow-bench-hf-"))
    entry = stage_florence(hf, tiny=True)
    florence, processor = load_florence(florence_snapshot(hf, entry["repo_id"])[0])
    model = build_heads(florence)
    cfg = TrainConfig(out=str(hf / "run"), hf_home=str(hf), train=shards,
                      modalities=args.modalities)
    src = Source(shards, modalities=args.modalities)
    enc = Encoder(processor, cfg, src)
    plan = plan_epoch(src.units, 1, args.batch, 0, 0)[0]
    n_batches = len(plan) // args.batch
    batches = [plan[(i % n_batches) * args.batch:(i % n_batches + 1) * args.batch]
               for i in range(args.steps)]
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)

    def read(picks):
        rows = [src.rows(u)[r] for u, r, _ in picks]
        return rows, enc.inputs(rows)

    def naive_read(picks):  # one whole-file read per sample, as a per-row loader would
        rows = []
        for u, r, _ in picks:
            rows.append(pq.read_table(u.path).slice(
                sum(x.rows for x in src.units if x.path == u.path and x.group < u.group) + r, 1
            ).to_pylist()[0])
        return rows, enc.inputs(rows)

    def step_on(item):
        e, s = model(**item["batch"])
        loss = F.cross_entropy(e, torch.tensor(item["emotion"])) \
            + F.cross_entropy(s, torch.tensor(item["sentiment"]))
        optim.zero_grad()
        loss.backward()
        optim.step()

    def step(picks):
        step_on(MicroBatches(enc, src, [(picks, 0)])[0])

    def per_batch(fn):
        fn(batches[0])  # warm-up
        times = []
        for picks in batches:
            t = time.perf_counter()
            fn(picks)
            times.append(time.perf_counter() - t)
        return args.batch / statistics.median(times)

    def through_workers(workers, train_too):
        jobs = [(picks, 0) for picks in batches]
        t = time.perf_counter()
        for item in micro_batches(enc, src, jobs, workers):
            if train_too:
                step_on(item)
        return len(jobs) * args.batch / (time.perf_counter() - t)

    results = {
        "train step (read in-process + fwd/bwd)": per_batch(step),
        "reader alone, in-process": per_batch(read),
        "naive reader (file per sample)": per_batch(naive_read),
    }
    for w in args.workers:
        results[f"reader alone, {w} worker processes"] = through_workers(w, False)
        results[f"train step fed by {w} workers"] = through_workers(w, True)
    base = results["train step (read in-process + fwd/bwd)"]
    print(f"tiny Florence-2, {args.modalities}, batch {args.batch}, CPU ({os.cpu_count()} "
          f"cores), {args.steps} batches; samples/s relative to a training step:")
    for name, sps in results.items():
        print(f"    {name:42s} {sps / base:6.2f}x")
    best = max(v for k, v in results.items() if k.startswith("reader alone"))
    print(f"    reader feeds {best / base:.1f}x what a step consumes at best "
          f"(target >= 5x: {'met' if best >= 5 * base else 'NOT met'}); in-process reader "
          f"{results['reader alone, in-process'] / results['naive reader (file per sample)']:.1f}x"
          f" the naive one")


if __name__ == "__main__":
    main()
