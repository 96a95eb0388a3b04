"""A MELD.Raw-like folder run through the workflow, for the benchmarks: its annotation CSV,
`snakemake --cores 2 preprocess` from scratch, and what the run left (job times and peak
memory from the DAG's own benchmark files, transcripts, the audit)."""

from __future__ import annotations

import collections
import csv
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")


def _timestamp(seconds: float) -> str:
    ms = round(seconds * 1000)
    return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"


def run_workflow(work: Path, meld: Path, hf: Path, shard_size: int) -> float:
    """Seconds of `snakemake --cores 2 preprocess` on ``meld``'s train split, from scratch."""
    import yaml

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config.update({"meld_dir": str(meld), "hf_home": str(hf), "splits": ["train"],
                   "shard_size": shard_size})
    (work / "config").mkdir(parents=True)
    (work / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    start = time.perf_counter()
    proc = subprocess.run([str(SNAKEMAKE), "-s", str(REPO / "Snakefile"), "-d", str(work),
                           "--cores", "2", "preprocess"], capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError(f"snakemake failed:\n{proc.stderr[-3000:]}")
    return elapsed


def job_times(work: Path) -> dict[str, tuple[float, float]]:
    """(sum of seconds, largest max RSS in MB) per rule, from the DAG's benchmark files
    (Snakemake samples memory every 0.5 s)."""
    out: dict[str, tuple[float, float]] = {}
    root = work / "results" / "benchmarks"
    for tsv in sorted(root.rglob("*.tsv")):
        rule = tsv.relative_to(root).parts[0].removesuffix(".tsv")
        with tsv.open() as f:
            row = next(csv.DictReader(f, delimiter="\t"))
        rss = float(row["max_rss"]) if row["max_rss"] not in ("", "NA", "-") else 0.0
        seconds, peak = out.get(rule, (0.0, 0.0))
        out[rule] = (seconds + float(row["s"]), max(peak, rss))
    return out


def clip_key(clip: Path) -> tuple[int, int]:
    """(dialogue, utterance) of a clip named as MELD's are (``dia{D}_utt{U}.mp4``)."""
    from meldflow.annotations import CLIP_RE

    dia, utt = CLIP_RE.match(Path(clip).name).groups()
    return int(dia), int(utt)


def write_csv(meld: Path, clips, times) -> None:
    """The train split's annotation CSV for ``clips`` ((path, text), named as MELD's): their
    dialogue and utterance, text and CSV times."""
    with (meld / "train_sent_emo.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID",
                    "Utterance_ID", "Season", "Episode", "StartTime", "EndTime"])
        for i, ((clip, text), (start, end)) in enumerate(zip(clips, times, strict=True)):
            w.writerow([i + 1, text, "A", "neutral", "neutral", *clip_key(clip), 1, 1,
                        _timestamp(start), _timestamp(end)])


def dag_transcripts(work: Path, clips) -> list[str]:
    """The DAG's transcripts of ``clips`` ((path, text)), in their order."""
    import pyarrow.parquet as pq

    table = pq.read_table(sorted((work / "results" / "transcripts" / "train").glob("*.parquet")))
    by_key = {(r["dialogue_id"], r["utterance_id"]): r["transcript"] for r in table.to_pylist()}
    return [by_key[clip_key(c)] for c, _ in clips]


def audit_share(work: Path) -> tuple[int, int, collections.Counter]:
    """(rows the audit lists, rows in all, how often each reason) of a `preprocess` run."""
    import pyarrow.parquet as pq

    with (work / "results" / "manifest" / "audit.tsv").open() as f:
        listed = list(csv.DictReader(f, delimiter="\t"))
    why = collections.Counter(w for r in listed for w in r["why"].split(","))
    total = pq.read_metadata(work / "results" / "manifest" / "train.parquet").num_rows
    return len(listed), total, why
