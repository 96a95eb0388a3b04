"""MELD.Raw's layout and its annotation CSVs: the one module that reads them (ingest,
training from CSVs, the WER's normalisation and the tiny model's tokenizer all use it).

Every row is validated and normalised; a malformed row is an error naming the file and
line. Text is decoded line by line, never guessed for a whole file from one byte.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

from meldflow import MeldflowError
from meldflow.labels import EMOTIONS, SENTIMENTS

REQUIRED_COLUMNS = (
    "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID",
    "StartTime", "EndTime",
)
# MELD_Dyadic renumbers dialogues but keeps the original clip names under these columns.
DYADIC_COLUMNS = ("Old_Dialogue_ID", "Old_Utterance_ID")

_TRANSLATE = str.maketrans({
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'",
    "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u2033": '"',
    "\u2013": "-", "\u2014": "-", "\u2012": "-", "\u2212": "-",
    "\u00a0": " ", "\u2009": " ", "\u200b": "",
    "\u2026": "...",
})


def normalise_text(text: str) -> str:
    """Plain-ASCII punctuation (curly quotes, dashes, ellipses) and single spaces."""
    return " ".join(text.translate(_TRANSLATE).split())


CP1252_UNDEFINED = frozenset({0x81, 0x8D, 0x8F, 0x90, 0x9D})  # bytes with no character


def _cp1252(raw: bytes) -> tuple[str, str]:
    """A line decoded as Windows-1252, and what a reader should know about it."""
    undefined = sorted({f"0x{b:02X}" for b in raw if b in CP1252_UNDEFINED})
    note = (f"; byte(s) {', '.join(undefined)} stand for no character there (kept as "
            f"U+FFFD)" if undefined else "")
    return raw.decode("cp1252", errors="replace"), note


_LINE_END = re.compile(rb"(\r\n|\r|\n)")
_C1 = re.compile("[\u0080-\u009f]")


def _utf16(data: bytes) -> bool:
    """A UTF-16 file: its byte-order mark, or a NUL beside every ASCII character."""
    head = data[:200]
    return head[:2] in (b"\xff\xfe", b"\xfe\xff") or (
        len(head) >= 4 and head.count(0) * 3 >= len(head))


def _c1_repaired(text: str) -> tuple[str, str]:
    """C1 control characters (a Windows-1252 file read as Latin-1 by another tool, then
    saved as UTF-8) mapped back to their Windows-1252 characters, and a note of them."""
    found = sorted(set(_C1.findall(text)))
    if not found:
        return text, ""
    fixed = _C1.sub(lambda m: bytes([ord(m.group())]).decode("cp1252", errors="replace"), text)
    names = ", ".join(f"U+{ord(c):04X}" for c in found)
    return fixed, (f"held control character(s) {names}: Windows-1252 read as Latin-1 "
                   f"somewhere; mapped back to their Windows-1252 characters")


def decode_csv_bytes(data: bytes, path: str | Path = "CSV") -> tuple[str, dict[int, str]]:
    """Decode a MELD CSV, never guessing a whole file from one byte: (text, {physical line
    number: why it was repaired}).

    Lines end in LF, CRLF or CR alone (old Mac Excel). A UTF-8 file (with or without BOM)
    keeps its text. A file with no UTF-8 text beyond ASCII at all is the raw tarball's
    Windows-1252, decoded whole (only bytes that stand for no character are noted). A file
    mixing both (edited by hand, or two copies merged) keeps its UTF-8 lines, and each line
    that is not UTF-8 is decoded as Windows-1252 and noted; so is a line holding C1 control
    characters. The rows on noted lines are flagged ``encoding_repaired``. UTF-16 is an
    error with the fix.
    """
    if _utf16(data):
        raise MeldflowError(
            f"{path}: the file is UTF-16 (as Excel's \"Unicode text\" saves it); save it as "
            f"\"CSV UTF-8\" or convert it: iconv -f UTF-16 -t UTF-8 IN > OUT")
    data = data.removeprefix(b"\xef\xbb\xbf")
    parts = _LINE_END.split(data)
    lines, ends = parts[0::2], parts[1::2] + [b""]
    texts: list[str] = []
    bad: dict[int, bytes] = {}
    utf8_beyond_ascii = False
    for n, raw in enumerate(lines, 1):
        try:
            texts.append(raw.decode("utf-8"))
            utf8_beyond_ascii |= not raw.isascii()
        except UnicodeDecodeError:
            texts.append("")
            bad[n] = raw
    notes: dict[int, str] = {}
    for n, raw in bad.items():
        texts[n - 1], note = _cp1252(raw)
        if utf8_beyond_ascii:
            notes[n] = "is not UTF-8 like the rest of the file: decoded as Windows-1252" + note
        elif note:
            notes[n] = "decoded as Windows-1252" + note
    for n, text in enumerate(texts, 1):
        if n not in bad:
            texts[n - 1], note = _c1_repaired(text)
            if note:
                notes[n] = note
    return "".join(t + e.decode("ascii") for t, e in zip(texts, ends, strict=True)), notes


def parse_time(value: str) -> float:
    """``hh:mm:ss,ms`` (MELD's episode time) to seconds."""
    m = re.fullmatch(r"\s*(\d+):(\d{1,2}):(\d{1,2})[,.](\d{1,3})\s*", value)
    if not m:
        raise ValueError(f"not a hh:mm:ss,ms time: {value!r}")
    h, mi, s, ms = m.groups()
    return int(h) * 3600 + int(mi) * 60 + int(s) + int(ms.ljust(3, "0")) / 1000


@dataclass
class Annotation:
    """One annotation row, validated and normalised."""

    line: int  # line in the CSV file (header is line 1), for error messages
    sr_no: int | None
    dialogue_id: int
    utterance_id: int
    speaker: str
    utterance: str
    emotion: str
    sentiment: str
    season: int | None
    episode: int | None
    start_s: float | None
    end_s: float | None
    clip_dialogue_id: int
    clip_utterance_id: int
    flags: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)

    @property
    def clip_name(self) -> str:
        return f"dia{self.clip_dialogue_id}_utt{self.clip_utterance_id}.mp4"


def _int(value: str, column: str, where: str, *, optional: bool = False) -> int | None:
    value = (value or "").strip()
    if not value and optional:
        return None
    try:
        return int(float(value)) if re.fullmatch(r"\d+\.0*", value) else int(value)
    except ValueError:
        raise MeldflowError(f"{where}: column {column} must be an integer, got {value!r}") from None


def _rows(reader: csv.DictReader, path: Path):
    """The reader's rows; a malformed line is a MeldflowError naming it (the line after
    the last one read whole)."""
    while True:
        try:
            yield next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise MeldflowError(
                f"{path}:{reader.line_num + 1}: {exc} (a quote inside a quoted field must be "
                f"doubled: \"He said \"\"hi\"\"\")") from None


def read_annotations(path: str | Path) -> list[Annotation]:
    """Read and validate one MELD (or MELD_Dyadic) annotation CSV.

    Any malformed row raises :class:`MeldflowError` naming the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise MeldflowError(f"annotation file not found: {path}")
    text, repaired = decode_csv_bytes(path.read_bytes(), path)
    # strict: a stray quote inside a quoted field (a hand edit) is an error naming the line,
    # not a gold text that ends in '"'
    reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
    columns = [c.strip() for c in (reader.fieldnames or [])]
    reader.fieldnames = columns
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise MeldflowError(
            f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(columns) or 'none'}"
        )
    dyadic = all(c in columns for c in DYADIC_COLUMNS)
    out: list[Annotation] = []
    seen: dict[tuple[int, int], int] = {}
    first = 2  # the physical line a row starts on (a quoted field may span lines)
    for row in _rows(reader, path):
        ann = _annotation(row, reader.line_num, f"{path}:{reader.line_num}", dyadic)
        notes = [f"CSV line {n} {repaired[n]}" for n in range(first, reader.line_num + 1)
                 if n in repaired]
        if notes:
            ann.flags.append("encoding_repaired")
            ann.reasons += notes
        first = reader.line_num + 1
        key = (ann.dialogue_id, ann.utterance_id)
        if key in seen:
            raise MeldflowError(
                f"{path}:{ann.line}: Dialogue_ID {key[0]} / Utterance_ID {key[1]} already "
                f"appears on line {seen[key]}"
            )
        seen[key] = ann.line
        out.append(ann)
    if not out:
        raise MeldflowError(f"{path}: no annotation rows")
    return out


def _label(row: dict, column: str, labels: tuple[str, ...], where: str) -> str:
    value = (row[column] or "").strip().lower()
    if value not in labels:
        raise MeldflowError(f"{where}: {column} {row[column]!r} is not one of "
                            f"{', '.join(labels)}")
    return value


def _annotation(row: dict, line: int, where: str, dyadic: bool) -> Annotation:
    """One CSV row, validated; its times checked (``bad_timestamps`` is a flag, not an
    error: the row's text and labels are still usable)."""
    if None in row:
        raise MeldflowError(f"{where}: more fields than the header has columns")
    if None in row.values():
        given = sum(v is not None for v in row.values())
        raise MeldflowError(f"{where}: {given} field(s) where the header has {len(row)} "
                            f"(a line cut short, or a stray line break)")
    emotion = _label(row, "Emotion", EMOTIONS, where)
    sentiment = _label(row, "Sentiment", SENTIMENTS, where)
    dia = _int(row["Dialogue_ID"], "Dialogue_ID", where)
    utt = _int(row["Utterance_ID"], "Utterance_ID", where)
    ann = Annotation(
        line=line, sr_no=_int(row.get("Sr No.", ""), "Sr No.", where, optional=True),
        dialogue_id=dia, utterance_id=utt, speaker=normalise_text(row["Speaker"] or ""),
        utterance=normalise_text(row["Utterance"] or ""), emotion=emotion,
        sentiment=sentiment,
        season=_int(row.get("Season", ""), "Season", where, optional=True),
        episode=_int(row.get("Episode", ""), "Episode", where, optional=True),
        start_s=None, end_s=None, clip_dialogue_id=dia, clip_utterance_id=utt,
    )
    if dyadic:
        ann.clip_dialogue_id = _int(row["Old_Dialogue_ID"], "Old_Dialogue_ID", where)
        ann.clip_utterance_id = _int(row["Old_Utterance_ID"], "Old_Utterance_ID", where)
    try:
        ann.start_s = parse_time(row["StartTime"])
        ann.end_s = parse_time(row["EndTime"])
    except ValueError as exc:
        ann.start_s = ann.end_s = None
        ann.flags.append("bad_timestamps")
        ann.reasons.append(f"unparseable timestamp ({exc})")
    else:
        if ann.end_s <= ann.start_s:
            ann.flags.append("bad_timestamps")
            ann.reasons.append(f"EndTime {row['EndTime'].strip()} is not after StartTime "
                               f"{row['StartTime'].strip()}")
    return ann


# Folder of clips per split inside an extracted MELD.Raw.
CLIP_DIRS = {
    "train": "train_splits",
    "dev": "dev_splits_complete",
    "test": "output_repeated_splits_test",
}
# The test folder holds `final_videos_testdia{D}_utt{U}.mp4` copies of some clips.
DUPLICATE_PREFIX = "final_videos_test"
CLIP_RE = re.compile(r"^(?:final_videos_test)?dia(\d+)_utt(\d+)\.mp4$")


def clip_dir(meld_dir: str | Path, split: str) -> Path:
    """The clip folder of ``split`` in a MELD.Raw folder."""
    if split not in CLIP_DIRS:
        raise MeldflowError(f"unknown split {split!r}; expected one of {', '.join(CLIP_DIRS)}")
    return Path(meld_dir) / CLIP_DIRS[split]



def find_csv(meld_dir: str | Path, split: str) -> Path:
    """The annotation CSV of ``split`` in a MELD.Raw folder (plain or Dyadic naming)."""
    meld_dir = Path(meld_dir)
    if not meld_dir.is_dir():
        raise MeldflowError(f"MELD folder not found: {meld_dir} (set meld_dir to the folder "
                            f"holding MELD.Raw's CSVs and clip folders)")
    names = [f"{split}_sent_emo.csv", f"{split}_sent_emo_dya.csv", f"{split}.csv"]
    for name in names:
        if (meld_dir / name).is_file():
            return meld_dir / name
    raise MeldflowError(
        f"no annotation CSV for split {split!r} in {meld_dir} (looked for {', '.join(names)})"
    )
