"""The manifest (meldflow.preprocess.manifest): one row per annotation row."""
import pytest
from helpers import ingest_rows, step_tables

from meldflow import MeldflowError
from meldflow.preprocess.align import align_shard
from meldflow.preprocess.manifest import build_manifest
from meldflow.storage import write_table


def test_manifest_is_one_for_one(tmp_path):
    keys = [(0, 0), (0, 1), (1, 0)]
    asr, frm = step_tables(keys)
    rows = ingest_rows(keys)
    write_table(align_shard(rows.slice(0, 2), asr.slice(0, 2), frm.slice(0, 2)),
                tmp_path / "a.parquet")
    with pytest.raises(MeldflowError, match="one for one"):
        build_manifest(rows, [tmp_path / "a.parquet"])
    write_table(align_shard(rows.slice(2), asr.slice(2), frm.slice(2)), tmp_path / "b.parquet")
    man = build_manifest(rows, [tmp_path / "a.parquet", tmp_path / "b.parquet"])
    assert man.num_rows == 3 and man.column("n_frames").to_pylist() == [2, 2, 2]
    with pytest.raises(MeldflowError, match="one for one"):
        build_manifest(rows, [tmp_path / "a.parquet", tmp_path / "b.parquet",
                              tmp_path / "b.parquet"])
