"""The per-split manifest: exactly one row per annotation row, with status and reason.

Owns ``results/manifest/{split}.parquet``; lists the split's aligned shards
(``results/aligned/{split}/shards.json``, whose format meldflow.preprocess.align owns) once
they match the annotation rows one for one.
"""

from __future__ import annotations

import collections
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from meldflow import MeldflowError
from meldflow.preprocess.align import write_shard_index
from meldflow.storage import write_table

MANIFEST_COLUMNS = ["split", "dialogue_id", "utterance_id", "shard", "status", "reason",
                    "flags", "utterance", "transcript", "wer", "clip_duration_s"]


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


def manifest_without_clips(ingest: pa.Table) -> pa.Table:
    """Manifest rows of a split preprocessed without its clips (its folder is missing and
    every run reads only the gold lines): each row as ingest found it, no transcript and
    no frames."""
    n = ingest.num_rows
    table = ingest.select(["split", "dialogue_id", "utterance_id", "shard", "status",
                           "reason", "flags", "utterance"])
    for name, kind in (("transcript", pa.string()), ("wer", pa.float64()),
                       ("clip_duration_s", pa.float64())):
        table = table.append_column(name, pa.nulls(n, kind))
    table = table.append_column("n_frames", pa.array([0] * n, pa.int32()))
    table = table.append_column("aligned_file", pa.nulls(n, pa.string()))
    table = table.append_column("csv_line", ingest.column("csv_line"))
    return table.sort_by([("dialogue_id", "ascending"), ("utterance_id", "ascending")])


def run_manifest(ingest_path: str | Path, aligned_paths: list[str | Path],
                 out: str | Path, index: str | Path | None = None) -> pa.Table:
    """The manifest from the aligned shards; with none (``[]``), from the ingest table
    alone (a split preprocessed without its clips). ``index``: where to list the shards
    (their folder's ``shards.json``), once they have matched the annotation rows."""
    ingest = pq.read_table(ingest_path)
    table = build_manifest(ingest, aligned_paths) if aligned_paths else \
        manifest_without_clips(ingest)
    write_table(table, out)
    if index is not None:
        write_shard_index(index, ingest.column("split")[0].as_py() if ingest.num_rows
                          else "", aligned_paths)
    return table
