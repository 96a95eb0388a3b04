"""Join annotation, transcript and frames per utterance into the training shards.

Owns ``results/aligned/{split}/shard-NNNN.parquet`` (schema: docs/shards.md) and the
folder's list of them, ``shards.json``: a folder is read by its list, never by globbing, so
that a shard another layout left there is never read.
"""

from __future__ import annotations

import bisect
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from meldflow import MeldflowError
from meldflow.preprocess.ingest import shard_of
from meldflow.row_status import worst
from meldflow.shard_schema import (
    ALIGNED_SCHEMA,
    FROM_INGEST,
    NO_CLIP_REASON,
    ROWS_METADATA,
    SHARD_INDEX,
)
from meldflow.storage import read_metadata, table_metadata, write_table, write_text

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
    made_of = {**table_metadata(transcripts), **table_metadata(frames),
               ROWS_METADATA: shard_of(rows)}
    write_table(table, out, row_group_size=rows_per_group(table), metadata=made_of)
    return table


def write_shard_index(index: str | Path, split: str, shards: list[str | Path]) -> dict:
    """The list of a split's aligned shards (every one of its layout, made), written to
    ``index`` in their folder: file, rows and the ingest digest each was made from."""
    index = Path(index)
    listed = []
    for path in map(Path, shards):
        if path.resolve().parent != index.resolve().parent:
            raise MeldflowError(f"{path} is not in {index.parent}: a shard index lists the "
                                f"shards of its own folder")
        made = read_metadata(path).get(ROWS_METADATA) or {}
        listed.append({"file": path.name, "rows": pq.read_metadata(path).num_rows,
                       "digest": made.get("digest")})
    record = {"split": split, "shards": listed}
    write_text(json.dumps(record, indent=1) + "\n", index)
    return record


def read_shard_index(folder: str | Path) -> list[str]:
    """The aligned shards of ``folder``, as its ``shards.json`` lists them, each checked to be
    the one listed (made from the same rows); files the list does not name are not read."""
    folder = Path(folder)
    index = folder / SHARD_INDEX
    rerun = "run the workflow's preprocess target (again) to finish it"
    if not index.is_file():
        raise MeldflowError(f"{folder} has no {SHARD_INDEX}, the list of its shards: it was "
                            f"made by an older meldflow or its preprocessing did not finish; "
                            f"{rerun}")
    try:
        listed = json.loads(index.read_text())["shards"]
    except (ValueError, KeyError, TypeError) as exc:
        raise MeldflowError(f"{index} is damaged ({exc}); {rerun}") from None
    paths = []
    for entry in listed:
        path = folder / entry["file"]
        made = (read_metadata(path).get(ROWS_METADATA) or {}) if path.is_file() else None
        if made is None or made.get("digest") != entry["digest"]:
            what = "missing" if made is None else "made from other rows than listed"
            raise MeldflowError(f"{path}, listed in {index}, is {what}: the shards are being "
                                f"rebuilt; {rerun}")
        paths.append(str(path))
    return paths
