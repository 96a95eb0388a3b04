"""Classification metrics as emotion-recognition papers report them, and their plots.

MELD's headline number is the support-weighted F1 over the 7 emotions; fear and disgust
are rare, so macro F1 and per-class figures are reported beside it.
"""

from __future__ import annotations

from pathlib import Path

from meldflow.storage import atomic_path


def classification_metrics(gold: list[str], pred: list[str], labels: tuple[str, ...]) -> dict:
    """Accuracy, weighted and macro F1, and per-class precision/recall/F1/support.

    Follows scikit-learn's definitions with ``labels=labels`` and ``zero_division=0``:
    a class never predicted has precision 0, and macro F1 averages over all ``labels``.
    """
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold labels but {len(pred)} predictions")
    index = {label: i for i, label in enumerate(labels)}
    k = len(labels)
    matrix = [[0] * k for _ in range(k)]
    for g, p in zip(gold, pred, strict=True):
        if g in index and p in index:
            matrix[index[g]][index[p]] += 1
    per_class = {}
    for i, label in enumerate(labels):
        tp = matrix[i][i]
        support = sum(matrix[i])
        predicted = sum(matrix[r][i] for r in range(k))
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[label] = {"precision": precision, "recall": recall, "f1": f1,
                            "support": support}
    total = sum(c["support"] for c in per_class.values())
    return {
        "n": len(gold),
        "accuracy": sum(g == p for g, p in zip(gold, pred, strict=True)) / len(gold)
        if gold else 0.0,
        "weighted_f1": sum(c["f1"] * c["support"] for c in per_class.values()) / total
        if total else 0.0,
        "macro_f1": sum(c["f1"] for c in per_class.values()) / k,
        "per_class": per_class,
        "labels": list(labels),
        "confusion": matrix,
    }


def majority_baseline(train_gold: list[str], gold: list[str], labels: tuple[str, ...]) -> dict:
    """Metrics of always predicting the most frequent training label."""
    majority = max(labels, key=train_gold.count)
    return classification_metrics(gold, [majority] * len(gold), labels)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(metrics: dict, out: str | Path, title: str = "") -> Path:
    """Row-normalised confusion matrix with counts, as a PNG."""
    plt = _pyplot()
    labels, matrix = metrics["labels"], metrics["confusion"]
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * len(labels), 0.8 + 0.7 * len(labels)))
    rows = [[v / max(1, sum(r)) for v in r] for r in matrix]
    ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    for i, r in enumerate(matrix):
        for j, v in enumerate(r):
            ax.text(j, i, str(v), ha="center", va="center",
                    color="white" if rows[i][j] > 0.5 else "black", fontsize=8)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    ax.set_title(title or f"weighted F1 {metrics['weighted_f1']:.3f}")
    fig.tight_layout()
    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return out


def plot_curves(history: list[dict], out: str | Path) -> Path:
    """Training loss per step and dev weighted F1 per epoch, as a PNG."""
    plt = _pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.2))
    steps = [h for h in history if "loss" in h]
    a1.plot([h["step"] for h in steps], [h["loss"] for h in steps])
    a1.set_xlabel("step")
    a1.set_ylabel("training loss")
    evals = [h for h in history if "dev_weighted_f1" in h]
    a2.plot([h["epoch"] for h in evals], [h["dev_weighted_f1"] for h in evals], marker="o")
    a2.set_xlabel("epoch")
    a2.set_ylabel("dev weighted F1")
    fig.tight_layout()
    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return out


def metrics_table(metrics: dict) -> list[list[str]]:
    """Rows (split, task, n, weighted F1, macro F1, accuracy, majority weighted F1)."""
    rows = [["split", "task", "n", "weighted_f1", "macro_f1", "accuracy", "majority_wf1"]]
    for split in ("dev", "test"):
        if split not in metrics:
            continue
        for task in ("emotion", "sentiment"):
            m = metrics[split][task]
            maj = metrics[split].get("majority_baseline", {}).get("weighted_f1")
            rows.append([split, task, str(m["n"]), f"{m['weighted_f1']:.4f}",
                         f"{m['macro_f1']:.4f}", f"{m['accuracy']:.4f}",
                         f"{maj:.4f}" if task == "emotion" and maj is not None else ""])
    return rows


def per_class_table(metrics: dict) -> list[list[str]]:
    rows = [["split", "task", "class", "precision", "recall", "f1", "support"]]
    for split in ("dev", "test"):
        for task in ("emotion", "sentiment"):
            if split not in metrics:
                continue
            for label, c in metrics[split][task]["per_class"].items():
                rows.append([split, task, label, f"{c['precision']:.4f}", f"{c['recall']:.4f}",
                             f"{c['f1']:.4f}", str(c["support"])])
    return rows


def run_evaluate(run_dir: str | Path, out_dir: str | Path) -> str:
    """Tables and plots of a finished training run, for people and for the report."""
    import json
    import shutil

    from meldflow import MeldflowError
    from meldflow.storage import write_text

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    path = run_dir / "metrics.json"
    if not path.is_file():
        raise MeldflowError(f"{path} not found: the training run has not finished")
    metrics = json.loads(path.read_text())
    out_dir.mkdir(parents=True, exist_ok=True)
    table = metrics_table(metrics)
    write_text("\n".join("\t".join(r) for r in table) + "\n", out_dir / "metrics.tsv")
    write_text("\n".join("\t".join(r) for r in per_class_table(metrics)) + "\n",
               out_dir / "per_class.tsv")
    for name in ("confusion_dev.png", "confusion_test.png", "curves.png"):
        if (run_dir / name).is_file():
            shutil.copyfile(run_dir / name, out_dir / name)
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    return "\n".join("  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True))
                     for r in table) + "\n"
