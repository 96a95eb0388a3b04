"""Whether a clip holds speech (meldflow.preprocess.speech): silence and noise yield no
words, the same in a shared window, alone and in a shard; short spoken lines keep theirs."""

import pyarrow as pa
from helpers import tight_clip, tight_meld, whisper_settings

SILENT, NOISE, HUM = 0.0, 0.1, 0.003  # RMS of the noise added to a silent clip


def test_silence_and_noise_yield_no_words_and_a_flag_wherever_they_are_heard(
        hf_home, tmp_path):
    """Issue 34: a 3 s silent clip between two spoken clips of one dialogue came back "You",
    status ok, no flag; noise gave ". . . . ."; alone, a near-silent clip gave "" and was
    flagged. A clip in which no speech is found now gets an empty transcript and the flag
    no_speech, whatever shares its window; Whisper does not hear it at all."""
    from meldflow.preprocess.ingest import ingest_split
    from meldflow.preprocess.transcribe import Transcriber, transcribe_rows

    lines = [["Stop touching my stuff.", None, "We should probably order lunch soon."],
             [None], [None, "Oh!", "Yeah."], ["Could you pass the salt, please?", None]]
    quiet = {(1, 0): SILENT, (2, 0): NOISE, (3, 1): HUM}
    meld = tight_meld(tmp_path, "test", lines, noise=quiet)
    rows, _ = ingest_split(meld, "test", 100)
    t = Transcriber(whisper_settings(hf_home))
    shard = transcribe_rows(rows, t).to_pylist()
    alone = [transcribe_rows(rows.slice(i, 1), t).to_pylist()[0] for i in range(len(shard))]
    for row, single in zip(shard, alone, strict=True):
        key = (row["dialogue_id"], row["utterance_id"])
        spoken = lines[key[0]][key[1]]
        assert row["asr_status"] == "ok", row
        if spoken is None:
            assert (row["transcript"], row["words"]) == ("", []), (key, row["transcript"])
            assert row["asr_flags"] == ["no_speech"] and "no speech" in row["asr_reason"]
        else:  # "Oh!" and "Yeah." too: short lines are heard
            assert row["transcript"] and row["words"], (key, row["transcript"])
            assert "no_speech" not in row["asr_flags"]
        assert (single["transcript"] == "") == (spoken is None), (key, single["transcript"])
        assert single["asr_flags"] == row["asr_flags"]


def test_speech_probability_tells_speech_from_silence_and_noise(tmp_path):
    """Silero's peak speech probability on the clip's audio scaled to one peak level: a
    quiet "Oh!" is speech, loud noise and a hum are not."""
    from helpers import clip_samples

    from meldflow.preprocess.speech import SPEECH_THRESHOLD, speech_probability

    cases = {"Oh!": tight_clip(tmp_path / "oh.mp4", "Oh!"),
             "Yeah.": tight_clip(tmp_path / "yeah.mp4", "Yeah."),
             "silence": tight_clip(tmp_path / "s.mp4", None),
             "noise": tight_clip(tmp_path / "n.mp4", None, noise=NOISE),
             "loud noise": tight_clip(tmp_path / "ln.mp4", None, noise=0.3),
             "hum": tight_clip(tmp_path / "h.mp4", None, noise=HUM)}
    p = {k: speech_probability(clip_samples(c)) for k, c in cases.items()}
    assert min(p["Oh!"], p["Yeah."]) > SPEECH_THRESHOLD > max(
        p["silence"], p["noise"], p["loud noise"], p["hum"]), p
    quiet = clip_samples(cases["Oh!"]) * 0.05  # -26 dB: Silero alone says 0.44
    assert abs(speech_probability(quiet) - p["Oh!"]) < 0.01
    assert speech_probability(pa.array([], pa.float32()).to_numpy()) == 0.0
