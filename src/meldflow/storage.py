"""Atomic writes: a reader never sees a half-written file, a crash leaves no output; and the
one file hash (``sha256_file``) every check of a written file compares.

Files get the mode the umask gives any new file (0644 under 022, 0664 under 002), so a
cache or results folder written by one user is readable by colleagues. ``mkstemp``, which
the temporary names come from, would otherwise leave every file 0600.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from meldflow import MeldflowError

_UMASK_LOCK = threading.Lock()


def sha256_file(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, as hex."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def current_umask() -> int:
    """This process's umask, read without changing it where Linux allows."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _UMASK_LOCK:  # elsewhere: set and restore, under a lock
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def new_file_mode() -> int:
    """The mode ``open()`` would give a new file here (0666 less the umask)."""
    return 0o666 & ~current_umask()


def honour_umask(tree: str | os.PathLike) -> None:
    """Give every file under ``tree`` (and the folders) the mode the umask gives new ones.

    For what other libraries write before meldflow renames it into place: safetensors
    (``save_pretrained``, the heads) creates its files 0600 whatever the umask.
    """
    tree = Path(tree)
    file_mode, dir_mode = new_file_mode(), 0o777 & ~current_umask()
    for p in [tree, *tree.rglob("*")]:
        if p.is_symlink():
            continue
        p.chmod(dir_mode if p.is_dir() else file_mode)


def temporary_beside(path: Path) -> Path:
    """A new, empty file beside ``path`` to write to, with the mode the umask gives."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, new_file_mode())
    os.close(fd)
    return Path(tmp)


# Write errors a user fixes outside meldflow: what each means, and what to do.
_WRITE_ERRORS = {
    errno.ENOSPC: ("the disk is full", "free space there (df -h; du -sh) or write elsewhere"),
    errno.EDQUOT: ("the disk quota is used up", "free space there (quota -s) or write "
                   "elsewhere"),
    errno.EROFS: ("the file system is read-only", "write elsewhere"),
    errno.EACCES: ("permission denied", "make the folder writable, or write elsewhere"),
}


def raise_write_error(exc: OSError, path: str | os.PathLike):
    """Raise a one-line MeldflowError for a write to ``path`` that failed for want of room
    or rights, else ``exc`` itself; pyarrow raises these with the errno in the message."""
    code = getattr(exc, "errno", None)
    if code not in _WRITE_ERRORS:
        code = next((c for c in _WRITE_ERRORS if f"[errno {c}]" in str(exc).lower()), None)
    if code is None:
        raise exc
    why, fix = _WRITE_ERRORS[code]
    raise MeldflowError(f"cannot write {path}: {why}; {fix}, then run the same command "
                        f"again (files written before are as they were)") from None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path`` to write to; renamed onto ``path`` on success.
    A full disk or a read-only folder is a MeldflowError naming ``path``; ``path`` keeps
    what it held."""
    path = Path(path)
    try:
        tmp = temporary_beside(path)
    except OSError as exc:
        raise_write_error(exc, path)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        raise_write_error(exc, path)
    finally:
        tmp.unlink(missing_ok=True)


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
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, row_group_size=row_group_size, compression="zstd")
    return path


def write_text(text: str, path: str | os.PathLike) -> Path:
    """Write a small text file atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def table_metadata(table: pa.Table) -> dict[str, Any]:
    """The JSON metadata that :func:`write_table` stored with a table, as read back."""
    out = {}
    for k, v in (table.schema.metadata or {}).items():
        key = k.decode()
        if key.startswith("ARROW:") or key == "pandas":
            continue
        try:
            out[key] = json.loads(v)
        except ValueError:
            continue
    return out


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON metadata that :func:`write_table` stored in a Parquet file."""
    return table_metadata(pq.read_schema(path).empty_table())
