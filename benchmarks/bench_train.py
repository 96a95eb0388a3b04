"""Training benchmark on the CPU with the tiny Florence-2: samples/s of a training step, of
the data reader alone, and of a naive reader, all measured in this run on the same shards.

Run after `make demo` (it reads results/aligned):
    .venv/bin/python benchmarks/bench_train.py [--aligned results/aligned] [--steps 30]
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
    args = ap.parse_args()
    shards = sorted(str(p) for p in Path(args.aligned, "train").glob("shard-*.parquet"))
    if not shards:
        raise SystemExit(f"no shards under {args.aligned}/train: run `make demo` first")
    os.environ["HF_HUB_OFFLINE"] = "1"
    import pyarrow.parquet as pq
    import torch
    import torch.nn.functional as F

    from meldflow.dataset import Source, plan_epoch
    from meldflow.ingest import EMOTIONS, SENTIMENTS
    from meldflow.stage import stage_florence
    from meldflow.train import Encoder, TrainConfig, build_heads, load_florence

    hf = Path(tempfile.mkdtemp(prefix="meldflow-bench-hf-"))
    entry = stage_florence(hf, tiny=True)
    florence, processor = load_florence(hf, entry["repo_id"])
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

    def step(picks):
        rows, batch = read(picks)
        e, s = model(**{k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values")
                        if k in batch})
        loss = F.cross_entropy(e, torch.tensor([EMOTIONS.index(r["emotion"]) for r in rows])) \
            + F.cross_entropy(s, torch.tensor([SENTIMENTS.index(r["sentiment"]) for r in rows]))
        optim.zero_grad()
        loss.backward()
        optim.step()

    results = {}
    for name, fn in (("train step (read + forward/backward)", step), ("reader alone", read),
                     ("naive reader (file per sample)", naive_read)):
        fn(batches[0])  # warm-up
        times = []
        for picks in batches:
            t = time.perf_counter()
            fn(picks)
            times.append(time.perf_counter() - t)
        results[name] = args.batch / statistics.median(times)
    base = results["train step (read + forward/backward)"]
    print(f"tiny Florence-2, {args.modalities}, batch {args.batch}, CPU, "
          f"median of {args.steps} batches; samples/s relative to a training step:")
    for name, sps in results.items():
        print(f"    {name:40s} {sps / base:6.2f}x")
    reader = results["reader alone"] / base
    print(f"    reader feeds {reader:.1f}x what a step consumes "
          f"(target >= 5x: {'met' if reader >= 5 else 'NOT met'}); "
          f"{results['reader alone'] / results['naive reader (file per sample)']:.1f}x the "
          f"naive reader")


if __name__ == "__main__":
    main()
