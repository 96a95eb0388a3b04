"""The per-split manifest: exactly one row per annotation row, with status and reason.

Owns ``results/manifest/{split}.parquet``, ``results/manifest/summary.{tsv,txt,png}`` and
``results/manifest/audit.tsv`` (the rows a researcher should look at before trusting them).
"""

from __future__ import annotations

import collections
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from meldflow import MeldflowError
from meldflow.row_status import FLAGS, STATUSES
from meldflow.storage import atomic_path, write_table, write_text

MANIFEST_COLUMNS = ["split", "dialogue_id", "utterance_id", "shard", "status", "reason",
                    "flags", "utterance", "transcript", "wer", "clip_duration_s"]
# Whisper disagreeing with most of the gold line: a mis-cut clip, another speaker's line,
# or noise (on real MELD whisper-small's median per-utterance WER is about 0.17).
AUDIT_MAX_WER = 0.75
AUDIT_COLUMNS = ["split", "dialogue_id", "utterance_id", "csv_line", "status", "why", "wer",
                 "utterance", "transcript", "reason"]


def build_manifest(ingest: pa.Table, aligned_paths: list[str | Path]) -> pa.Table:
    """Manifest rows from the aligned shards, checked one-for-one against the ingest table."""
    parts = []
    for p in aligned_paths:
        t = pq.read_table(p, columns=MANIFEST_COLUMNS + ["frames"])
        n_frames = pc.list_value_length(t.column("frames")).fill_null(0)
        t = t.drop(["frames"]).append_column("n_frames", n_frames)
        t = t.append_column("aligned_file", pa.array([Path(p).name] * t.num_rows, pa.string()))
        parts.append(t)
    if not parts:
        raise MeldflowError("no aligned shards given")
    table = pa.concat_tables(parts)
    want = collections.Counter(zip(ingest.column("dialogue_id").to_pylist(),
                                   ingest.column("utterance_id").to_pylist(), strict=True))
    have = collections.Counter(zip(table.column("dialogue_id").to_pylist(),
                                   table.column("utterance_id").to_pylist(), strict=True))
    if want != have:
        lost = sorted((want - have).elements())[:5]
        extra = sorted((have - want).elements())[:5]
        raise MeldflowError(
            f"aligned shards do not match the annotation rows one for one "
            f"(missing e.g. {lost}, unexpected e.g. {extra})"
        )
    csv_line = {(d, u): ln for d, u, ln in zip(ingest.column("dialogue_id").to_pylist(),
                                               ingest.column("utterance_id").to_pylist(),
                                               ingest.column("csv_line").to_pylist(),
                                               strict=True)}
    lines = [csv_line[(d, u)] for d, u in zip(table.column("dialogue_id").to_pylist(),
                                              table.column("utterance_id").to_pylist(),
                                              strict=True)]
    table = table.append_column("csv_line", pa.array(lines, pa.int32()))
    return table.sort_by([("dialogue_id", "ascending"), ("utterance_id", "ascending")])


def run_manifest(ingest_path: str | Path, aligned_paths: list[str | Path],
                 out: str | Path) -> pa.Table:
    table = build_manifest(pq.read_table(ingest_path), aligned_paths)
    write_table(table, out)
    return table


def summarise(manifest_paths: list[str | Path]) -> tuple[list[str], dict[str, collections.Counter]]:
    """Status counts per split, statuses in severity order."""
    counts: dict[str, collections.Counter] = {}
    for p in manifest_paths:
        t = pq.read_table(p, columns=["split", "status"])
        for split, status in zip(t.column("split").to_pylist(), t.column("status").to_pylist(),
                                 strict=True):
            counts.setdefault(split, collections.Counter())[status] += 1
    return list(STATUSES), counts


def format_summary(manifest_paths: list[str | Path], unused: dict[str, int] | None = None) -> str:
    """A fixed-width table: one line per split, one column per status."""
    statuses, counts = summarise(manifest_paths)
    shown = [s for s in statuses if any(c[s] for c in counts.values())] or ["ok"]
    head = ["split", *shown, "total"] + (["unused_clips"] if unused is not None else [])
    rows = [head]
    for split, c in counts.items():
        row = [split, *(str(c[s]) for s in shown), str(sum(c.values()))]
        if unused is not None:
            row.append(str(unused.get(split, 0)))
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True))
                     for r in rows) + "\n"


def plot_summary(manifest_paths: list[str | Path], out: str | Path) -> None:
    """A stacked bar per split: how many rows ended in each status."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    statuses, counts = summarise(manifest_paths)
    splits = list(counts)
    fig, ax = plt.subplots(figsize=(6, 0.6 + 0.5 * len(splits)))
    left = [0] * len(splits)
    for s in statuses:
        vals = [counts[sp][s] for sp in splits]
        if any(vals):
            ax.barh(splits, vals, left=left, label=s)
            left = [a + b for a, b in zip(left, vals, strict=True)]
    ax.set_xlabel("annotation rows")
    ax.set_title("meldflow: rows per status")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def audit_rows(manifest_paths: list[str | Path], max_wer: float = AUDIT_MAX_WER) -> list[dict]:
    """Rows to look at before trusting them: a status other than ok, any flag, or a
    transcript whose WER against the gold utterance exceeds ``max_wer``."""
    out = []
    for p in manifest_paths:
        for r in pq.read_table(p).to_pylist():
            why = [] if r["status"] == "ok" else [r["status"]]
            why += [f for f in r["flags"] or [] if f in FLAGS]
            if r["wer"] is not None and r["wer"] > max_wer:
                why.append(f"wer>{max_wer:g}")
            if why:
                out.append(r | {"why": ",".join(why)})
    return out


def write_audit(rows: list[dict], out: str | Path) -> None:
    def cell(v) -> str:
        if v is None:
            return ""
        if isinstance(v, float):
            return f"{v:.3f}"
        return str(v).replace("\t", " ").replace("\n", " ")

    lines = ["\t".join(AUDIT_COLUMNS)]
    lines += ["\t".join(cell(r[c]) for c in AUDIT_COLUMNS) for r in rows]
    write_text("\n".join(lines) + "\n", out)


def run_summary(manifest_paths: list[str | Path], unused_paths: list[str | Path],
                out_tsv: str | Path, out_png: str | Path | None = None,
                ingest_infos: list[str | Path] | None = None, audit_out: str | Path | None = None,
                audit_max_wer: float = AUDIT_MAX_WER, txt_out: str | Path | None = None) -> str:
    import json

    unused = {}
    for p in unused_paths:
        lines = Path(p).read_text().splitlines()[1:]
        unused[Path(p).name.split(".")[0]] = len([ln for ln in lines if ln.strip()])
    text = format_summary(manifest_paths, unused)
    for p in ingest_infos or []:
        warning = json.loads(Path(p).read_text()).get("warning")
        if warning:
            text += f"WARNING: {warning}\n"
    if audit_out:
        rows = audit_rows(manifest_paths, audit_max_wer)
        write_audit(rows, audit_out)
        per_split = collections.Counter(r["split"] for r in rows)
        text += (f"audit: {len(rows)} row(s) to check before trusting them ("
                 + ", ".join(f"{s} {n}" for s, n in per_split.items())
                 + f"): non-ok status, a flag, or WER > {audit_max_wer:g}; "
                 f"listed in {audit_out}\n") if rows else "audit: no suspicious rows\n"
    statuses, counts = summarise(manifest_paths)
    tsv = ["split\tstatus\trows"] + [f"{sp}\t{s}\t{c[s]}" for sp, c in counts.items()
                                      for s in statuses if c[s]]
    write_text("\n".join(tsv) + "\n", out_tsv)
    write_text(text, txt_out or Path(out_tsv).with_suffix(".txt"))
    if out_png:
        plot_summary(manifest_paths, out_png)
    return text
