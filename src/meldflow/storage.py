"""Atomic Parquet writes: a reader never sees a half-written file, a crash leaves no output."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq


def _tmp_beside(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(tmp)


def write_table(
    table: pa.Table,
    path: str | os.PathLike,
    *,
    row_group_size: int | None = None,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write ``table`` to ``path`` via a temporary file and an atomic rename."""
    path = Path(path)
    if metadata:
        merged = dict(table.schema.metadata or {})
        merged.update({k.encode(): json.dumps(v).encode() for k, v in metadata.items()})
        table = table.replace_schema_metadata(merged)
    tmp = _tmp_beside(path)
    try:
        pq.write_table(table, tmp, row_group_size=row_group_size, compression="zstd")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text(text: str, path: str | os.PathLike) -> Path:
    """Write a small text file atomically."""
    path = Path(path)
    tmp = _tmp_beside(path)
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON metadata that :func:`write_table` stored with a table."""
    raw = pq.read_schema(path).metadata or {}
    out = {}
    for k, v in raw.items():
        key = k.decode()
        if key.startswith("ARROW:") or key == "pandas":
            continue
        try:
            out[key] = json.loads(v)
        except ValueError:
            continue
    return out
