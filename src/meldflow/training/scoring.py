"""The trained classifier on dev and test: class probabilities, metrics, predictions, plots.

Training calls ``score_split`` on dev at every epoch end (to keep the best epoch) and
``write_results`` once at the end, on the machine that trained, with the model loaded.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from meldflow.labels import EMOTIONS, SENTIMENTS
from meldflow.provenance import RUN_FILE, environment, read_run
from meldflow.storage import write_table, write_text
from meldflow.training.batches import Encoder, to_device
from meldflow.training.classifier import load_trained
from meldflow.training.dataset import Source
from meldflow.training.evaluate import (
    classification_metrics,
    majority_baseline,
    plot_confusion,
    plot_curves,
)


def predict_rows(model, processor, cfg, source: Source, rows: list[dict],
                 device="cpu") -> tuple[list[list[float]], list[list[float]]]:
    """Class probabilities (emotion, sentiment) for ``rows``."""
    import torch

    model.eval()
    encoder = Encoder(processor, cfg, source)
    emo_p, sen_p = [], []
    with torch.no_grad():
        for i in range(0, len(rows), cfg.eval_batch):
            batch = to_device(encoder.inputs(rows[i:i + cfg.eval_batch]), device)
            e, s = model(**batch)
            emo_p += torch.softmax(e, -1).tolist()
            sen_p += torch.softmax(s, -1).tolist()
    return emo_p, sen_p


def _argmax(p: list[float]) -> int:
    return max(range(len(p)), key=p.__getitem__)


def score_split(model, processor, cfg, source: Source, device,
                   predictions: Path | None = None) -> dict:
    """Metrics for emotion and sentiment on one split; optionally writes predictions."""
    import pyarrow as pa


    rows = [r for u in source.units for r in source.rows(u)]
    emo_p, sen_p = predict_rows(model, processor, cfg, source, rows, device)
    pred_e = [EMOTIONS[_argmax(p)] for p in emo_p]
    pred_s = [SENTIMENTS[_argmax(p)] for p in sen_p]
    result = {
        "emotion": classification_metrics([r["emotion"] for r in rows], pred_e, EMOTIONS),
        "sentiment": classification_metrics([r["sentiment"] for r in rows], pred_s, SENTIMENTS),
    }
    if predictions is not None:
        cols = {
            "split": [r["split"] for r in rows], "dialogue_id": [r["dialogue_id"] for r in rows],
            "utterance_id": [r["utterance_id"] for r in rows],
            "emotion": [r["emotion"] for r in rows], "pred_emotion": pred_e,
            "sentiment": [r["sentiment"] for r in rows], "pred_sentiment": pred_s,
        }
        for j, e in enumerate(EMOTIONS):
            cols[f"p_emotion_{e}"] = [p[j] for p in emo_p]
        for j, s in enumerate(SENTIMENTS):
            cols[f"p_sentiment_{s}"] = [p[j] for p in sen_p]
        write_table(pa.table(cols), predictions)
    return result


def write_results(cfg, out: Path, device, state: dict, identity: dict, world: int = 1,
                  progress=None) -> dict:
    """Best model on dev and test: metrics.json (with what made it), predictions, plots."""
    model, processor = load_trained(out / "best", device)
    metrics = {"config": dataclasses.asdict(cfg), "steps": state["step"],
               "best_dev_weighted_f1": state["best_f1"],
               "run": {"identity": identity["digest"], **identity["parts"]},
               # checkpoints passed over on resume (damaged, truncated), and what was used
               "resumes": (read_run(out) or {}).get("resumes", []),
               **environment(world)}
    train_labels = Source(cfg.train or None, cfg.train_csv, "text", cfg.exclusions()).labels()
    for split, paths, csv in (("dev", cfg.dev, cfg.dev_csv), ("test", cfg.test, cfg.test_csv)):
        if not (paths or csv):
            continue
        src = Source(paths or None, csv, cfg.modalities)
        m = score_split(model, processor, cfg, src, device, out / f"predictions_{split}.parquet")
        m["majority_baseline"] = majority_baseline(train_labels, src.labels(), EMOTIONS)
        metrics[split] = m
        png = plot_confusion(m["emotion"], out / f"confusion_{split}.png",
                             f"{split}: emotion weighted F1 {m['emotion']['weighted_f1']:.3f}")
        if progress is not None:
            progress.image(f"{split}/confusion_emotion", png, state["step"])
    write_text(json.dumps(state["history"], indent=1), out / "history.json")
    plot_curves(state["history"], out / "curves.png")
    write_text(json.dumps(metrics, indent=2), out / "metrics.json")
    # run.json keeps the metrics too: Snakemake deletes metrics.json before it reruns the
    # rule (after a forced upstream job whose outputs came out the same, say), and launch
    # then restores it from here instead of submitting a job with nothing to learn.
    run = read_run(out) | {"finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                           "metrics": metrics}
    write_text(json.dumps(run, indent=1), out / RUN_FILE)
    return metrics
