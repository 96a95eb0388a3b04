"""Join annotation, transcript and frames per utterance into the training shards.

Owns ``results/aligned/{split}/shard-NNNN.parquet`` (schema: docs/shards.md).
"""

from __future__ import annotations

import bisect
from pathlib import Path

import pyarrow as pa

from meldflow import MeldflowError
from meldflow.row_status import worst
from meldflow.shard_schema import ALIGNED_SCHEMA, FROM_INGEST, NO_CLIP_REASON
from meldflow.storage import table_metadata, write_table

ROW_GROUP_BYTES = 32 * 1024 * 1024  # tens of MB: big reads on Lustre/GPFS, modest memory


def word_at(words: list[dict], t: float) -> str | None:
    """The word being spoken at time ``t`` (its [start, end] holds t), else ``None``."""
    starts = [w["start"] for w in words]
    i = bisect.bisect_right(starts, t) - 1
    if i >= 0 and words[i]["start"] <= t <= words[i]["end"]:
        return words[i]["word"]
    return None


def _by_key(table: pa.Table, what: str) -> dict[tuple[int, int], dict]:
    out = {}
    for rec in table.to_pylist():
        out[(rec["dialogue_id"], rec["utterance_id"])] = rec
    if len(out) != table.num_rows:
        raise MeldflowError(f"{what}: duplicate (dialogue_id, utterance_id) rows")
    return out


def _join_reasons(*parts: str) -> str:
    seen: list[str] = []
    for p in parts:
        if p and p not in seen and p != NO_CLIP_REASON:
            seen.append(p)
    return "; ".join(seen)


def align_shard(rows: pa.Table, transcripts: pa.Table, frames: pa.Table) -> pa.Table:
    """One aligned row per ingest row; a row missing from a step's output is an error."""
    asr, frm = _by_key(transcripts, "transcripts"), _by_key(frames, "frames")
    cols: dict[str, list] = {name: [] for name in ALIGNED_SCHEMA.names}
    for rec in rows.to_pylist():
        key = (rec["dialogue_id"], rec["utterance_id"])
        if key not in asr or key not in frm:
            step = "transcripts" if key not in asr else "frames"
            raise MeldflowError(
                f"{step} output has no row for dialogue {key[0]} utterance {key[1]}; "
                f"it is stale: delete it and rerun"
            )
        a, f = asr[key], frm[key]
        words = a["words"] or []
        status = worst([rec["status"], f["frame_status"], a["asr_status"]])
        flags = sorted(set(rec["flags"] or []) | set(f["frame_flags"] or [])
                       | set(a["asr_flags"] or []))
        row = {k: rec[k] for k in FROM_INGEST}
        row.update(
            status=status,
            reason=_join_reasons(rec["reason"], f["frame_reason"], a["asr_reason"]),
            flags=flags, transcript=a["transcript"], words=words, wer=a["wer"],
            clip_duration_s=f["clip_duration_s"], frames=f["frames"] or [],
            frame_times=f["frame_times"] or [],
            frame_words=[word_at(words, t) for t in (f["frame_times"] or [])],
        )
        for k, v in row.items():
            cols[k].append(v)
    return pa.table(cols, schema=ALIGNED_SCHEMA)


def rows_per_group(table: pa.Table, target_bytes: int = ROW_GROUP_BYTES) -> int:
    """Row-group length that makes groups about ``target_bytes`` (frames dominate)."""
    if table.num_rows == 0:
        return 1
    per_row = max(1, table.nbytes // table.num_rows)
    return max(1, min(table.num_rows, target_bytes // per_row))


def run_align(rows: pa.Table, transcripts: pa.Table, frames: pa.Table, out: str | Path) -> pa.Table:
    table = align_shard(rows, transcripts, frames)
    # The shard carries what made it: the Whisper model's file hashes and the decoding and
    # frame options, copied from the two inputs.
    made_of = {**table_metadata(transcripts), **table_metadata(frames)}
    write_table(table, out, row_group_size=rows_per_group(table), metadata=made_of)
    return table
