"""Metrics (meldflow.training.evaluate) equal to scikit-learn's, and the majority baseline."""
import random

import pytest
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

from meldflow.labels import EMOTIONS, SENTIMENTS
from meldflow.training.evaluate import classification_metrics, majority_baseline, plot_confusion


@pytest.mark.parametrize("labels", [EMOTIONS, SENTIMENTS])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_equal_scikit_learn(labels, seed):
    rng = random.Random(seed)
    weights = [10, 4, 3, 3, 2, 1, 1][: len(labels)]
    gold = rng.choices(labels, weights, k=300)
    pred = [g if rng.random() < 0.5 else rng.choice(labels[:-1]) for g in gold]  # last never
    m = classification_metrics(gold, pred, labels)
    kw = {"labels": list(labels), "zero_division": 0}
    assert m["weighted_f1"] == pytest.approx(f1_score(gold, pred, average="weighted", **kw))
    assert m["macro_f1"] == pytest.approx(f1_score(gold, pred, average="macro", **kw))
    assert m["accuracy"] == pytest.approx(accuracy_score(gold, pred))
    p, r, f, s = precision_recall_fscore_support(gold, pred, **kw)
    for i, label in enumerate(labels):
        c = m["per_class"][label]
        assert (c["precision"], c["recall"], c["f1"]) == pytest.approx((p[i], r[i], f[i]))
        assert c["support"] == s[i]


def test_majority_baseline(tmp_path):
    m = majority_baseline(["neutral", "neutral", "joy"], ["joy", "neutral"], EMOTIONS)
    assert m["accuracy"] == 0.5 and m["per_class"]["neutral"]["recall"] == 1.0
    assert plot_confusion(m, tmp_path / "c.png").stat().st_size > 1000
