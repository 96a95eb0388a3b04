"""Emotion and sentiment of new clips or utterances, from a trained model folder."""

from __future__ import annotations

from pathlib import Path

from meldflow import MeldflowError
from meldflow.ingest import EMOTIONS, SENTIMENTS
from meldflow.probe import ClipError, check_clip_file
from meldflow.training.evaluation import predict_rows
from meldflow.training.model import load_trained
from meldflow.training.options import TrainConfig


class _NoContext:
    """A source without earlier turns: new utterances come one by one."""

    context: dict = {}


def predict(model_dir: str | Path, clips: list[str] | None = None,
            texts: list[str] | None = None, device: str = "cpu") -> list[dict]:
    """Emotion and sentiment probabilities for new clips and/or utterances.

    ``texts`` are "Speaker: line" (or just the line); clips are framed like the training
    data. Which of the two the model reads follows its training modalities.
    """
    from meldflow.frames import extract_frames

    model_dir = Path(model_dir)
    cfg_path = model_dir / "meldflow_train.json"
    if not cfg_path.is_file():
        raise MeldflowError(f"{model_dir} has no meldflow_train.json: not a trained model")
    cfg = TrainConfig.from_json(cfg_path)
    clips, texts = list(clips or []), list(texts or [])
    n = max(len(clips), len(texts))
    if n == 0:
        raise MeldflowError("give clips, texts or both")
    blank = [i + 1 for i, t in enumerate(texts) if not t.strip()]
    if blank:
        raise MeldflowError(f"--text: utterance(s) {', '.join(map(str, blank))} are empty; "
                            f'give "Speaker: line" or just the line')
    for clip in clips:
        try:
            check_clip_file(clip)
        except ClipError as exc:
            raise MeldflowError(f"--clips: {exc}") from None
    if clips and texts and len(clips) != len(texts):
        raise MeldflowError(f"{len(clips)} clips but {len(texts)} texts")
    if "vision" in cfg.modalities and not clips:
        raise MeldflowError(f"this model reads frames ({cfg.modalities}): give clips")
    if cfg.modalities == "text" and not texts:
        raise MeldflowError("this model reads text only: give texts")
    model, processor = load_trained(model_dir, device)
    rows, names = [], []
    for i in range(n):
        text = texts[i] if texts else ""
        speaker, _, line = text.partition(": ") if ": " in text else ("", "", text)
        frames = []
        if clips and "vision" in cfg.modalities:
            res = extract_frames(clips[i])  # same defaults as the workflow
            if res.status != "ok":
                raise MeldflowError(f"{clips[i]}: {res.status} ({res.reason})")
            frames = res.frames
        rows.append({"dialogue_id": -1, "utterance_id": i, "speaker": speaker or "Speaker",
                     "utterance": line, "transcript": line, "frames": frames})
        names.append(clips[i] if clips else text)
    emo_p, sen_p = predict_rows(model, processor, cfg, _NoContext(), rows, device)
    out = []
    for name, pe, ps in zip(names, emo_p, sen_p, strict=True):
        out.append({"input": name,
                    "emotion": EMOTIONS[max(range(len(pe)), key=pe.__getitem__)],
                    "sentiment": SENTIMENTS[max(range(len(ps)), key=ps.__getitem__)],
                    "p_emotion": dict(zip(EMOTIONS, (round(p, 4) for p in pe), strict=True)),
                    "p_sentiment": dict(zip(SENTIMENTS, (round(p, 4) for p in ps),
                                            strict=True))})
    return out
