"""Training examples from the aligned shards (or, text only, from the annotation CSVs).

The plan of an epoch is a pure function of (seed, epoch, streams): row groups are shuffled
and dealt to ``streams`` streams; global batch i is the i-th local batch of every stream,
side by side. A DDP rank reads only its own streams, i.e. whole row groups, and the same
plan read by one process gives the same global batches, so 1 and N processes train alike.
Streams shorter than the longest are padded with zero-weight repeats.
"""

from __future__ import annotations

import io
import random
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from meldflow import MeldflowError
from meldflow.annotations import read_annotations
from meldflow.labels import EMOTIONS, SENTIMENTS

try:  # a compiled wheel, pinned; without it the reader is slower, never different
    import simplejpeg as _simplejpeg
except ImportError:  # pragma: no cover
    _simplejpeg = None

TEXT_COLUMNS = ["split", "dialogue_id", "utterance_id", "speaker", "utterance", "emotion",
                "sentiment", "status", "transcript"]
CSV_CHUNK = 512  # rows per "row group" when the source is a CSV


@dataclass(frozen=True)
class Unit:
    """One row group of one file: the smallest piece a rank reads."""

    path: str
    group: int
    rows: int  # rows used (after exclusions)
    keep: tuple[int, ...] | None = None  # which rows of the group; None: all


@dataclass(frozen=True)
class Exclude:
    """Rows left out of training: any of ``flags``, or a WER above ``max_wer``."""

    flags: frozenset[str] = frozenset()
    max_wer: float | None = None

    def keeps(self, flags: list[str] | None, wer: float | None) -> bool:
        if self.flags & set(flags or []):
            return False
        return self.max_wer is None or wer is None or wer <= self.max_wer


def _damaged(path: str, exc: Exception) -> MeldflowError:
    return MeldflowError(f"{path} is not a readable Parquet file ({exc}); it is damaged or "
                         f"was cut short: delete it and run the workflow again to rebuild it")


def _check_one_row_each(meta: pa.Table, paths: list) -> None:
    """Refuse shards that hold an utterance twice: two layouts' shards of one folder read
    together (108 rows for 66 utterances once), or one file given twice."""
    keys = list(zip(meta.column("dialogue_id").to_pylist(),
                    meta.column("utterance_id").to_pylist(), strict=True))
    if len(set(keys)) != len(keys):
        seen: set = set()
        twice = sorted({k for k in keys if k in seen or seen.add(k)})
        names = sorted(map(str, paths))
        shown = ", ".join(names[:2]) + (f" and {len(names) - 2} more" if len(names) > 2 else "")
        raise MeldflowError(
            f"the shards {shown} hold {len(keys) - len(set(keys))} row(s) twice ((dialogue, "
            f"utterance) {', '.join(map(str, twice[:3]))}): shards of two layouts, or a file "
            f"given twice; read a folder by its shards.json (--aligned-dir)")


def open_parquet(path: str) -> pq.ParquetFile:
    """A Parquet file, or an error that names it and says how to rebuild it."""
    try:
        return pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as exc:
        raise _damaged(path, exc) from None


class Source:
    """Rows of one split, addressable by row group; loads a group's columns on demand."""

    def __init__(self, paths: list[str | Path] | None, csv: str | Path | None,
                 modalities: str, exclude: Exclude | None = None):
        self.modalities = modalities
        self.excluded = 0
        self.units: list[Unit] = []
        self._csv_table: pa.Table | None = None
        # The groups read last, most recent at the end: a batch takes rows from one group
        # per stream, so holding one group would re-read (and re-convert) every group of a
        # batch at every batch, a cost that grows with the group size.
        self._cache: OrderedDict[Unit, list[dict]] = OrderedDict()
        self.cache_units = 2
        self.context: dict[tuple[int, int], tuple[str, str]] = {}
        if csv is not None:
            if "vision" in modalities:
                raise MeldflowError("a CSV source has no frames: use modalities=text")
            anns = read_annotations(csv)
            self._csv_table = pa.table({
                "split": [Path(csv).name.split("_")[0]] * len(anns),
                "dialogue_id": [a.dialogue_id for a in anns],
                "utterance_id": [a.utterance_id for a in anns],
                "speaker": [a.speaker for a in anns], "utterance": [a.utterance for a in anns],
                "emotion": [a.emotion for a in anns], "sentiment": [a.sentiment for a in anns],
                "status": ["ok"] * len(anns), "transcript": [None] * len(anns),
            })
            n = len(anns)
            self.units = [Unit(str(csv), i, min(CSV_CHUNK, n - i * CSV_CHUNK))
                          for i in range((n + CSV_CHUNK - 1) // CSV_CHUNK)]
            meta = self._csv_table
        else:
            if not paths:
                raise MeldflowError("no aligned shards given")
            metas = []
            for p in sorted(str(p) for p in paths):
                f = open_parquet(p)
                try:
                    meta_p = f.read(columns=["dialogue_id", "utterance_id", "speaker",
                                             "utterance", "flags", "wer"])
                except (OSError, pa.ArrowException) as exc:
                    raise _damaged(p, exc) from None
                start = 0
                for g in range(f.num_row_groups):
                    n = f.metadata.row_group(g).num_rows
                    keep = None
                    if exclude is not None:
                        keep = tuple(i for i in range(n) if exclude.keeps(
                            meta_p["flags"][start + i].as_py(), meta_p["wer"][start + i].as_py()))
                        self.excluded += n - len(keep)
                    if keep is None or keep:
                        self.units.append(Unit(p, g, n if keep is None else len(keep), keep))
                    start += n
                metas.append(meta_p.drop(["flags", "wer"]))
            meta = pa.concat_tables(metas)
            _check_one_row_each(meta, paths)
        # Previous turns are looked up by id, so context survives any shuffling.
        for d, u, s, t in zip(*(meta.column(c).to_pylist() for c in
                                ("dialogue_id", "utterance_id", "speaker", "utterance")),
                              strict=True):
            self.context[(d, u)] = (s, t)

    def reserve(self, units: int) -> None:
        """Keep at least ``units`` groups read (those one batch draws from)."""
        self.cache_units = max(self.cache_units, units)

    def rows(self, unit: Unit) -> list[dict]:
        if unit in self._cache:
            self._cache.move_to_end(unit)
            return self._cache[unit]
        if self._csv_table is not None:
            rows = self._csv_table.slice(unit.group * CSV_CHUNK, unit.rows).to_pylist()
        else:
            cols = TEXT_COLUMNS + (["frames"] if "vision" in self.modalities else [])
            try:
                table = open_parquet(unit.path).read_row_group(unit.group, columns=cols)
            except (OSError, pa.ArrowException) as exc:
                raise _damaged(unit.path, exc) from None
            rows = table.to_pylist()
            if unit.keep is not None:
                rows = [rows[i] for i in unit.keep]
        self._cache[unit] = rows
        while len(self._cache) > self.cache_units:
            self._cache.popitem(last=False)
        return rows

    def labels(self) -> list[str]:
        return [e for u in self.units for e in self.unit_labels(u)]

    def unit_labels(self, u: Unit) -> list[str]:
        """The emotions of a group's rows, read without its frames."""
        if self._csv_table is not None:
            return self._csv_table.slice(u.group * CSV_CHUNK, u.rows).column("emotion")\
                .to_pylist()
        got = open_parquet(u.path).read_row_group(u.group, columns=["emotion"])\
            .column("emotion").to_pylist()
        return got if u.keep is None else [got[i] for i in u.keep]


def plan_epoch(units: list[Unit], streams: int, local_batch: int, seed: int, epoch: int,
               shuffle: bool = True) -> list[list[tuple[Unit, int, float]]]:
    """Per stream, the ordered (unit, row, weight) list of one epoch, padded to equal length.

    Every row appears exactly once with weight 1; padding repeats carry weight 0.
    """
    order = list(units)
    rng = random.Random(seed * 100_003 + epoch)
    if shuffle:
        rng.shuffle(order)
    per_stream: list[list[tuple[Unit, int, float]]] = [[] for _ in range(streams)]
    sizes = [0] * streams
    for unit in order:  # deal each unit to the stream with the fewest rows so far
        s = min(range(streams), key=lambda i: (sizes[i], i))
        rows = list(range(unit.rows))
        if shuffle:
            rng.shuffle(rows)
        per_stream[s] += [(unit, r, 1.0) for r in rows]
        sizes[s] += unit.rows
    steps = max(1, -(-max(sizes) // local_batch))
    for s in range(streams):
        filler = per_stream[s][-1] if per_stream[s] else None
        if filler is None:
            biggest = max(per_stream, key=len)
            filler = biggest[0]
        while len(per_stream[s]) < steps * local_batch:
            per_stream[s].append((filler[0], filler[1], 0.0))
    return per_stream


def prompt(row: dict, source: Source, text_source: str, context_turns: int) -> str:
    """The text the model reads: earlier turns of the dialogue, then the utterance."""
    text = row["utterance"] if text_source == "gold" else (row.get("transcript") or "")
    turns = []
    for k in range(context_turns, 0, -1):
        prev = source.context.get((row["dialogue_id"], row["utterance_id"] - k))
        if prev:
            turns.append(f"{prev[0]}: {prev[1]}")
    turns.append(f"{row['speaker']}: {text}")
    return " | ".join(turns)


def frames_image(frames: list[bytes], augment: bool = False, rng: random.Random | None = None,
                 size: tuple[int, int] | None = None):
    """The K frames tiled into one image, 4 per row, in time order.

    Florence-2 takes one image; a grid keeps every frame visible to the vision tower at
    the cost of resolution per frame. Given the model's input ``size`` (width, height),
    each JPEG is decoded straight at about its cell's size (libjpeg's DCT scaling), which
    makes the reader several times faster than decoding full frames and resizing.
    With ``augment``, frames are re-drawn (with replacement, order kept) and brightness
    is jittered.
    """
    from PIL import Image, ImageEnhance

    if not frames:
        return Image.new("RGB", size or (64, 64))
    if augment and rng is not None:
        frames = [frames[i] for i in sorted(rng.randrange(len(frames)) for _ in frames)]
    cols = min(4, len(frames))
    grid_rows = -(-len(frames) // cols)
    cell = (max(1, size[0] // cols), max(1, size[1] // grid_rows)) if size else None
    grid = None
    for i, f in enumerate(frames):
        img = decode_jpeg(f, cell)
        cell = cell or img.size
        if img.size != cell:  # bilinear: as good as bicubic at these factors, and cheaper
            img = img.resize(cell, Image.Resampling.BILINEAR)
        if grid is None:
            grid = Image.new("RGB", (cell[0] * cols, cell[1] * grid_rows))
        grid.paste(img, ((i % cols) * cell[0], (i // cols) * cell[1]))
    if augment and rng is not None:
        grid = ImageEnhance.Brightness(grid).enhance(rng.uniform(0.8, 1.2))
    return grid


def decode_jpeg_pil(data: bytes, cell: tuple[int, int] | None = None):
    """One JPEG as an RGB PIL image, at the smallest DCT scale (1, 1/2, 1/4, 1/8) that is
    still at least ``cell`` (PIL's ``draft``); full size without a cell."""
    from PIL import Image

    img = Image.open(io.BytesIO(data))
    if cell is not None:
        img.draft("RGB", cell)
    return img if img.mode == "RGB" else img.convert("RGB")


def decode_jpeg(data: bytes, cell: tuple[int, int] | None = None):
    """``decode_jpeg_pil``'s image, pixel for pixel, about 4x faster.

    PIL spends most of a small frame's time parsing the header in Python; simplejpeg
    calls the same libjpeg-turbo (accurate integer DCT, fancy upsampling) from C. The
    scale is chosen by PIL's rule. Only YCbCr and greyscale JPEGs (what ffmpeg writes) take
    this path: simplejpeg converts CMYK and RGB-coded ones its own way. Those, and anything
    it refuses (not a JPEG, a damaged stream), go to PIL, which decodes them or fails
    exactly as before.
    """
    from PIL import Image

    if _simplejpeg is None:
        return decode_jpeg_pil(data, cell)
    try:
        height, width, colorspace, _ = _simplejpeg.decode_jpeg_header(data)
        if colorspace not in ("YCbCr", "Gray"):
            return decode_jpeg_pil(data, cell)
        scale = 1
        if cell is not None:
            fit = min(width // cell[0], height // cell[1])
            scale = next((s for s in (8, 4, 2) if fit >= s), 1)
        pixels = _simplejpeg.decode_jpeg(data, colorspace="RGB", min_width=-(-width // scale),
                                         min_height=-(-height // scale))
    except ValueError:
        return decode_jpeg_pil(data, cell)
    return Image.fromarray(pixels)


def label_index(row: dict) -> tuple[int, int]:
    return EMOTIONS.index(row["emotion"]), SENTIMENTS.index(row["sentiment"])
