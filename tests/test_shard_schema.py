"""The shards' columns, the step result type and the DAG's facts (meldflow.shard_schema)."""
import pyarrow as pa

from meldflow.row_status import STATUSES
from meldflow.shard_schema import (
    ALIGNED_SCHEMA,
    FRAMES_SCHEMA,
    FROM_INGEST,
    INGEST_SCHEMA,
    METHOD_VERSIONS,
    NO_CLIP_REASON,
    SHARD_RULES,
    TRANSCRIPT_SCHEMA,
    StepResult,
    step_table,
    without_clip,
)


def test_each_step_keys_its_rows_and_says_its_outcome():
    for schema, prefix in ((TRANSCRIPT_SCHEMA, "asr_"), (FRAMES_SCHEMA, "frame_")):
        assert schema.names[:3] == ["split", "dialogue_id", "utterance_id"]
        assert {f"{prefix}status", f"{prefix}reason", f"{prefix}flags"} <= set(schema.names)
    # an aligned row: the annotation as ingest read it, one combined outcome, both steps'
    # columns; never a local path
    assert ALIGNED_SCHEMA.names[:len(FROM_INGEST)] == list(FROM_INGEST)
    assert set(FROM_INGEST) <= set(INGEST_SCHEMA.names)
    assert {"status", "reason", "flags", "transcript", "words", "frames"} <= set(
        ALIGNED_SCHEMA.names)
    assert "clip_path" not in ALIGNED_SCHEMA.names


def test_a_row_without_a_clip_gets_its_ingest_status_and_no_read():
    recs = [{"split": "dev", "dialogue_id": 0, "utterance_id": 0, "status": "missing_video",
             "clip_path": None},
            {"split": "dev", "dialogue_id": 0, "utterance_id": 1, "status": "ok",
             "clip_path": "dia0_utt1.mp4"}]
    none = without_clip(recs[0], StepResult)
    assert (none.status, none.reason) == ("missing_video", NO_CLIP_REASON)
    assert without_clip(recs[1], StepResult) is None
    assert "missing_video" in STATUSES


def test_the_dags_facts():
    assert set(SHARD_RULES) == {"transcribe", "frames", "align"}
    assert set(METHOD_VERSIONS) == {"transcribe", "frames"}  # the steps that read clips


def test_a_step_table_takes_keys_from_the_rows_and_the_rest_from_the_results():
    recs = [{"split": "dev", "dialogue_id": 3, "utterance_id": 1}]
    results = [StepResult(status="ok", reason="", flags=["clip_capped"])]
    names = ["split", "dialogue_id", "utterance_id", "asr_status", "asr_reason", "asr_flags"]
    schema = pa.schema([TRANSCRIPT_SCHEMA.field(n) for n in names])
    table = step_table(recs, results, schema, "asr_")
    assert table.to_pylist() == [{"split": "dev", "dialogue_id": 3, "utterance_id": 1,
                                  "asr_status": "ok", "asr_reason": "",
                                  "asr_flags": ["clip_capped"]}]
