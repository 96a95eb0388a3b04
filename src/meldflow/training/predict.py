"""Emotion and sentiment of new clips or utterances, from a trained model folder.

A model folder (a run's ``best/``) says how its inputs were made (``preprocessing.json``):
clips are framed with the run's frames per utterance, frame size and clip cap, and, for
a model trained on Whisper's transcripts, transcribed with the same Whisper model (its
file hashes are checked) and decoding options. Inputs a modality needs are required.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from meldflow import MeldflowError
from meldflow.annotations import CLIP_RE
from meldflow.labels import EMOTIONS, SENTIMENTS
from meldflow.model_cache.snapshots import use_offline_cache
from meldflow.preprocess.frames import extract_frames
from meldflow.preprocess.probe import ClipError, check_clip_file
from meldflow.settings import Settings, recorded_settings
from meldflow.shard_schema import METHOD_VERSIONS
from meldflow.storage import write_text
from meldflow.training.classifier import (
    OPTIONS_FILE,
    PREPROCESSING_FILE,
    load_trained,
    verify_model_dir,
)
from meldflow.training.scoring import predict_rows
from meldflow.training.train_options import TrainConfig

log = logging.getLogger("meldflow.training")


class _NoContext:
    """A source without earlier turns: new utterances come one by one."""

    context: dict = {}


def read_model_card(model_dir: Path) -> tuple[TrainConfig, dict | None]:
    """(training options, how the inputs were made) of a trained model folder. A card that
    does not parse is checked against the folder's hashes, which name the damaged file."""
    cfg_path = model_dir / OPTIONS_FILE
    if not cfg_path.is_file():
        raise MeldflowError(f"{model_dir} has no {OPTIONS_FILE}: not a trained model")
    prep_path = model_dir / PREPROCESSING_FILE
    try:
        prep = json.loads(prep_path.read_text()) if prep_path.is_file() else None
        return TrainConfig.from_json(cfg_path), prep
    except (ValueError, TypeError) as exc:
        verify_model_dir(model_dir)
        raise MeldflowError(f"{model_dir}: its {OPTIONS_FILE} or {PREPROCESSING_FILE} cannot "
                            f"be read ({exc}): copy the whole folder again, or retrain") from None


def _check_inputs(cfg: TrainConfig, prep: dict | None, clips: list[str], texts: list[str],
                  model_dir: Path) -> dict[int, ClipError]:
    """Refuse what the model cannot read as it was trained to, with what to give instead;
    {index: why} of the clips that cannot be read (each is a row of its own)."""
    if not clips and not texts:
        raise MeldflowError("give clips, texts or both")
    blank = [i + 1 for i, t in enumerate(texts) if not t.strip()]
    if blank:
        raise MeldflowError(f"--text: utterance(s) {', '.join(map(str, blank))} are empty; "
                            f'give "Speaker: line" or just the line')
    unreadable = {}
    for i, clip in enumerate(clips):
        try:
            check_clip_file(clip)
        except ClipError as exc:
            unreadable[i] = exc
    first = next(iter(unreadable.values()), None)
    if clips and len(unreadable) == len(clips):  # nothing to predict: an error, at once
        raise MeldflowError(f"--clips: {first}" if len(clips) == 1 else
                            f"--clips: none of the {len(clips)} clips can be read (first: "
                            f"{first})")
    if clips and texts and len(clips) != len(texts):
        raise MeldflowError(f"{len(clips)} clips but {len(texts)} texts")
    if "vision" in cfg.modalities:
        if not clips:
            raise MeldflowError(f"this model reads frames ({cfg.modalities}): give clips")
        if prep is None or "frame_size" not in prep:
            raise MeldflowError(f"{model_dir} does not record how its training frames were "
                                f"made (no {PREPROCESSING_FILE}: trained by an older "
                                f"meldflow); train it again to predict from clips")
    if "text" in cfg.modalities and not texts:
        if cfg.text_source == "whisper" and clips:
            if prep is None or "whisper" not in prep:
                raise MeldflowError(f"{model_dir} does not record which Whisper model made "
                                    f"its transcripts: give --text, or train it again")
            return unreadable
        if clips:
            raise MeldflowError(
                f"this model reads the gold utterance ({cfg.modalities}, text_source gold): "
                f'give --text "Speaker: line" for each clip, in the same order')
        raise MeldflowError("this model reads text: give texts")
    return unreadable


def clip_dialogues(clips: list[str]) -> list[tuple[int, int]]:
    """(dialogue, utterance) of each clip, as the transcribe step would hear it: MELD-named
    clips (``dia{D}_utt{U}.mp4``) of one folder and dialogue are one dialogue, in
    utterance order; any other clip is a dialogue of its own."""
    dialogues: dict[tuple, int] = {}
    keys = []
    for clip in clips:
        m = CLIP_RE.match(Path(clip).name)
        group = (str(Path(clip).resolve().parent), int(m.group(1))) if m else (clip, len(keys))
        keys.append((dialogues.setdefault(group, len(dialogues)),
                     int(m.group(2)) if m else 0))
    return keys


def transcribe_clips(clips: list[str], whisper: dict, hf_home: str | Path | None,
                     fallback_home: str, device: str
                     ) -> list[tuple[str, list[str]] | ClipError]:
    """(transcript, flags) of each clip (a ClipError for a clip Whisper could not read),
    made as the training transcripts were: the same
    Whisper model (checked by its file hashes) and decoding settings, the clips of one
    dialogue sharing windows (:func:`clip_dialogues`)."""
    home = hf_home or (fallback_home if Path(fallback_home).is_dir() else None) \
        or os.environ.get("HF_HOME")
    if not home:
        raise MeldflowError(f"this model reads Whisper transcripts ({whisper['whisper_model']})"
                            f": give --hf-home, the cache `meldflow stage` put that model in")
    use_offline_cache(home)  # before faster-whisper is imported
    import pyarrow as pa

    # faster-whisper: imported after use_offline_cache, so that it never reaches the Hub
    from meldflow.preprocess.transcribe import Transcriber, transcribe_rows

    method = whisper.get("method", "one older than dialogue-window-1")
    if method != METHOD_VERSIONS["transcribe"]:
        log.warning("this model's training transcripts were made by transcription method %s; "
                    "this meldflow transcribes by %s, so its transcripts, and the "
                    "predictions, may differ from what training saw", method,
                    METHOD_VERSIONS["transcribe"])
    settings = Settings(hf_home=str(home), whisper_device="cpu" if device == "cpu" else "auto",
                        whisper_max_empty_fraction=1.0,
                        **{k: whisper[k] for k in recorded_settings("transcribe")})
    asr = Transcriber(settings)
    if asr.model_files != whisper["model_files"]:
        raise MeldflowError(f"the Whisper model {settings.whisper_model} in {home} is not the "
                            f"one that made this model's training transcripts (other file "
                            f"hashes): stage the same model, or give --text")
    keys = clip_dialogues(clips)
    n = len(clips)
    rows = pa.table({"split": ["predict"] * n, "dialogue_id": [d for d, _ in keys],
                     "utterance_id": [u for _, u in keys], "clip_path": [str(c) for c in clips],
                     "status": ["ok"] * n, "utterance": [""] * n})
    table = transcribe_rows(rows, asr).to_pylist()
    out = []
    for clip, row in zip(clips, table, strict=True):
        if row["asr_status"] != "ok":  # an empty transcript would be predicted from, silently
            out.append(ClipError(f"{clip}: this model reads Whisper's transcript of the clip "
                                 f"({row['asr_reason'] or row['asr_status']}); give --text "
                                 f"\"Speaker: line\" for it instead", row["asr_status"]))
            continue
        if not row["transcript"]:
            log.warning("%s: %s: this model of transcripts predicts it from an empty "
                        "transcript, as training did for such clips", clip,
                        "no speech in it" if "no_speech" in row["asr_flags"]
                        else "Whisper heard no words")
        out.append((row["transcript"], [f for f in row["asr_flags"] if f != "no_gold_text"]))
    return out


def clip_frames(clip: str, prep: dict) -> list[bytes]:
    """The clip's frames exactly as the training shards hold them."""
    res = extract_frames(clip, **{k: prep[k] for k in recorded_settings("frames")})
    if res.status != "ok":
        raise ClipError(f"{clip}: {res.reason}", res.status)
    return res.frames


def predict(model_dir: str | Path, clips: list[str] | None = None,
            texts: list[str] | None = None, device: str = "cpu",
            hf_home: str | Path | None = None, speakers: list[str] | None = None
            ) -> list[dict]:
    """Emotion and sentiment probabilities for new clips and/or utterances, one row each
    in input order, with its ``status``: ``ok``, or why the clip could not be read (with a
    ``reason``; the other rows are predicted as without it).

    ``texts`` are "Speaker: line" (or just the line); clips are framed (and, for a model of
    Whisper transcripts without ``texts``, transcribed) as the training data was.
    """
    model_dir = Path(model_dir)
    cfg, prep = read_model_card(model_dir)
    clips, texts = list(clips or []), list(texts or [])
    bad = _check_inputs(cfg, prep, clips, texts, model_dir)  # the inputs, told at once
    verify_model_dir(model_dir)  # before anything is made from its files
    if cfg.context_turns:
        log.warning("the model was trained with %d earlier turns in the prompt; new "
                    "utterances come without them", cfg.context_turns)
    heard: dict[int, tuple[str, list[str]]] | None = None
    if "text" in cfg.modalities and not texts:
        # training's prompts name each line's speaker: so do these (required, as given)
        speakers = list(speakers or [])
        if len(speakers) != len(clips):
            raise MeldflowError(
                f"this model's prompts name the speaker, as in training (\"Speaker: "
                f"transcript\"): give --speaker NAME for each of the {len(clips)} clip(s), "
                f"in the same order")
        usable = [i for i in range(len(clips)) if i not in bad]
        got = transcribe_clips([clips[i] for i in usable], prep["whisper"], hf_home,
                               cfg.hf_home, device) if usable else []
        heard = {}
        for i, result in zip(usable, got, strict=True):
            if isinstance(result, ClipError):
                bad[i] = result
            else:
                heard[i] = result
        texts = [f"{who}: {heard[i][0]}" if i in heard else "" for i, who in enumerate(speakers)]
    model, processor = load_trained(model_dir, device)
    rows, order = [], []
    for i in range(max(len(clips), len(texts))):
        if i in bad:
            continue
        text = texts[i] if texts else ""
        speaker, _, line = text.partition(": ") if ": " in text else ("", "", text)
        try:
            frames = clip_frames(clips[i], prep) if "vision" in cfg.modalities else []
        except ClipError as exc:
            bad[i] = exc
            continue
        order.append(i)
        rows.append({"dialogue_id": -1, "utterance_id": i, "speaker": speaker or "Speaker",
                     "utterance": line, "transcript": line, "frames": frames})
    emo_p, sen_p = predict_rows(model, processor, cfg, _NoContext(), rows, device) \
        if rows else ([], [])
    done = dict(zip(order, zip(emo_p, sen_p, strict=True), strict=True))
    out = []
    for i in range(max(len(clips), len(texts))):
        row = {"input": clips[i] if clips else texts[i]}
        if i in bad:
            out.append(row | {"status": bad[i].status, "reason": str(bad[i])})
            continue
        pe, ps = done[i]
        out.append(row | {"status": "ok",
                          "emotion": EMOTIONS[max(range(len(pe)), key=pe.__getitem__)],
                          "sentiment": SENTIMENTS[max(range(len(ps)), key=ps.__getitem__)],
                          "p_emotion": dict(zip(EMOTIONS, pe, strict=True)),
                          "p_sentiment": dict(zip(SENTIMENTS, ps, strict=True))}
                   | ({"transcript": heard[i][0], "transcript_flags": heard[i][1]}
                      if heard is not None else {}))
    return out


def predictions_table(rows: list[dict]) -> str:
    """:func:`predict`'s rows as the terminal shows them, under a header; a clip that could
    not be read is a row of its own with why."""
    lines = [f"{'emotion':>9s} {'p':>4s}  {'sentiment':>9s}  input"]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"{'-':>9s} {'-':>4s}  {'-':>9s}  {r['input']}  ({r['status']}: "
                         f"{r['reason']})")
            continue
        heard = f'  "{r["transcript"]}"' if "transcript" in r else ""
        heard += f" ({', '.join(r['transcript_flags'])})" if r.get("transcript_flags") else ""
        lines.append(f"{r['emotion']:>9s} {r['p_emotion'][r['emotion']]:.2f}  "
                     f"{r['sentiment']:>9s}  {r['input']}{heard}")
    return "\n".join(lines)


def report_predictions(rows: list[dict], out: str | None) -> None:
    """``meldflow predict``'s output: the table, the rows as JSON in ``out``, and then a
    MeldflowError when an input could not be read (the others are predicted)."""
    print(predictions_table(rows))
    if out:
        write_text(json.dumps(rows, indent=1) + "\n", out)
    failed = [r for r in rows if r["status"] != "ok"]
    if failed:
        raise MeldflowError(f"{len(failed)} of {len(rows)} input(s) could not be read, the "
                            f"others are predicted (first: {failed[0]['reason']})")
