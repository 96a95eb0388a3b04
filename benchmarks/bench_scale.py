"""Cost growth: `snakemake --cores 2 preprocess` on 100, 400 and 1,600 MELD-like clips.

The clips are bench_preprocess.py's (utterances and lengths from the real MELD CSV,
1280x720 H.264 + AAC, full-length audio), built once for the largest size and cached under
~/.cache/meldflow/bench-clips/; each smaller size is a prefix of it. Per size, from
scratch, with one shard_size for all (default 100), it prints each step's seconds per clip
and the median and largest peak RSS of its jobs (from the DAG's own benchmark files), the
wall clock per clip, and each against the smallest size: the time per clip should not
grow with the data, and a job's memory should be set by the shard size, not by the data size.

Run: .venv/bin/python benchmarks/bench_scale.py [--sizes 100 400 1600] [--shard-size 100]
     .venv/bin/python benchmarks/bench_scale.py --build-only   # the clips alone (hours)
"""

from __future__ import annotations

import argparse
import collections
import csv
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from meld_like import SHARED_CSV, make_meld_like_clips
from workflow_run import job_times, run_workflow, write_csv

STEPS = ("ingest", "transcribe", "frames", "align", "manifest", "summary")


def meld_folder(root: Path, folder: Path, rows: list[dict]) -> Path:
    """A MELD.Raw-like train split of ``rows``: links to the cached clips and their CSV."""
    meld = root / "meld"
    (meld / "train_splits").mkdir(parents=True)
    for r in rows:
        (meld / "train_splits" / r["clip"]).symlink_to(folder / r["clip"])
    clips = [(meld / "train_splits" / r["clip"], r["text"]) for r in rows]
    write_csv(meld, clips, [(r["start"], r["end"]) for r in rows])
    return meld


def rss_per_rule(work: Path) -> dict[str, list[float]]:
    """Each job's peak RSS in MB, per rule (Snakemake samples it every 0.5 s, so a job
    shorter than that may show less than it used)."""
    root = work / "results" / "benchmarks"
    out: dict[str, list[float]] = collections.defaultdict(list)
    for tsv in root.rglob("*.tsv"):
        with tsv.open() as f:
            row = next(csv.DictReader(f, delimiter="\t"))
        rss = row["max_rss"]
        out[tsv.relative_to(root).parts[0].removesuffix(".tsv")].append(
            float(rss) if rss not in ("", "NA", "-") else 0.0)
    return out


def measure(size: int, folder: Path, rows: list[dict], hf: Path, shard_size: int,
            tmp: Path) -> dict:
    """One size, from scratch: wall clock and, per step, summed job seconds, peak RSS, jobs."""
    root = tmp / f"n{size}"
    meld = meld_folder(root, folder, rows[:size])
    wall = run_workflow(root / "work", meld, hf, shard_size)
    return {"size": size, "wall": wall, "steps": job_times(root / "work"),
            "rss": rss_per_rule(root / "work")}


def _cell(per_clip: float, base_per_clip: float | None, rss: list[float] = ()) -> str:
    growth = f"({per_clip / base_per_clip:.2f}x)" if base_per_clip else ""
    mem = f"{statistics.median(rss):4.0f}/{max(rss):4.0f} MB" if rss else ""
    return f"{per_clip * 1000:7.0f} ms {growth:8s} {mem:12s}"


def report(results: list[dict], shard_size: int) -> None:
    """Per step and for the wall clock: seconds per clip, growth against the smallest size,
    the median and largest peak RSS of its jobs, and how many jobs."""
    base = results[0]
    print(f"\n`snakemake --cores 2 preprocess`, shard_size {shard_size}: per clip (growth "
          f"against {base['size']} clips), peak RSS of a job (median/largest), jobs:")
    print(f"    {'step':12s}" + "".join(f"{r['size']:>7d} clips" + " " * 21 for r in results))
    for step in STEPS:
        per0 = base["steps"].get(step, (0.0, 0.0))[0] / base["size"]
        line = f"    {step:12s}"
        for r in results:
            secs = r["steps"].get(step, (0.0, 0.0))[0]
            line += _cell(secs / r["size"], per0 if r is not base else None,
                          r["rss"].get(step, []))
        print(line + f"  jobs {'/'.join(str(len(r['rss'][step])) for r in results)}")
    per0 = base["wall"] / base["size"]
    print(f"    {'wall clock':12s}" + "".join(
        _cell(r["wall"] / r["size"], per0 if r is not base else None) for r in results))
    worst = results[-1]["wall"] / results[-1]["size"] / per0
    print(f"    wall clock per clip at {results[-1]['size']} clips: {worst:.2f}x that at "
          f"{base['size']} (target <= 1.1x: {'met' if worst <= 1.1 else 'NOT met'})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 400, 1600])
    ap.add_argument("--shard-size", type=int, default=100)
    ap.add_argument("--meld-csv", type=Path, default=SHARED_CSV)
    ap.add_argument("--build-only", action="store_true", help="build and cache the clips")
    args = ap.parse_args()
    if not args.meld_csv.is_file():
        raise SystemExit(f"{args.meld_csv} is absent: the clips are drawn from a MELD CSV")
    start = time.monotonic()
    folder, rows = make_meld_like_clips(args.meld_csv, max(args.sizes))
    print(f"{len(rows)} clips in {folder} ({time.monotonic() - start:.0f} s to make or find)")
    if args.build_only:
        return
    os.environ["TQDM_DISABLE"] = "1"
    from meldflow.model_cache.stage import stage_whisper

    tmp = Path(tempfile.mkdtemp(prefix="meldflow-scale-"))
    try:
        hf = tmp / "hf"
        stage_whisper(hf, "tiny.en", source="package")
        results = []
        for size in sorted(args.sizes):
            results.append(measure(size, folder, rows, hf, args.shard_size, tmp))
            r = results[-1]
            print(f"  {size} clips: {r['wall']:.0f} s wall, "
                  f"{sum(len(v) for v in r['rss'].values())} jobs",
                  flush=True)
        report(results, args.shard_size)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
