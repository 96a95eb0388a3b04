"""Align (meldflow.preprocess.align) and the manifest: one row per annotation row, its
statuses combined, a stale step output refused, row groups sized by bytes."""
import pyarrow as pa
import pytest
from helpers import WORDS, ingest_rows, step_tables

from meldflow import MeldflowError
from meldflow.preprocess.align import align_shard, rows_per_group, word_at
from meldflow.storage import write_table


def test_word_at():
    assert word_at(WORDS, 0.2) == "hi"
    assert word_at(WORDS, 0.5) is None
    assert word_at(WORDS, 1.0) == "there"
    assert word_at([], 0.3) is None


def test_align_joins_and_combines_status():
    keys = [(0, 0), (0, 1)]
    asr, frm = step_tables(keys, asr_status="no_audio")
    out = align_shard(ingest_rows(keys), asr, frm).to_pylist()
    assert [r["status"] for r in out] == ["no_audio", "no_audio"]
    assert out[0]["frame_words"] == ["hi", None]
    assert out[0]["flags"] == ["clip_capped"] and "no audio" in out[0]["reason"]
    assert len(out[0]["frames"]) == 2  # a clip without audio keeps its frames


def test_align_rejects_a_stale_step_output():
    asr, frm = step_tables([(0, 0)])
    with pytest.raises(MeldflowError, match="stale"):
        align_shard(ingest_rows([(0, 0), (0, 1)]), asr, frm)


def test_row_groups_sized_by_bytes():
    t = pa.table({"frames": [[b"x" * 1000]] * 100})
    assert rows_per_group(t, target_bytes=10_000) in range(8, 11)
    assert rows_per_group(t, target_bytes=10**9) == 100


def test_a_folder_of_shards_is_read_by_its_list_alone(tmp_path):
    """Issue 34: `meldflow train --aligned-dir` and the README's recipe globbed the folder
    and read an older layout's shards too. The manifest step lists the shards it matched
    against the annotation rows; readers go by that list, and refuse a listed shard that
    was rebuilt from other rows since (a run cut short) or a folder without a list."""
    from meldflow.preprocess.align import read_shard_index, write_shard_index
    from meldflow.shard_schema import ROWS_METADATA, SHARD_INDEX

    folder = tmp_path / "aligned" / "dev"
    shards = [folder / f"shard-{k:04d}.parquet" for k in range(3)]
    for k, (path, digest) in enumerate(zip(shards, "abc", strict=True)):
        write_table(pa.table({"dialogue_id": [k]}), path,
                    metadata={ROWS_METADATA: {"split": "dev", "shard": k, "digest": digest}})
    listed = write_shard_index(folder / SHARD_INDEX, "dev", shards[:2])
    assert [s["file"] for s in listed["shards"]] == ["shard-0000.parquet", "shard-0001.parquet"]
    assert read_shard_index(folder) == [str(p) for p in shards[:2]]  # not shard-0002
    write_table(pa.table({"dialogue_id": [9]}), shards[1],
                metadata={ROWS_METADATA: {"split": "dev", "shard": 1, "digest": "d"}})
    with pytest.raises(MeldflowError, match=r"shard-0001.parquet, listed in .*, is made from "
                                            r"other rows than listed.*preprocess target"):
        read_shard_index(folder)
    shards[0].unlink()
    with pytest.raises(MeldflowError, match=r"shard-0000.parquet, listed in .*, is missing"):
        read_shard_index(folder)
    (folder / SHARD_INDEX).unlink()
    with pytest.raises(MeldflowError, match=r"has no shards.json.*older meldflow"):
        read_shard_index(folder)
