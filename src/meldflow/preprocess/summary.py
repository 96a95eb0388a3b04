"""The end of preprocessing: rows per status and split, printed and saved, and the audit.

Owns ``results/manifest/summary.{tsv,txt,png}`` (the `summary` rule).
"""

from __future__ import annotations

import collections
import json
from pathlib import Path

import pyarrow.parquet as pq

from meldflow.preprocess.audit import audit_rows, write_audit
from meldflow.row_status import STATUSES
from meldflow.storage import atomic_path, write_text


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


def run_summary(manifest_paths: list[str | Path], unused_paths: list[str | Path],
                out_tsv: str | Path, audit_max_wer: float, out_png: str | Path | None = None,
                ingest_infos: list[str | Path] | None = None, audit_out: str | Path | None = None,
                txt_out: str | Path | None = None) -> str:
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
