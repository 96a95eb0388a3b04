"""Ingest (meldflow.preprocess.ingest): every annotation row with its clip, status and shard;
dialogues kept whole; a missing or wrong clip folder named."""
import csv
import shutil
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
from helpers import SAMPLE

from meldflow import MeldflowError
from meldflow.annotations import read_annotations
from meldflow.preprocess.ingest import ingest_split, plan_shards, run_ingest, shard_rows


def test_plan_shards_keeps_dialogues_whole(shared_meld):
    anns = read_annotations(shared_meld / "dev_sent_emo.csv")
    shards = plan_shards(anns, 100)
    owner = {}
    for a, s in zip(anns, shards, strict=True):
        assert owner.setdefault(a.dialogue_id, s) == s
    sizes = [shards.count(s) for s in set(shards)]
    assert sum(sizes) == len(anns)
    # every shard but the last is full up to one dialogue's length
    longest = max(sum(1 for a in anns if a.dialogue_id == d) for d in owner)
    assert all(100 - longest < n <= max(100, longest) for n in sizes[:-1])


def test_sample_ingest_accounts_for_every_row(tmp_path):
    info = run_ingest(SAMPLE, "test", 24, tmp_path / "test.parquet")
    table = pq.read_table(tmp_path / "test.parquet")
    with (SAMPLE / "test_sent_emo.csv").open(encoding="utf-8") as f:
        n_rows = sum(1 for _ in csv.DictReader(f))
    assert table.num_rows == info["rows"] == n_rows
    recs = {(r["dialogue_id"], r["utterance_id"]): r for r in table.to_pylist()}
    dup = recs[(3, 1)]
    assert dup["status"] == "ok" and dup["flags"] == ["duplicate_clip_used"]
    assert dup["clip_path"].endswith("final_videos_testdia3_utt1.mp4")
    unused = (tmp_path / "test.unused.tsv").read_text().splitlines()
    assert unused[1:] == ["final_videos_testdia0_utt0.mp4\t0\t0\tduplicate"]


def test_a_shard_job_reads_its_rows_without_pyarrow_dataset(tmp_path):
    """Every shard job starts by reading its rows; pyarrow.dataset costs 0.4 s to import."""
    info = run_ingest(SAMPLE, "test", 4, tmp_path / "test.parquet")
    assert info["num_shards"] > 1
    whole = pq.read_table(tmp_path / "test.parquet")
    for shard in range(info["num_shards"]):
        rows = shard_rows(tmp_path / "test.parquet", shard)
        assert set(rows.column("shard").to_pylist()) == {shard}
        assert rows.num_rows == whole.column("shard").to_pylist().count(shard)
    with pytest.raises(MeldflowError, match="no rows in shard 99"):
        shard_rows(tmp_path / "test.parquet", 99)
    code = ("import sys; from meldflow.preprocess.ingest import shard_rows; "
            f"shard_rows({str(tmp_path / 'test.parquet')!r}, 0); "
            "assert 'pyarrow.dataset' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_and_empty_clips(tmp_path):
    shutil.copytree(SAMPLE, tmp_path / "meld")
    table, unused = ingest_split(tmp_path / "meld", "dev", 24)
    st = {(r["dialogue_id"], r["utterance_id"]): r for r in table.to_pylist()}
    assert st[(1, 2)]["status"] == "missing_video" and "dia1_utt2.mp4" in st[(1, 2)]["reason"]
    assert [u["clip"] for u in unused] == ["dia99_utt0.mp4"]
    (tmp_path / "meld" / "dev_splits_complete" / "dia0_utt0.mp4").write_bytes(b"")
    table, _ = ingest_split(tmp_path / "meld", "dev", 24)
    assert table.to_pylist()[0]["status"] == "empty_video"


def test_a_wrong_clip_folder_is_an_error_before_any_job(tmp_path):
    """A missing clip folder, or one holding almost none of the CSV's clips, is an error
    naming the folder and the fix; for a run that reads only the gold lines, a warning."""
    from meldflow.preprocess.layout import check_clip_folder

    meld = tmp_path / "meld"
    shutil.copytree(SAMPLE, meld)
    assert check_clip_folder(meld, "dev") is None
    (meld / "dev_splits_complete").rename(meld / "dev_splits")
    with pytest.raises(MeldflowError, match=r"dev: clip folder .*dev_splits_complete does not "
                                            r"exist\. .*set meld_dir to the extracted MELD\.Raw"):
        check_clip_folder(meld, "dev")
    assert "the run goes on" in check_clip_folder(meld, "dev", clips_needed=False)
    (meld / "dev_splits").rename(meld / "dev_splits_complete")
    for clip in sorted((meld / "dev_splits_complete").glob("*.mp4"))[1:]:
        clip.unlink()
    with pytest.raises(MeldflowError, match=r"dev: only 1 of the 20 clips that .*"
                                            r"dev_sent_emo\.csv names are in"):
        check_clip_folder(meld, "dev")
    (meld / "test_sent_emo.csv").unlink()
    with pytest.raises(MeldflowError, match=r"no annotation CSV for split 'test' in .*meld "
                                            r"\(looked for test_sent_emo\.csv"):
        check_clip_folder(meld, "test")
    with pytest.raises(MeldflowError, match=r"MELD folder not found: .*nowhere"):
        check_clip_folder(tmp_path / "nowhere", "test")


def test_a_new_shard_plan_moves_aside_the_shards_it_does_not_make(tmp_path):
    """Issue 34: preprocessing with shard_size 10 then 100 into the same results left 11
    files in results/aligned/test/ (173 rows for 89 utterances), and every reader read them
    all. Ingest now moves each step's shards that its plan does not make (beyond its count,
    or made from other rows) to results/stale/, and drops the folders' shard lists."""
    from meldflow.preprocess.ingest import shard_of
    from meldflow.shard_schema import ROWS_METADATA, SHARD_INDEX
    from meldflow.storage import write_table

    results = tmp_path / "results"
    dirs = [results / step / "test" for step in ("transcripts", "frames", "aligned")]
    out, stale = results / "ingest" / "test.parquet", results / "stale"

    def made_by_the_steps(info) -> list[str]:
        for k in range(info["num_shards"]):
            rows = shard_rows(out, k)
            for d in dirs:
                write_table(rows.select(["dialogue_id"]), d / f"shard-{k:04d}.parquet",
                            metadata={ROWS_METADATA: shard_of(rows)})
        (dirs[2] / SHARD_INDEX).write_text("{}")
        return sorted(p.name for p in dirs[2].glob("shard-*"))

    first = made_by_the_steps(run_ingest(SAMPLE, "test", 4, out, stale_from=dirs,
                                         stale_to=stale))
    assert len(first) > 2
    again = run_ingest(SAMPLE, "test", 4, out, stale_from=dirs, stale_to=stale)
    assert again["moved_aside"] == 0 and not stale.exists()  # the same plan keeps them all
    assert sorted(p.name for p in dirs[2].glob("shard-*")) == first
    assert not (dirs[2] / SHARD_INDEX).exists()  # the manifest step lists them anew
    (dirs[0] / "shard-0099.parquet").write_bytes(b"cut short")  # and one never finished
    bigger = run_ingest(SAMPLE, "test", 100, out, stale_from=dirs, stale_to=stale)
    assert bigger["num_shards"] == 1 and bigger["moved_aside"] == 3 * len(first) + 1
    assert [list(d.iterdir()) for d in dirs] == [[], [], []]  # shard 0 holds other rows now
    (moved,) = stale.iterdir()  # one folder per plan change, named by its time
    assert sorted(p.name for p in (moved / "aligned" / "test").iterdir()) == first
