"""`meldflow predict` prepares new inputs exactly as the run's training data was made."""
import json
import shutil
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
from helpers import SAMPLE, TRAIN_CSV, env_with_venv, tight_meld, whisper_settings

from meldflow import MeldflowError

FRAMES, SIZE = 4, 128  # not the defaults (8 frames of 256 px)


@pytest.fixture(scope="module")
def shards_4x128(hf_home, tmp_path_factory):
    """The sample's train and dev splits preprocessed with 4 frames of 128 px (real ffmpeg,
    real Whisper), by the steps' own functions."""
    import os

    os.environ["HF_HUB_OFFLINE"] = "1"
    from meldflow.preprocess.align import run_align
    from meldflow.preprocess.frames import run_frames
    from meldflow.preprocess.ingest import run_ingest
    from meldflow.preprocess.transcribe import run_transcribe

    root = tmp_path_factory.mktemp("shards_4x128")
    out = {}
    for split in ("train", "dev"):
        run_ingest(SAMPLE, split, 1000, root / f"{split}.parquet")
        rows = pq.read_table(root / f"{split}.parquet")
        settings = whisper_settings(hf_home, frames_per_utterance=FRAMES, frame_size=SIZE)
        run_frames(rows, root / f"{split}.frames.parquet", settings, 2)
        run_transcribe(rows, root / f"{split}.asr.parquet", settings)
        run_align(rows, pq.read_table(root / f"{split}.asr.parquet"),  # with their metadata
                  pq.read_table(root / f"{split}.frames.parquet"),
                  root / split / "shard-0000.parquet")
        out[split] = [str(root / split / "shard-0000.parquet")]
    return out


def _train(florence_home, shards, out, **kw):
    from helpers import train_config

    from meldflow.training.loop import train

    cfg = train_config(florence_home, out, train_csv=None, dev_csv=None, train=shards["train"],
                       dev=shards["dev"], epochs=2, **kw)
    train(cfg)
    return out


def _dev_rows(shards):
    """Dev rows with a usable clip: (row, clip path)."""
    rows = pq.read_table(shards["dev"][0]).to_pylist()
    folder = SAMPLE / "dev_splits_complete"
    return [(r, str(folder / f"dia{r['dialogue_id']}_utt{r['utterance_id']}.mp4"))
            for r in rows if r["status"] == "ok"]


@pytest.mark.integration
def test_predict_frames_clips_as_the_run_did(florence_home, shards_4x128, tmp_path):
    from meldflow.training.predict import clip_frames, predict

    out = _train(florence_home, shards_4x128, tmp_path / "run", modalities="text+vision")
    prep = json.loads((out / "best" / "preprocessing.json").read_text())
    assert (prep["frames_per_utterance"], prep["frame_size"]) == (FRAMES, SIZE)
    run = json.loads((out / "run.json").read_text())
    assert run["preprocessing"] == prep and prep["text_source"] == "gold"
    assert prep["max_clip_seconds"] == 30.0 and "whisper" not in prep
    rows = _dev_rows(shards_4x128)
    # the frames predict makes are the shard's, byte for byte (8 x 256 before)
    assert [clip_frames(c, prep) for _, c in rows[:3]] == [r["frames"] for r, _ in rows[:3]]
    got = predict(out / "best", clips=[c for _, c in rows],
                  texts=[f"{r['speaker']}: {r['utterance']}" for r, _ in rows])
    want = {(p["dialogue_id"], p["utterance_id"]): p for p in
            pq.read_table(out / "predictions_dev.parquet").to_pylist()}
    worst = 0.0
    for (r, _), g in zip(rows, got, strict=True):
        w = want[(r["dialogue_id"], r["utterance_id"])]
        for e, p in g["p_emotion"].items():
            worst = max(worst, abs(p - w[f"p_emotion_{e}"]))
        for s, p in g["p_sentiment"].items():
            worst = max(worst, abs(p - w[f"p_sentiment_{s}"]))
        assert g["emotion"] == w["pred_emotion"] and g["sentiment"] == w["pred_sentiment"]
    assert worst < 1e-5
    # clips alone give a text+vision model of the gold text nothing to read: refused
    with pytest.raises(MeldflowError, match=r'text_source gold\): give --text "Speaker: line"'):
        predict(out / "best", clips=[rows[0][1]])


@pytest.fixture(scope="module")
def transcript_model(florence_home, shards_4x128, tmp_path_factory):
    """A text model trained on the shards' Whisper transcripts (its run folder)."""
    return _train(florence_home, shards_4x128, tmp_path_factory.mktemp("whisper") / "run",
                  modalities="text", text_source="whisper")


@pytest.mark.integration
def test_predict_transcribes_with_the_runs_whisper_model(transcript_model, hf_home,
                                                        shards_4x128, tmp_path, caplog):
    from meldflow.preprocess.wer import normalise_for_wer
    from meldflow.training.predict import predict

    out = transcript_model
    prep = json.loads((out / "best" / "preprocessing.json").read_text())
    whisper = prep["whisper"]
    assert whisper["whisper_model"] == "tiny.en" and whisper["whisper_beam_size"] == 5
    rows = _dev_rows(shards_4x128)[:8]
    clips = [c for _, c in rows]
    # the prompts name the speaker as training's did: it was the literal "Speaker"
    with pytest.raises(MeldflowError, match=r"give --speaker NAME for each of the 8 clip"):
        predict(out / "best", clips=clips, hf_home=hf_home)
    got = predict(out / "best", clips=clips, hf_home=hf_home,
                  speakers=[r["speaker"] for r, _ in rows])
    same = [normalise_for_wer(g["transcript"]) == normalise_for_wer(r["transcript"] or "")
            for (r, _), g in zip(rows, got, strict=True)]
    assert sum(same) >= 6, [(g["transcript"], r["transcript"])
                            for (r, _), g in zip(rows, got, strict=True)]
    # on the same transcripts, the run's own probabilities (they differed by up to 0.124)
    want = {(w["dialogue_id"], w["utterance_id"]): w for w in
            pq.read_table(out / "predictions_dev.parquet").to_pylist()}
    compared = 0
    for (r, _), g in zip(rows, got, strict=True):
        w = want[(r["dialogue_id"], r["utterance_id"])]
        if g["transcript"] == (r["transcript"] or ""):
            compared += 1
            assert max(abs(p - w[f"p_emotion_{e}"]) for e, p in g["p_emotion"].items()) < 1e-5
    assert compared >= 5
    # a clip without audio gives a transcript model nothing to read: refused, not "" read
    silent = tmp_path / "silent.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-y", "-loglevel", "error", "-i", clips[0], "-an",
                    "-c:v", "copy", str(silent)], check=True)
    bad, good = predict(out / "best", clips=[str(silent), clips[0]], hf_home=hf_home,
                        speakers=["Ross", rows[0][0]["speaker"]])
    assert (bad["status"], "emotion" in bad) == ("no_audio", False)
    assert "silent.mp4: this model reads Whisper's transcript" in bad["reason"]
    assert good["status"] == "ok" and good["emotion"] in good["p_emotion"]
    # another Whisper model than the run's is refused
    other = tmp_path / "other-best"
    shutil.copytree(out / "best", other)
    prep["whisper"]["model_files"]["model.bin"] = "0" * 64
    (other / "preprocessing.json").write_text(json.dumps(prep))
    from meldflow.training.classifier import CHECKSUMS_FILE, _file_hashes

    (other / CHECKSUMS_FILE).write_text(json.dumps(_file_hashes(other)))  # a whole folder
    with pytest.raises(MeldflowError, match="not the one that made this model's training"):
        predict(other, clips=[rows[0][1]], hf_home=hf_home, speakers=["Ross"])
    # a model whose transcripts an older method made: predicted, with a warning that says so
    prep = json.loads((out / "best" / "preprocessing.json").read_text())
    prep["whisper"]["method"] = "shared-window-2"
    (other / "preprocessing.json").write_text(json.dumps(prep))
    (other / CHECKSUMS_FILE).write_text(json.dumps(_file_hashes(other)))
    caplog.clear()
    with caplog.at_level("WARNING", logger="meldflow"):
        predict(other, clips=[rows[0][1]], hf_home=hf_home, speakers=["Ross"])
    assert any("shared-window-2" in r.getMessage() and "may differ" in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]


@pytest.mark.integration
def test_predict_hears_a_dialogues_clips_as_the_transcribe_step_did(transcript_model, hf_home,
                                                                    tmp_path, caplog):
    """Issue 34: predict's transcripts depended on which clips were given with it and in
    what order ("We lost him at house" alone, "We lost the house" with its dialogue)."""
    from meldflow.preprocess.ingest import run_ingest
    from meldflow.preprocess.transcribe import run_transcribe
    from meldflow.training.predict import predict

    out = transcript_model
    # a tight dev set (speech to both edges of every clip, CSV times the clips' lengths), in
    # the shard's order: predict's transcripts are the transcribe step's, word for word
    meld = tight_meld(tmp_path / "tight", "dev", [TIGHT_LINES])
    run_ingest(meld, "dev", 1000, tmp_path / "tight" / "dev.parquet")
    tight = pq.read_table(tmp_path / "tight" / "dev.parquet")
    step = run_transcribe(tight, tmp_path / "tight" / "dev.asr.parquet",
                          whisper_settings(hf_home))
    got = predict(out / "best", clips=tight.column("clip_path").to_pylist(), hf_home=hf_home,
                  speakers=tight.column("speaker").to_pylist())
    assert [g["transcript"] for g in got] == step.column("transcript").to_pylist()
    # a dialogue's clips in any order are heard as the shard heard them, word for word;
    # a clip given alone is a dialogue of one, heard as the step hears it alone
    paths = tight.column("clip_path").to_pylist()
    order = [3, 0, 7, 5, 1, 6, 2, 4]
    caplog.clear()
    with caplog.at_level("WARNING", logger="meldflow"):
        shuffled = predict(out / "best", clips=[paths[i] for i in order], hf_home=hf_home,
                           speakers=["Ross"] * len(order))
    assert [g["transcript"] for g in shuffled] == [got[i]["transcript"] for i in order]
    alone = run_transcribe(tight.slice(2, 1), tmp_path / "tight" / "one.asr.parquet",
                           whisper_settings(hf_home)).column("transcript").to_pylist()
    assert [g["transcript"] for g in predict(out / "best", clips=[paths[2]], hf_home=hf_home,
                                             speakers=["Ross"])] == alone
    # the silent clip: no words, and predict says that it predicted from none
    assert got[1]["transcript"] == "" and got[1]["transcript_flags"] == ["no_speech"]
    said = [r.getMessage() for r in caplog.records if "empty transcript" in r.getMessage()]
    assert len(said) == 1 and "dia0_utt1.mp4" in said[0], said


@pytest.mark.integration
def test_shards_of_different_settings_are_refused(florence_home, shards_4x128, preprocessed,
                                                  tmp_path):
    from helpers import train_config

    from meldflow.training.loop import train

    default = sorted(str(p) for p in (preprocessed / "results" / "aligned" / "dev")
                     .glob("*.parquet"))
    cfg = train_config(florence_home, tmp_path / "mixed", train_csv=None, dev_csv=None,
                       modalities="vision", train=shards_4x128["train"], dev=default)
    with pytest.raises(MeldflowError, match=r"different preprocessing settings \(frame_size, "
                                            r"frames_per_utterance"):
        train(cfg)


# The tight dev set: one dialogue of clips cut as MELD's are (speech to both edges; None:
# a silent clip), its CSV times the clips' lengths.
TIGHT_LINES = ["I can't believe you did that to me, Ross.", None,
               "I'm just saying, this woman, I mean she's fictitious. No?", "'Sup? 'Sup dude?",
               "Phoebe!", "Aww, you guys are so cute!", "We should probably order lunch soon.",
               "Stop touching my stuff."]


def test_predict_hears_meld_named_clips_as_dialogues_in_utterance_order():
    """Issue 34: predict numbered its clips as dialogues 0..n-1, which packing ignored:
    clips given together shared windows in argument order. MELD-named clips are grouped by
    folder and dialogue, in utterance order; any other clip is a dialogue of its own."""
    from meldflow.training.predict import clip_dialogues

    clips = ["a/dia3_utt2.mp4", "a/dia3_utt0.mp4", "b/dia3_utt1.mp4", "talk.mp4",
             "a/final_videos_testdia3_utt1.mp4", "a/dia4_utt0.mp4", "other.mp4"]
    assert clip_dialogues(clips) == [(0, 2), (0, 0), (1, 1), (2, 0), (0, 1), (3, 0), (4, 0)]


def test_predict_says_what_is_wrong(tmp_path):
    import dataclasses

    from meldflow.training.train_options import TrainConfig

    model = tmp_path / "best"
    model.mkdir()
    cfg = TrainConfig(out="x", hf_home="x", train_csv=TRAIN_CSV, modalities="text+vision")
    (model / "meldflow_train.json").write_text(json.dumps(dataclasses.asdict(cfg)))
    clip = str(SAMPLE / "train_splits" / "dia0_utt0.mp4")
    for args, message in ((["--clips", str(tmp_path / "no.mp4")], "clip not found"),
                          (["--clips", clip, "--text", "  "], "are empty"),
                          (["--clips", clip, "--text", "A: hi"], "does not record how its "
                                                                 "training frames were made")):
        proc = subprocess.run([sys.executable, "-m", "meldflow.cli", "predict", "--model",
                               str(model), *args], capture_output=True, text=True,
                              env=env_with_venv())
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr


def _flip_inside(path, tensor: str) -> None:
    """Flip bits in the middle of one tensor of a safetensors file (same size)."""
    import struct

    data = bytearray(path.read_bytes())
    header_len = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + header_len])
    start, end = header[tensor]["data_offsets"]
    mid = 8 + header_len + (start + end) // 2
    data[mid:mid + 16] = bytes(b ^ 0x55 for b in data[mid:mid + 16])
    path.write_bytes(bytes(data))


def test_a_damaged_model_folder_is_refused_naming_the_file(florence_home, tmp_path):
    """Bits flipped inside a weight of best/ gave other probabilities with exit 0 (0.2551 →
    0.2526); best/ is now verified like a checkpoint, by predict and by evaluate."""
    from helpers import train_config

    from meldflow.training.evaluate import compare_runs
    from meldflow.training.loop import train
    from meldflow.training.predict import predict

    run = tmp_path / "default" / "seed-0"
    train(train_config(florence_home, run, max_steps=2))
    assert predict(run / "best", texts=["Joey: How you doin'?"], hf_home=florence_home)
    for name, tensor in (("model.safetensors", "model.encoder.layers.0.fc1.weight"),
                         ("heads.safetensors", "emotion.weight")):
        damaged = tmp_path / f"damaged-{name}"
        shutil.copytree(run, damaged / "default" / "seed-0")
        best = damaged / "default" / "seed-0" / "best"
        keys = json.loads(best.joinpath(name).read_bytes()[8:8 + int.from_bytes(
            best.joinpath(name).read_bytes()[:8], "little")])
        _flip_inside(best / name, next(k for k in keys if k.endswith(tensor)))
        with pytest.raises(MeldflowError, match=rf"{name} is damaged"):
            predict(best, texts=["Joey: How you doin'?"], hf_home=florence_home)
        with pytest.raises(MeldflowError, match=rf"{name} is damaged"):
            compare_runs([damaged / "default" / "seed-0"], tmp_path / f"eval-{name}")


@pytest.mark.parametrize("name", ["preprocessing.json", "meldflow_train.json"])
def test_a_truncated_model_card_is_refused_naming_the_file(florence_home, tmp_path, name):
    """A truncated best/preprocessing.json or meldflow_train.json gave a JSONDecodeError
    traceback: it was read before the folder was verified."""
    from helpers import train_config

    from meldflow.training.loop import train
    from meldflow.training.predict import predict

    run = tmp_path / "default" / "seed-0"
    train(train_config(florence_home, run, max_steps=1))
    card = run / "best" / name
    card.write_bytes(card.read_bytes()[: len(card.read_bytes()) // 2])
    with pytest.raises(MeldflowError, match=rf"{name} is damaged"):
        predict(run / "best", texts=["Joey: How you doin'?"], hf_home=florence_home)


@pytest.mark.integration
def test_one_bad_clip_is_a_row_of_its_own_and_the_batch_goes_on(florence_home, shards_4x128,
                                                                tmp_path):
    """`meldflow predict` aborted the whole batch on one bad clip, and its table had no
    header."""
    out = _train(florence_home, shards_4x128, tmp_path / "run", modalities="vision")
    clips = [c for _, c in _dev_rows(shards_4x128)[:2]]
    damaged = tmp_path / "dia9_utt9.mp4"
    damaged.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 4000)
    args = [sys.executable, "-m", "meldflow.cli", "predict", "--model", str(out / "best"),
            "--out", str(tmp_path / "p.json"), "--clips"]
    alone = subprocess.run(args + clips, capture_output=True, text=True, env=env_with_venv())
    assert alone.returncode == 0, alone.stderr[-2000:]
    mixed = subprocess.run(args + [clips[0], str(damaged), str(tmp_path / "gone.mp4"),
                                   clips[1]], capture_output=True, text=True,
                           env=env_with_venv())
    assert mixed.returncode == 2 and "Traceback" not in mixed.stderr, mixed.stderr[-2000:]
    lines = mixed.stdout.splitlines()
    assert lines[0].split() == ["emotion", "p", "sentiment", "input"]
    assert [lines[1], lines[4]] == alone.stdout.splitlines()[1:]  # as without the bad ones
    assert "dia9_utt9.mp4  (unreadable_video: " in lines[2]
    assert "gone.mp4  (missing_video: clip not found" in lines[3]
    assert "2 of 4 input(s) could not be read, the others are predicted" in mixed.stderr
    written = json.loads((tmp_path / "p.json").read_text())
    assert [r["status"] for r in written] == ["ok", "unreadable_video", "missing_video", "ok"]
