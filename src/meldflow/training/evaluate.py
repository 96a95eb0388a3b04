"""Classification metrics as emotion-recognition papers report them, and their plots.

MELD's headline number is the support-weighted F1 over the 7 emotions; fear and disgust
are rare, so macro F1 and per-class figures are reported beside it.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from meldflow import MeldflowError
from meldflow.storage import atomic_path, write_text


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


def _save(plt, fig, out: str | Path) -> Path:
    """The figure as a PNG at ``out``, written atomically."""
    fig.tight_layout()
    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return out


def _draw_confusion(ax, labels: list[str], matrix: list[list[int]], title: str) -> None:
    """Counts, coloured by their share of the row (gold class)."""
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
    ax.set_title(title)


def plot_confusion(metrics: dict, out: str | Path, title: str = "") -> Path:
    """Row-normalised confusion matrix with counts, as a PNG."""
    plt = _pyplot()
    labels, matrix = metrics["labels"], metrics["confusion"]
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * len(labels), 0.8 + 0.7 * len(labels)))
    _draw_confusion(ax, labels, matrix, title or f"weighted F1 {metrics['weighted_f1']:.3f}")
    return _save(plt, fig, out)


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
    return _save(plt, fig, out)


SPLITS = ("dev", "test")
TASKS = ("emotion", "sentiment")
HEADLINE = ("weighted_f1", "macro_f1", "accuracy")


def _mean_sd(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single seed)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def _fmt(mean: float, sd: float | None) -> str:
    return f"{mean:.3f}" if sd is None else f"{mean:.3f} ± {sd:.3f}"


def read_runs(run_dirs: list[str | Path]) -> dict[str, list[dict]]:
    """Finished runs by experiment, in the given order: ``{experiment: [metrics, ...]}``.

    A run folder ``…/{experiment}/seed-{n}`` belongs to ``experiment``; any other folder
    is an experiment of its own. Each metrics dict gains ``_dir``.
    """

    runs: dict[str, list[dict]] = {}
    for d in map(Path, run_dirs):
        path = d / "metrics.json"
        if not path.is_file():
            raise MeldflowError(f"{path} not found: that training run has not finished")
        try:
            metrics = json.loads(path.read_text())
        except ValueError as exc:
            raise MeldflowError(f"{path} is not valid JSON ({exc}); delete it and train "
                                f"that run again") from None
        name = d.parent.name if d.name.startswith("seed-") else d.name
        runs.setdefault(name, []).append(metrics | {"_dir": str(d)})
    return runs


def compare_tables(runs: dict[str, list[dict]]) -> dict[str, list[list[str]]]:
    """The TSV tables: ``metrics`` (mean and sd over seeds per split, task, experiment),
    ``per_class`` (per-class F1 likewise) and ``runs`` (every run's own figures)."""
    table = [["split", "task", "experiment", "seeds"]
             + [f"{m}_{x}" for m in HEADLINE for x in ("mean", "sd")]
             + ["majority_weighted_f1"]]
    per_class = [["split", "task", "experiment", "class", "seeds", "f1_mean", "f1_sd",
                  "support"]]
    each = [["experiment", "seed", "split", "task", *HEADLINE, "steps", "run_identity"]]
    for split in SPLITS:
        for task in TASKS:
            for name, ms in runs.items():
                ms = [m for m in ms if split in m]
                if not ms:
                    continue
                row = [split, task, name, str(len(ms))]
                for metric in HEADLINE:
                    mean, sd = _mean_sd([m[split][task][metric] for m in ms])
                    row += [f"{mean:.4f}", "" if sd is None else f"{sd:.4f}"]
                maj = [m[split].get("majority_baseline", {}).get("weighted_f1") for m in ms]
                row.append(f"{_mean_sd(maj)[0]:.4f}" if task == "emotion" and None not in maj
                           else "")
                table.append(row)
                for label in ms[0][split][task]["labels"]:
                    mean, sd = _mean_sd([m[split][task]["per_class"][label]["f1"] for m in ms])
                    per_class.append([split, task, name, label, str(len(ms)), f"{mean:.4f}",
                                      "" if sd is None else f"{sd:.4f}",
                                      str(ms[0][split][task]["per_class"][label]["support"])])
                for m in ms:
                    each.append([name, str(m["config"]["seed"]), split, task]
                                + [f"{m[split][task][k]:.4f}" for k in HEADLINE]
                                + [str(m["steps"]), m.get("run", {}).get("identity", "")])
    return {"metrics": table, "per_class": per_class, "runs": each}


def summary_text(runs: dict[str, list[dict]]) -> str:
    """The comparison as a person reads it: emotion and sentiment, mean ± sd over seeds."""
    rows = [["split", "experiment", "seeds", "emotion wF1", "macro F1", "accuracy",
             "majority wF1", "sentiment wF1"]]
    for split in SPLITS:
        for name, ms in runs.items():
            ms = [m for m in ms if split in m]
            if not ms:
                continue
            e = {k: _mean_sd([m[split]["emotion"][k] for m in ms]) for k in HEADLINE}
            maj = _mean_sd([m[split]["majority_baseline"]["weighted_f1"] for m in ms])[0]
            sent = _mean_sd([m[split]["sentiment"]["weighted_f1"] for m in ms])
            rows.append([split, name, str(len(ms)), _fmt(*e["weighted_f1"]),
                         _fmt(*e["macro_f1"]), _fmt(*e["accuracy"]), f"{maj:.3f}",
                         _fmt(*sent)])
    if len(rows) == 1:
        return "no dev or test split in these runs: nothing to evaluate on\n"
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True))
                     for r in rows) + "\n"


def plot_experiments(runs: dict[str, list[dict]], split: str, out: str | Path) -> Path:
    """Per experiment: emotion weighted F1, macro F1 and accuracy (mean, sd bars, one dot
    per seed) against the majority baseline, and the per-class F1 beside them."""
    plt = _pyplot()
    names = [n for n, ms in runs.items() if any(split in m for m in ms)]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 3.8), width_ratios=[1, 1.6])
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        ms = [m[split]["emotion"] for m in runs[name] if split in m]
        for j, metric in enumerate(HEADLINE):
            vals = [m[metric] for m in ms]
            mean, sd = _mean_sd(vals)
            x = j + (i - (len(names) - 1) / 2) * width
            a1.bar(x, mean, width, yerr=sd or 0, capsize=3, color=f"C{i}",
                   label=name if j == 0 else None)
            a1.scatter([x] * len(vals), vals, s=8, color="black", zorder=3)
        labels = ms[0]["labels"]
        for j, label in enumerate(labels):
            vals = [m["per_class"][label]["f1"] for m in ms]
            mean, sd = _mean_sd(vals)
            a2.bar(j + (i - (len(names) - 1) / 2) * width, mean, width, yerr=sd or 0,
                   capsize=2, color=f"C{i}")
    maj = [m[split]["majority_baseline"]["weighted_f1"] for n in names for m in runs[n]
           if split in m]
    if maj:
        a1.axhline(maj[0], color="grey", linestyle="--", label="majority class (wF1)")
    a1.set_xticks(range(len(HEADLINE)), ["weighted F1", "macro F1", "accuracy"])
    a1.set_ylim(0, 1)
    a1.set_title(f"{split}: emotion, mean ± sd over seeds")
    a1.legend(fontsize=8)
    a2.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    a2.set_ylim(0, 1)
    a2.set_title(f"{split}: F1 per emotion")
    return _save(plt, fig, out)


def plot_run_curves(runs: dict[str, list[dict]], out: str | Path) -> Path:
    """Every run's training loss per step and dev weighted F1 per epoch, coloured by
    experiment."""
    plt = _pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.4))
    for i, (name, ms) in enumerate(runs.items()):
        for k, m in enumerate(ms):
            path = Path(m["_dir"]) / "history.json"
            history = json.loads(path.read_text()) if path.is_file() else []
            steps = [h for h in history if "loss" in h]
            evals = [h for h in history if "dev_weighted_f1" in h]
            label = name if k == 0 else None
            a1.plot([h["step"] for h in steps], [h["loss"] for h in steps], color=f"C{i}",
                    alpha=0.7, label=label)
            a2.plot([h["epoch"] for h in evals], [h["dev_weighted_f1"] for h in evals],
                    color=f"C{i}", marker="o", alpha=0.7, label=label)
    a1.set_xlabel("step")
    a1.set_ylabel("training loss")
    a2.set_xlabel("epoch")
    a2.set_ylabel("dev weighted F1")
    a1.legend(fontsize=8)
    return _save(plt, fig, out)


def plot_confusions(runs: dict[str, list[dict]], split: str, out: str | Path) -> Path:
    """The emotion confusion matrix of each experiment, summed over its seeds."""
    plt = _pyplot()
    names = [n for n, ms in runs.items() if any(split in m for m in ms)]
    labels = next(m[split]["emotion"]["labels"] for n in names for m in runs[n] if split in m)
    k = len(labels)
    fig, axes = plt.subplots(1, len(names), figsize=(0.3 + 5.4 * len(names), 5.0),
                             squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        ms = [m[split]["emotion"] for m in runs[name] if split in m]
        matrix = [[sum(m["confusion"][i][j] for m in ms) for j in range(k)] for i in range(k)]
        _draw_confusion(ax, labels, matrix,
                        f"{split}: {name} ({len(ms)} seed{'s' if len(ms) > 1 else ''})")
    return _save(plt, fig, out)


def compare_runs(run_dirs: list[str | Path], out_dir: str | Path) -> str:
    """Tables, plots and the printed summary of finished runs, grouped by experiment."""
    if not run_dirs:
        raise MeldflowError("no training runs given")
    from meldflow.training.classifier import verify_model_dir  # torch: only to verify runs

    for run in run_dirs:  # the models handed on are what training wrote
        if (Path(run) / "best").is_dir():
            verify_model_dir(Path(run) / "best")
    runs = read_runs(run_dirs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, rows in compare_tables(runs).items():
        write_text("\n".join("\t".join(r) for r in rows) + "\n", out_dir / f"{name}.tsv")
    for split in SPLITS:
        if any(split in m for ms in runs.values() for m in ms):
            plot_experiments(runs, split, out_dir / f"experiments_{split}.png")
            plot_confusions(runs, split, out_dir / f"confusion_{split}.png")
    plot_run_curves(runs, out_dir / "curves.png")
    text = summary_text(runs)
    write_text(text, out_dir / "summary.txt")
    return text


def runs_outside(train_dir: str | Path, runs: set[tuple[str, int]]) -> list[str]:
    """Run folders under ``train_dir`` that the current config does not define (left by an
    earlier config): named, never mixed into this config's comparison."""
    found = []
    for run in sorted(Path(train_dir).glob("*/seed-*")):
        seed = run.name.removeprefix("seed-")
        if run.is_dir() and seed.isdigit() and (run.parent.name, int(seed)) not in runs:
            found.append(str(run))
    return found


def headline(split: str, m: dict) -> str:
    """A split's results in one line (what `meldflow train` prints), beside the majority
    baseline."""
    return (f"{split}: emotion weighted F1 {m['emotion']['weighted_f1']:.3f} "
            f"(majority {m['majority_baseline']['weighted_f1']:.3f}), "
            f"accuracy {m['emotion']['accuracy']:.3f}, "
            f"sentiment weighted F1 {m['sentiment']['weighted_f1']:.3f}")
