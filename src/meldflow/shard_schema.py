"""The columns of the preprocessing shards, and the one result type a step gives a row.

Every step's table starts with the row's key and the step's outcome (status, reason,
flags, under the step's prefix); then come the step's own columns. A step returns a
``StepResult`` subclass whose fields are named as those columns, and ``step_table`` turns
a shard's results into its table, so no step writes the conversion out again.
Reference: docs/shards.md.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TypeVar

import pyarrow as pa

from meldflow.row_status import NO_CLIP

KEY_FIELDS = [pa.field("split", pa.string()), pa.field("dialogue_id", pa.int32()),
              pa.field("utterance_id", pa.int32())]


def outcome_fields(prefix: str = "") -> list[pa.Field]:
    """A step's status, reason and flags columns (``asr_status``, ... for prefix ``asr_``)."""
    return [pa.field(f"{prefix}status", pa.string()), pa.field(f"{prefix}reason", pa.string()),
            pa.field(f"{prefix}flags", pa.list_(pa.string()))]


WORD_TYPE = pa.struct([
    ("word", pa.string()), ("start", pa.float32()), ("end", pa.float32()),
    ("probability", pa.float32()),
])

INGEST_SCHEMA = pa.schema([
    KEY_FIELDS[0],
    ("csv_line", pa.int32()),
    ("sr_no", pa.int32()),
    *KEY_FIELDS[1:],
    ("speaker", pa.string()),
    ("utterance", pa.string()),
    ("emotion", pa.string()),
    ("sentiment", pa.string()),
    ("season", pa.int32()),
    ("episode", pa.int32()),
    ("start_s", pa.float64()),
    ("end_s", pa.float64()),
    ("clip_path", pa.string()),
    ("shard", pa.int32()),
    *outcome_fields(),
])

TRANSCRIPT_COLUMNS = [pa.field("transcript", pa.string()),
                      pa.field("words", pa.list_(WORD_TYPE)), pa.field("wer", pa.float64())]
TRANSCRIPT_SCHEMA = pa.schema(KEY_FIELDS + outcome_fields("asr_") + TRANSCRIPT_COLUMNS)

FRAME_COLUMNS = [pa.field("clip_duration_s", pa.float64()),
                 pa.field("frames", pa.list_(pa.binary())),
                 pa.field("frame_times", pa.list_(pa.float32()))]
FRAMES_SCHEMA = pa.schema(KEY_FIELDS + outcome_fields("frame_") + FRAME_COLUMNS)

# What the aligned shard takes from the ingest table; then the steps' own columns.
FROM_INGEST = ("split", "dialogue_id", "utterance_id", "shard", "speaker", "utterance",
               "emotion", "sentiment", "season", "episode", "start_s", "end_s")
ALIGNED_SCHEMA = pa.schema(
    [INGEST_SCHEMA.field(name) for name in FROM_INGEST] + outcome_fields()
    + TRANSCRIPT_COLUMNS + FRAME_COLUMNS
    + [pa.field("frame_words", pa.list_(pa.string()))]
)

# The version of the way each step makes its columns from a clip. It is one of the step's
# rule params, so a new version redoes the shards an older meldflow made (Snakemake reruns
# a job whose params changed), and each shard records it. Bump it when a change to the
# code gives other values for the same clips and settings.
METHOD_VERSIONS = {"transcribe": "dialogue-window-1", "frames": "2"}

# The workflow's rules of one job per split and shard, once ingest has planned the shards
# (workflow/rules/preprocess.smk; the workflow's start checks their asks by this name).
SHARD_RULES = ("transcribe", "frames", "align")

# The metadata key under which each step's shard records which rows it was made from:
# {"split", "shard", "digest"}, the digest being the ingest plan's for that shard. A shard
# whose digest is not the current plan's belongs to an older layout (moved aside by ingest).
ROWS_METADATA = "meldflow_rows"
# Each aligned folder's list of its shards ({"split", "shards": [{"file", "rows",
# "digest"}]}), written once all of them are made: readers read the listed shards only.
SHARD_INDEX = "shards.json"

# The reason a step gives a row it did not try; the aligned shard leaves it out.
NO_CLIP_REASON = "no clip to read"


@dataclass
class StepResult:
    """What one step made of one row: its outcome; subclasses add the step's columns."""

    status: str = "ok"
    reason: str = ""
    flags: list[str] = field(default_factory=list)


R = TypeVar("R", bound=StepResult)


def without_clip(rec: dict, result_type: type[R]) -> R | None:
    """The result of a row that has no clip to read (its ingest status says so), else
    ``None``: the step then reads the clip."""
    if rec["status"] in NO_CLIP or not rec["clip_path"]:
        return result_type(status=rec["status"], reason=NO_CLIP_REASON)
    return None


def step_table(recs: list[dict], results: list[StepResult], schema: pa.Schema,
               prefix: str) -> pa.Table:
    """A shard's table: each row's key from ``recs``, its outcome and columns from
    ``results`` (a result's fields are named as the schema's columns)."""
    outcome = {f"{prefix}{f.name}": f.name for f in dataclasses.fields(StepResult)}
    cols = {}
    for name in schema.names:
        if name in ("split", "dialogue_id", "utterance_id"):
            cols[name] = [r[name] for r in recs]
        else:
            cols[name] = [getattr(r, outcome.get(name, name)) for r in results]
    return pa.table(cols, schema=schema)
