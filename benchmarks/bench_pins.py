"""Training and transcription speed under two sets of pins, measured in the same run.

For a dependency upgrade (issue 35: transformers 4.57.6 -> 5.25.0, huggingface-hub 0.36.2 ->
2.4.0): each workload runs in a fresh process under the new environment (this checkout and
its .venv) and under the old one (another venv, with the checkout of the commit before the
upgrade on PYTHONPATH), alternating, --repeats times; the ratio new/old of the medians is
printed. Workloads:

- ``tiny``: meldflow's training step (Recipe.train_step, read + forward/backward) on the
  tiny Florence-2 over the shards under --aligned (run `make demo` first);
- ``base``: one training step of the Florence-2-base architecture (random weights,
  benchmarks/bench_gpu.py's model, CPU, fp32, batch 1, --image-size pixels);
- ``transcribe``: `meldflow transcribe` of one shard of the sample (whole job: start,
  model load, packed windows).

Run: .venv/bin/python benchmarks/bench_pins.py --old-python /tmp/venv457/bin/python \
         --old-src /tmp/oldsrc/src [--repeats 3] [--workloads tiny base transcribe]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

TINY = """
import json, sys, time, statistics
sys.path.insert(0, {bench!r})
from types import SimpleNamespace
import bench_train
args = SimpleNamespace(aligned={aligned!r}, steps=12, batch=8, modalities="text+vision")
run, steps = bench_train.setup(args)
print(json.dumps({{"per_s": bench_train.per_batch(
    lambda s: run.train_step(s, run.read([s])), steps, 8)}}))
"""

BASE = """
import json, sys
sys.path.insert(0, {bench!r})
from types import SimpleNamespace
import torch
import bench_gpu
torch.set_num_threads(2)
args = SimpleNamespace(device="cpu", attn="sdpa", loss_check=0, grad_checkpointing=False,
                       fused=False, compile=False, image_size={size}, text_tokens=48)
model, image_id, step, device = bench_gpu.build(args, levers=True)
gen = torch.Generator().manual_seed(1)
inputs = bench_gpu.random_batch(1, args, image_id, device, gen)
labels = torch.tensor([3])
s = bench_gpu.seconds_per_step(step, inputs, labels, False, 3, device)
print(json.dumps({{"per_s": 1 / s}}))
"""


def transcribe_cmd(python: str, work: Path) -> list[str]:
    return [python, "-m", "meldflow.cli", "transcribe", "--rows", str(work / "rows.parquet"),
            "--shard", "0", "--out", str(work / "t.parquet"), "--hf-home", str(work / "hf"),
            "--threads", "2"]


def run_one(python: str, src: str | None, workload: str, args, work: Path) -> float:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    if src:
        env["PYTHONPATH"] = src
    if workload == "transcribe":
        start = time.perf_counter()
        subprocess.run(transcribe_cmd(python, work), env=env, check=True,
                       capture_output=True)
        return 1 / (time.perf_counter() - start)
    code = (TINY if workload == "tiny" else BASE).format(
        bench=str(HERE), aligned=args.aligned, size=args.image_size)
    out = subprocess.run([python, "-c", code], env=env, check=True, capture_output=True,
                         text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["per_s"]


def prepare_transcription(work: Path) -> None:
    """One shard of the sample's dev split and tiny.en, staged (offline, from the package)."""
    from meldflow.model_cache.stage import stage_whisper
    from meldflow.preprocess.ingest import run_ingest
    from meldflow.settings import SAMPLE_DIR

    run_ingest(SAMPLE_DIR, "dev", 1000, work / "rows.parquet")
    stage_whisper(work / "hf", "tiny.en", source="package")


def versions(python: str, src: str | None) -> str:
    env = dict(os.environ, PYTHONPATH=src) if src else None
    return subprocess.run([python, "-c", "import torch, transformers, huggingface_hub as h; "
                           "print(f'transformers {transformers.__version__}, huggingface-hub "
                           "{h.__version__}, torch {torch.__version__}')"],
                          capture_output=True, text=True, env=env).stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old-python", required=True, help="the old environment's python")
    ap.add_argument("--old-src", required=True, help="src/ of the checkout before the change")
    ap.add_argument("--aligned", default="results/aligned")
    ap.add_argument("--image-size", type=int, default=384)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workloads", nargs="+", default=["tiny", "base", "transcribe"],
                    choices=["tiny", "base", "transcribe"])
    args = ap.parse_args()
    envs = {"new": (sys.executable, None), "old": (args.old_python, args.old_src)}
    for name, (python, src) in envs.items():
        print(f"{name}: {versions(python, src)}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if "transcribe" in args.workloads:
            prepare_transcription(work)
        for workload in args.workloads:
            got = {name: [] for name in envs}
            for _ in range(args.repeats):
                for name, (python, src) in envs.items():
                    got[name].append(run_one(python, src, workload, args, work))
            new, old = (statistics.median(got[n]) for n in ("new", "old"))
            pairs = zip(got["new"], got["old"], strict=True)
            print(f"{workload:10s} new/old {new / old:5.2f}x  (per second, medians of "
                  f"{args.repeats}: new {new:.3g}, old {old:.3g}; each new/old: "
                  f"{', '.join(f'{a:.3g}/{b:.3g}' for a, b in pairs)})")


if __name__ == "__main__":
    main()
