"""MELD's annotation CSVs (meldflow.annotations): read, validated and normalised (on the
real MELD CSVs where ../shared is present)."""

import pytest
from helpers import MELD_HEADER, meld_csv, meld_row

from meldflow import MeldflowError
from meldflow.annotations import find_csv, normalise_text, parse_time, read_annotations
from meldflow.labels import EMOTIONS, SENTIMENTS
from meldflow.preprocess.ingest import ingest_split


def ingest_split_of(meld):
    """The dev split's ingest table of ``meld`` as columns, and its unused clips."""
    table, unused = ingest_split(meld, "dev", 24)
    return {c: table.column(c).to_pylist() for c in table.column_names}, unused


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
    rows = [meld_row(0, 0, "Un café, Joey?"), meld_row(0, 1, "Yeah."), meld_row(0, 2, "NOPE")]
    path = meld_csv(tmp_path / "dev_sent_emo.csv", rows)
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


def test_normalise_text():
    text = "It\u2019s \u201cfine\u201d\u2026  ok\u2014 no"
    assert normalise_text(text) == 'It\'s "fine"... ok- no'


def test_parse_time():
    assert parse_time("00:16:16,059") == pytest.approx(976.059)
    with pytest.raises(ValueError):
        parse_time("16:16")


@pytest.mark.parametrize("bad, message", [
    (meld_row(0, 0, emotion="happy"), "Emotion 'happy'"),
    (meld_row(0, 0, sentiment="meh"), "Sentiment 'meh'"),
    ([1, "x", "A", "joy", "positive", "zero", 0, 1, 1, "00:00:01,000", "00:00:02,000"],
     "Dialogue_ID must be an integer"),
])
def test_bad_rows_name_file_and_line(tmp_path, bad, message):
    path = meld_csv(tmp_path / "train_sent_emo.csv", [meld_row(0, 0), meld_row(0, 1), bad])
    with pytest.raises(MeldflowError) as exc:
        read_annotations(path)
    assert f"{path}:4" in str(exc.value) and message in str(exc.value)


def test_missing_column_and_duplicates(tmp_path):
    path = meld_csv(tmp_path / "a.csv", [r[:4] for r in [meld_row(0, 0)]], header=MELD_HEADER[:4])
    with pytest.raises(MeldflowError, match="missing column.*Sentiment"):
        read_annotations(path)
    path = meld_csv(tmp_path / "b.csv", [meld_row(0, 0), meld_row(0, 0)])
    with pytest.raises(MeldflowError, match=r"b.csv:3.*already appears on line 2"):
        read_annotations(path)


def test_bad_timestamps_are_flagged(tmp_path):
    path = meld_csv(tmp_path / "c.csv", [meld_row(0, 0, start="00:00:05,000", end="00:00:04,000"),
                                          meld_row(0, 1, start="garbage")])
    a, b = read_annotations(path)
    assert a.flags == ["bad_timestamps"] and "not after" in a.reasons[0]
    assert b.flags == ["bad_timestamps"] and b.start_s is None


def test_dyadic_variant_names_clips_by_old_ids(tmp_path):
    header = MELD_HEADER[:7] + ["Old_Dialogue_ID", "Old_Utterance_ID"] + MELD_HEADER[7:]
    r = meld_row(0, 0)
    path = meld_csv(tmp_path / "train_sent_emo_dya.csv", [r[:7] + [412, 5] + r[7:]], header)
    (tmp_path / "train_splits").mkdir()
    (tmp_path / "train_splits" / "dia412_utt5.mp4").write_bytes(b"x")
    ann = read_annotations(path)[0]
    assert (ann.dialogue_id, ann.clip_name) == (0, "dia412_utt5.mp4")
    table, unused = ingest_split(tmp_path, "train", 10)
    assert table.column("status").to_pylist() == ["ok"] and unused == []


def test_a_stray_quote_is_an_error_naming_the_line(tmp_path):
    """A quote inside a quoted field, not doubled (a hand edit), left a trailing '"' in the
    gold text; now the file and line are named, with the fix."""
    path = meld_csv(tmp_path / "dev_sent_emo.csv", [meld_row(0, 0), meld_row(0, 1, "X")])
    path.write_bytes(path.read_bytes().replace(b",X,", b',"He said "hi" there",'))
    with pytest.raises(MeldflowError, match=r"dev_sent_emo\.csv:3: ',' expected after '\"' "
                                            r"\(a quote inside a quoted field must be doubled"):
        read_annotations(path)


def test_cr_only_line_ends_are_lines_decoded_one_by_one(tmp_path):
    """Old Mac Excel ends lines with CR alone. Splitting on LF only made the file one line,
    and one Windows-1252 byte then decoded the whole file as Windows-1252 ("Itâ€™s over
    between us."), status ok, nothing flagged."""
    rows = [meld_row(0, 0, "It\u2019s over between us."), meld_row(0, 1, "NOPE"),
            meld_row(0, 2, "Un café?")]
    path = meld_csv(tmp_path / "dev_sent_emo.csv", rows)
    data = path.read_bytes().replace(b"\r\n", b"\r").replace(b"NOPE", b"I don\x92t know")
    path.write_bytes(data)
    a, b, c = read_annotations(path)
    assert (a.utterance, a.flags) == ("It's over between us.", [])
    assert (c.utterance, c.flags) == ("Un café?", [])
    assert (b.utterance, b.flags) == ("I don't know", ["encoding_repaired"])
    assert b.reasons == ["CSV line 3 is not UTF-8 like the rest of the file: decoded as "
                         "Windows-1252"]


def test_c1_control_characters_are_repaired_and_flagged(tmp_path):
    """'he\\x92s lost it': a Windows-1252 file read as Latin-1 by another tool and saved as
    UTF-8 holds C1 control characters; they went into the gold text unflagged."""
    path = meld_csv(tmp_path / "dev_sent_emo.csv",
                    [meld_row(0, 0, "he\x92s lost it"), meld_row(0, 1, "fine")])
    a, b = read_annotations(path)
    assert (a.utterance, a.flags) == ("he's lost it", ["encoding_repaired"])
    assert "control character(s) U+0092" in a.reasons[0]
    assert "Windows-1252" in a.reasons[0]
    assert not b.flags


def test_a_utf16_csv_is_named_as_such(tmp_path):
    """A UTF-16 CSV's error showed the header with NULs and never said UTF-16."""
    path = meld_csv(tmp_path / "dev_sent_emo.csv", [meld_row(0, 0)], encoding="utf-16")
    with pytest.raises(MeldflowError) as exc:
        read_annotations(path)
    message = str(exc.value)
    assert "UTF-16" in message and "UTF-8" in message and "\x00" not in message
    assert str(path) in message


def test_a_line_with_too_few_fields_says_so(tmp_path):
    """A line holding only an invalid byte said "Emotion None is not one of …"."""
    path = meld_csv(tmp_path / "dev_sent_emo.csv", [meld_row(0, 0), meld_row(0, 1)])
    data = path.read_bytes().replace(b"\r\n", b"\r\n\xff\r\n", 1)
    path.write_bytes(data)
    with pytest.raises(MeldflowError) as exc:
        read_annotations(path)
    assert f"{path}:2: 1 field(s) where the header has 11" in str(exc.value)
    assert "None" not in str(exc.value)


def test_a_missing_meld_folder_is_named(tmp_path):
    """A meld_dir that does not exist said "no annotation CSV"."""
    with pytest.raises(MeldflowError, match=r"MELD folder not found: .*nowhere"):
        find_csv(tmp_path / "nowhere", "dev")
