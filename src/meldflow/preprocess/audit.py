"""The MELD audit: the rows a researcher should look at before trusting them.

Owns ``results/manifest/audit.tsv``: every row with a status other than ok, any flag
(each means damage, see ``meldflow.row_status.FLAGS``), or a transcript far from
the gold text.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from meldflow.row_status import FLAGS
from meldflow.storage import write_text

AUDIT_COLUMNS = ["split", "dialogue_id", "utterance_id", "csv_line", "status", "why", "wer",
                 "utterance", "transcript", "reason"]


def audit_rows(manifest_paths: list[str | Path], max_wer: float) -> list[dict]:
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
