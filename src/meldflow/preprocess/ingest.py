"""Read MELD annotation CSVs, find each row's clip and cut the split into shards.

Owns ``results/ingest/{split}.parquet`` (one row per annotation row, with its shard),
``{split}.shards.json`` (shard count and a digest per shard, read by the workflow) and
``{split}.unused.tsv`` (clips on disk that no annotation row uses: listed, never processed).
A new plan moves the step shards it does not make to ``results/stale/``, so that a folder of
shards never mixes two layouts.

A shard's digest covers its rows and the size and modification time of each of its clips,
so the workflow redoes exactly the shards whose input changed: a clip added, repaired or
replaced after a run is picked up by the next one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

import pyarrow as pa

from meldflow import MeldflowError
from meldflow.annotations import (
    CLIP_DIRS,
    CLIP_RE,
    DUPLICATE_PREFIX,
    Annotation,
    clip_dir,
    find_csv,
    read_annotations,
)
from meldflow.preprocess.probe import ClipError, check_clip_file
from meldflow.shard_schema import INGEST_SCHEMA, ROWS_METADATA, SHARD_INDEX
from meldflow.storage import read_metadata, table_metadata, write_table, write_text

log = logging.getLogger(__name__)


def _stat_key(path: Path) -> list:
    """What identifies a clip file's content cheaply: size and modification time."""
    try:
        st = path.stat()
        return [st.st_size, st.st_mtime_ns]
    except OSError as exc:  # missing, dangling link, no permission: that is the state
        return [type(exc).__name__]


def clip_inventory(meld_dir: str | Path, split: str) -> str:
    """Digest of the split's clip folder: every clip name with its size and mtime.

    The workflow passes this to ``ingest`` as a parameter, so any clip added, removed or
    rewritten makes ingest run again (a few seconds of stat calls for all of MELD).
    """
    folder = clip_dir(meld_dir, split)
    digest = hashlib.sha256(str(folder.resolve()).encode())
    if folder.is_dir():
        for p in sorted(folder.iterdir()):
            if CLIP_RE.match(p.name):
                digest.update(json.dumps([p.name, *_stat_key(p)]).encode())
    return digest.hexdigest()


def shard_digests(table: pa.Table) -> dict[str, str]:
    """Per shard ("0000"): a digest of its rows and of each row's clip file state."""
    digests: dict = {}
    for rec in table.to_pylist():
        d = digests.setdefault(rec["shard"], hashlib.sha256())
        clip = [] if rec["clip_path"] is None else _stat_key(Path(rec["clip_path"]))
        d.update(json.dumps([rec, clip], sort_keys=True, default=str).encode())
    return {f"{k:04d}": v.hexdigest() for k, v in sorted(digests.items())}


def plan_shards(annotations: list[Annotation], shard_size: int) -> list[int]:
    """Shard index per annotation: about ``shard_size`` rows each, dialogues kept whole.

    Dialogues are packed in dialogue order; a dialogue longer than ``shard_size`` gets a
    shard of its own rather than being split.
    """
    if shard_size < 1:
        raise MeldflowError(f"shard_size must be at least 1, got {shard_size}")
    sizes: dict[int, int] = {}
    for a in annotations:
        sizes[a.dialogue_id] = sizes.get(a.dialogue_id, 0) + 1
    shard_of: dict[int, int] = {}
    shard, filled = 0, 0
    for dia in sorted(sizes):
        if filled and filled + sizes[dia] > shard_size:
            shard, filled = shard + 1, 0
        shard_of[dia] = shard
        filled += sizes[dia]
    return [shard_of[a.dialogue_id] for a in annotations]


def ingest_split(meld_dir: str | Path, split: str, shard_size: int) -> tuple[pa.Table, list[dict]]:
    """Annotation rows of one split with clip paths and shards, plus the clips no row uses."""
    annotations = read_annotations(find_csv(meld_dir, split))
    annotations.sort(key=lambda a: (a.dialogue_id, a.utterance_id))
    folder = clip_dir(meld_dir, split)
    on_disk = {}
    if folder.is_dir():
        on_disk = {p.name: p for p in folder.iterdir() if CLIP_RE.match(p.name)}
    used: set[str] = set()
    cols: dict[str, list] = {name: [] for name in INGEST_SCHEMA.names}
    shards = plan_shards(annotations, shard_size)
    for ann, shard in zip(annotations, shards, strict=True):
        status, reasons = "ok", list(ann.reasons)
        clip = on_disk.get(ann.clip_name)
        if clip is None and (DUPLICATE_PREFIX + ann.clip_name) in on_disk:
            clip = on_disk[DUPLICATE_PREFIX + ann.clip_name]
            ann.flags.append("duplicate_clip_used")
            reasons.append(f"{ann.clip_name} missing; used {clip.name}")
        if clip is None:
            status = "missing_video"
            reasons.insert(0, f"clip not found: {folder / ann.clip_name}")
        else:
            used.add(clip.name)
            try:
                check_clip_file(clip)
            except ClipError as exc:
                status = exc.status
                reasons.insert(0, str(exc))
        for name, value in (
            ("split", split), ("csv_line", ann.line), ("sr_no", ann.sr_no),
            ("dialogue_id", ann.dialogue_id), ("utterance_id", ann.utterance_id),
            ("speaker", ann.speaker), ("utterance", ann.utterance), ("emotion", ann.emotion),
            ("sentiment", ann.sentiment), ("season", ann.season), ("episode", ann.episode),
            ("start_s", ann.start_s), ("end_s", ann.end_s),
            ("clip_path", os.path.abspath(clip) if clip is not None else None),
            ("shard", shard), ("status", status), ("reason", "; ".join(reasons)),
            ("flags", ann.flags),
        ):
            cols[name].append(value)
    unused = []
    for name in sorted(on_disk):
        if name in used:
            continue
        m = CLIP_RE.match(name)
        kind = "duplicate" if name.startswith(DUPLICATE_PREFIX) else "unannotated"
        unused.append({"clip": name, "dialogue_id": int(m.group(1)),
                       "utterance_id": int(m.group(2)), "kind": kind})
    return pa.table(cols, schema=INGEST_SCHEMA), unused


def clip_dir_warning(folder: Path, split: str, found: int, rows: int) -> str | None:
    """A warning when the clip folder is missing or holds none of the split's clips."""
    if not folder.is_dir():
        return (f"{split}: clip folder {folder} does not exist, so every row is "
                f"missing_video; MELD.Raw keeps {split} clips in {CLIP_DIRS[split]}/ next to "
                f"the CSV: check meld_dir and the folder name")
    if rows and not found:
        return (f"{split}: no clip of the {rows} annotation rows is in {folder}; is it the "
                f"right folder (clips are named dia{{D}}_utt{{U}}.mp4)?")
    return None


def shard_of(rows: pa.Table) -> dict | None:
    """Which rows these are, for the shard made from them to record (ROWS_METADATA): the
    split, the shard and its digest in the ingest plan, from the ingest table's metadata;
    None for rows that are not one shard of an ingest table."""
    info = table_metadata(rows).get("meldflow_ingest")
    shards = set(rows.column("shard").to_pylist()) if "shard" in rows.column_names else set()
    if not info or len(shards) != 1:
        return None
    shard = shards.pop()
    return {"split": info["split"], "shard": shard,
            "digest": info["shard_digests"].get(f"{shard:04d}")}


def move_stale_shards(folders: list[str | Path], info: dict,
                      stale_to: str | Path) -> list[tuple[Path, Path]]:
    """Move aside every shard in ``folders`` that the plan ``info`` does not make (a shard
    beyond its count, or one made from other rows: an older shard_size, an edited CSV, a
    replaced clip) to ``{stale_to}/{time}/{step}/{split}/``, and drop each folder's shard
    index (the manifest step writes it anew). Returns (from, to) of each shard moved."""
    digests = info["shard_digests"]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    moved = []
    for folder in map(Path, folders):
        (folder / SHARD_INDEX).unlink(missing_ok=True)
        for path in sorted(folder.glob("shard-*.parquet")):
            try:
                made = read_metadata(path).get(ROWS_METADATA) or {}
            except (OSError, pa.ArrowException):  # cut short: nothing to keep
                made = {}
            wanted = digests.get(path.stem.removeprefix("shard-"))
            if wanted is not None and made.get("digest") == wanted:
                continue
            dest = Path(stale_to) / stamp / folder.parent.name / folder.name / path.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, dest)
            moved.append((path, dest))
    if moved:
        log.warning("%d shard(s) of an older layout or of other rows moved aside to %s",
                    len(moved), Path(stale_to) / stamp)
    return moved


def run_ingest(meld_dir: str | Path, split: str, shard_size: int, out: str | Path,
               unused_out: str | Path | None = None, info_out: str | Path | None = None,
               stale_from: list[str | Path] = (), stale_to: str | Path | None = None) -> dict:
    """Write the ingest table, the shard plan (``info_out``, default ``{out}.shards.json``)
    and the list of unused clips (``unused_out``, default ``{out}.unused.tsv``); move the
    shards in ``stale_from`` that the new plan does not make to ``stale_to``."""
    out = Path(out)
    table, unused = ingest_split(meld_dir, split, shard_size)
    num_shards = (max(table.column("shard").to_pylist()) + 1) if table.num_rows else 0
    folder = clip_dir(meld_dir, split)
    found = sum(p is not None for p in table.column("clip_path").to_pylist())
    info = {"split": split, "rows": table.num_rows, "num_shards": num_shards,
            "shard_size": shard_size, "unused_clips": len(unused),
            "clip_dir": str(folder.resolve()), "clips_found": found,
            "warning": clip_dir_warning(folder, split, found, table.num_rows),
            "shard_digests": shard_digests(table)}
    if info["warning"]:
        log.warning("%s", info["warning"])
    write_table(table, out, metadata={"meldflow_ingest": info})
    lines = ["clip\tdialogue_id\tutterance_id\tkind"]
    lines += [f"{u['clip']}\t{u['dialogue_id']}\t{u['utterance_id']}\t{u['kind']}" for u in unused]
    write_text("\n".join(lines) + "\n", unused_out or out.with_suffix(".unused.tsv"))
    write_text(json.dumps(info, indent=2) + "\n", info_out or out.with_suffix(".shards.json"))
    if stale_from:
        info["moved_aside"] = len(move_stale_shards(stale_from, info, stale_to))
    return info


def shard_rows(path: str | Path, shard: int) -> pa.Table:
    """The rows of one shard of an ingest table. Read whole and filtered here: a filter given
    to ``read_table`` imports pyarrow.dataset, 0.4 s of every shard job's start."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pq.ParquetFile(path).read()
    table = table.filter(pc.equal(table["shard"], shard))
    if table.num_rows == 0:
        raise MeldflowError(f"{path} has no rows in shard {shard}")
    return table
