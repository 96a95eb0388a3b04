import csv
import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import SAMPLE

from meldflow import MeldflowError
from meldflow.annotations import normalise_text, parse_time, read_annotations
from meldflow.labels import EMOTIONS, SENTIMENTS
from meldflow.preprocess.ingest import ingest_split, plan_shards, run_ingest

HEADER = ["Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID",
          "Utterance_ID", "Season", "Episode", "StartTime", "EndTime"]


def write_csv(path, rows, header=HEADER, encoding="utf-8"):
    with path.open("w", newline="", encoding=encoding) as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def row(dia, utt, text="Hi there.", emotion="neutral", sentiment="neutral",
        start="00:00:01,000", end="00:00:02,500"):
    return [1, text, "Avery", emotion, sentiment, dia, utt, 1, 1, start, end]


def test_real_meld_csvs(shared_meld):
    train = read_annotations(shared_meld / "train_sent_emo.csv")
    dev = read_annotations(shared_meld / "dev_sent_emo.csv")
    assert (len(train), len(dev)) == (9989, 1109)
    assert {a.emotion for a in train} == set(EMOTIONS)
    assert {a.sentiment for a in dev} == set(SENTIMENTS)
    assert len({a.dialogue_id for a in dev}) == 114
    # curly quotes and ellipses are normalised to ASCII
    assert all(ch not in a.utterance for a in train for ch in "\u2019\u2026\u201c")
    first = train[0]
    assert first.utterance.startswith("also I was the point person on my company's")
    assert first.start_s == pytest.approx(16 * 60 + 16.059)
    # these copies have no negative durations (the shortest is 6 ms): nothing is flagged
    assert not any(a.flags for a in train + dev)
    assert min(a.end_s - a.start_s for a in train) == pytest.approx(0.006, abs=1e-6)


def test_windows_1252_copy_reads_the_same(shared_meld, tmp_path):
    text = (shared_meld / "dev_sent_emo.csv").read_text(encoding="utf-8")
    cp = tmp_path / "dev_sent_emo.csv"
    cp.write_bytes(text.encode("cp1252"))
    assert b"\x92" in cp.read_bytes()  # the raw tarball's apostrophe
    a = read_annotations(shared_meld / "dev_sent_emo.csv")
    b = read_annotations(cp)
    assert [x.utterance for x in a] == [x.utterance for x in b]
    assert [x.emotion for x in a] == [x.emotion for x in b]
    assert not any(x.flags for x in b)  # a whole Windows-1252 file is MELD's own, not damage


def test_text_is_decoded_per_line_never_guessed_from_one_byte(tmp_path):
    """"café" (UTF-8) on one line and a Windows-1252 apostrophe (0x92) on another: the
    whole file was decoded as Windows-1252 ("cafÃ©", every non-ASCII character garbled,
    no flag). Now the UTF-8 lines keep their text, and the other line is decoded as
    Windows-1252 and flagged; a byte that stands for no character is said, not hidden."""
    path = write_csv(tmp_path / "dev_sent_emo.csv",
                     [row(0, 0, "Un café, Joey?"), row(0, 1, "Yeah."), row(0, 2, "NOPE")])
    data = path.read_bytes().replace(b"NOPE", b"I don\x92t know")
    data = data.replace(b"Yeah.", b"Ye\x81ah.")
    path.write_bytes(data)
    rows = read_annotations(path)
    assert rows[0].utterance == "Un café, Joey?" and not rows[0].flags
    assert rows[2].utterance == "I don't know" and rows[2].flags == ["encoding_repaired"]
    assert rows[2].reasons == ["CSV line 4 is not UTF-8 like the rest of the file: decoded "
                               "as Windows-1252"]
    assert rows[1].flags == ["encoding_repaired"]
    assert "byte(s) 0x81 stand for no character there" in rows[1].reasons[0]
    table, _ = ingest_split_of(tmp_path)
    assert table["flags"] == [[], ["encoding_repaired"], ["encoding_repaired"]]


def ingest_split_of(meld):
    from meldflow.preprocess.ingest import ingest_split

    table, unused = ingest_split(meld, "dev", 24)
    return {c: table.column(c).to_pylist() for c in table.column_names}, unused


def test_normalise_text():
    text = "It\u2019s \u201cfine\u201d\u2026  ok\u2014 no"
    assert normalise_text(text) == 'It\'s "fine"... ok- no'


def test_parse_time():
    assert parse_time("00:16:16,059") == pytest.approx(976.059)
    with pytest.raises(ValueError):
        parse_time("16:16")


@pytest.mark.parametrize("bad, message", [
    (row(0, 0, emotion="happy"), "Emotion 'happy'"),
    (row(0, 0, sentiment="meh"), "Sentiment 'meh'"),
    ([1, "x", "A", "joy", "positive", "zero", 0, 1, 1, "00:00:01,000", "00:00:02,000"],
     "Dialogue_ID must be an integer"),
])
def test_bad_rows_name_file_and_line(tmp_path, bad, message):
    path = write_csv(tmp_path / "train_sent_emo.csv", [row(0, 0), row(0, 1), bad])
    with pytest.raises(MeldflowError) as exc:
        read_annotations(path)
    assert f"{path}:4" in str(exc.value) and message in str(exc.value)


def test_missing_column_and_duplicates(tmp_path):
    path = write_csv(tmp_path / "a.csv", [r[:4] for r in [row(0, 0)]], header=HEADER[:4])
    with pytest.raises(MeldflowError, match="missing column.*Sentiment"):
        read_annotations(path)
    path = write_csv(tmp_path / "b.csv", [row(0, 0), row(0, 0)])
    with pytest.raises(MeldflowError, match=r"b.csv:3.*already appears on line 2"):
        read_annotations(path)


def test_bad_timestamps_are_flagged(tmp_path):
    path = write_csv(tmp_path / "c.csv", [row(0, 0, start="00:00:05,000", end="00:00:04,000"),
                                          row(0, 1, start="garbage")])
    a, b = read_annotations(path)
    assert a.flags == ["bad_timestamps"] and "not after" in a.reasons[0]
    assert b.flags == ["bad_timestamps"] and b.start_s is None


def test_dyadic_variant_names_clips_by_old_ids(tmp_path):
    header = HEADER[:7] + ["Old_Dialogue_ID", "Old_Utterance_ID"] + HEADER[7:]
    r = row(0, 0)
    path = write_csv(tmp_path / "train_sent_emo_dya.csv", [r[:7] + [412, 5] + r[7:]], header)
    (tmp_path / "train_splits").mkdir()
    (tmp_path / "train_splits" / "dia412_utt5.mp4").write_bytes(b"x")
    ann = read_annotations(path)[0]
    assert (ann.dialogue_id, ann.clip_name) == (0, "dia412_utt5.mp4")
    table, unused = ingest_split(tmp_path, "train", 10)
    assert table.column("status").to_pylist() == ["ok"] and unused == []


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


def test_missing_and_empty_clips(tmp_path):
    shutil.copytree(SAMPLE, tmp_path / "meld")
    table, unused = ingest_split(tmp_path / "meld", "dev", 24)
    st = {(r["dialogue_id"], r["utterance_id"]): r for r in table.to_pylist()}
    assert st[(1, 2)]["status"] == "missing_video" and "dia1_utt2.mp4" in st[(1, 2)]["reason"]
    assert [u["clip"] for u in unused] == ["dia99_utt0.mp4"]
    (tmp_path / "meld" / "dev_splits_complete" / "dia0_utt0.mp4").write_bytes(b"")
    table, _ = ingest_split(tmp_path / "meld", "dev", 24)
    assert table.to_pylist()[0]["status"] == "empty_video"


def test_missing_clip_folder_is_warned_about(tmp_path):
    from meldflow.preprocess.ingest import run_ingest
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


def test_a_wrong_clip_folder_is_an_error_before_any_job(tmp_path):
    """A missing clip folder, or one holding almost none of the CSV's clips, is an error
    naming the folder and the fix; for a run that reads only the gold lines, a warning."""
    from meldflow import MeldflowError
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
    with pytest.raises(MeldflowError, match=r"no annotation CSV for split 'test' in .*nowhere "
                                            r"\(looked for test_sent_emo\.csv"):
        check_clip_folder(tmp_path / "nowhere", "test")


def test_a_stray_quote_is_an_error_naming_the_line(tmp_path):
    """A quote inside a quoted field, not doubled (a hand edit), left a trailing '"' in the
    gold text; now the file and line are named, with the fix."""
    path = write_csv(tmp_path / "dev_sent_emo.csv", [row(0, 0), row(0, 1, "X")])
    path.write_bytes(path.read_bytes().replace(b",X,", b',"He said "hi" there",'))
    with pytest.raises(MeldflowError, match=r"dev_sent_emo\.csv:3: ',' expected after '\"' "
                                            r"\(a quote inside a quoted field must be doubled"):
        read_annotations(path)
