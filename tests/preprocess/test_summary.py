"""The end of preprocessing (meldflow.preprocess.summary, .audit): the counts, the
warnings ingest found, and the rows to check before trusting them."""
import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
from helpers import SAMPLE

from meldflow.preprocess.ingest import run_ingest
from meldflow.storage import write_table


def test_missing_clip_folder_is_warned_about(tmp_path):
    from meldflow.preprocess.summary import run_summary

    meld = tmp_path / "meld"
    shutil.copytree(SAMPLE, meld)
    (meld / "dev_splits_complete").rename(meld / "dev_splits")  # the usual misnaming
    info = run_ingest(meld, "dev", 24, tmp_path / "dev.parquet")
    assert "dev_splits_complete" in info["warning"] and "does not exist" in info["warning"]
    saved = json.loads((tmp_path / "dev.shards.json").read_text())
    assert saved["warning"] == info["warning"]
    # the summary repeats it; build a manifest-shaped table of the ingest rows
    t = pq.read_table(tmp_path / "dev.parquet")
    manifest = tmp_path / "m.parquet"
    cols = {c: t[c] for c in ("split", "dialogue_id", "utterance_id", "csv_line", "status",
                              "reason", "flags", "utterance")}
    cols |= {"transcript": pa.nulls(t.num_rows, pa.string()),
             "wer": pa.nulls(t.num_rows, pa.float64())}
    pq.write_table(pa.table(cols), manifest)
    text = run_summary([manifest], [tmp_path / "dev.unused.tsv"], tmp_path / "s.tsv", 0.75,
                       ingest_infos=[tmp_path / "dev.shards.json"], audit_out=tmp_path / "a.tsv")
    assert "WARNING" in text and "dev_splits_complete" in text
    assert "audit: 20 row(s)" in text
    assert len((tmp_path / "a.tsv").read_text().splitlines()) == 21


def test_audit_lists_every_flagged_row_and_only_those(tmp_path):
    """A row whose gold text has no letters ("!" in MELD's train CSV) gets no_gold_text
    and WER NaN: it was not in the audit. Every flag is an audit reason."""
    from meldflow.preprocess.audit import audit_rows

    rows = [{"split": "train", "dialogue_id": i, "utterance_id": 0, "csv_line": i + 2,
             "status": "ok", "flags": flags, "wer": wer, "utterance": "x", "transcript": "x",
             "reason": ""} for i, (flags, wer) in enumerate([
                 ([], 0.1), (["no_gold_text"], None), ([], 0.9), (["clip_capped"], 0.2)])]
    write_table(pa.Table.from_pylist(rows), tmp_path / "m.parquet")
    listed = {r["dialogue_id"]: r["why"] for r in audit_rows([tmp_path / "m.parquet"], 0.75)}
    assert listed == {1: "no_gold_text", 2: "wer>0.75", 3: "clip_capped"}
