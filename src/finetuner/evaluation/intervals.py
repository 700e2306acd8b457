"""95 % intervals for the headline metrics: how far they could move with other test images.

Accuracy gets the Wilson score interval (a closed form that stays inside [0, 1] and behaves
near 100 %, where the demo lives); macro-F1, which has no closed form, a percentile bootstrap:
the test images resampled with replacement ``resamples`` times with a fixed seed, so the same
predictions always give the same interval.  Both say how precisely *this test set* measures
the model, not how much another training run would differ (docs/pipeline.md, "Noise").
"""
from __future__ import annotations

import math

import numpy as np

Z95 = 1.959963984540054  # the standard normal's 97.5 % quantile
RESAMPLES = 2000
SEED = 0


def wilson_interval(correct: int, total: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of the proportion ``correct / total`` ((0, 1) for no data)."""
    if total <= 0:
        return 0.0, 1.0
    p = correct / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z / (1 + z * z / total) * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total))
    return max(0.0, centre - half), min(1.0, centre + half)


def macro_f1_per_resample(labels: np.ndarray, predicted: np.ndarray, classes: int,
                          rows: np.ndarray) -> np.ndarray:
    """Macro-F1 of each resample: ``rows`` (resamples, n) indexes the test images.  As
    :func:`~finetuner.evaluation.metrics.classification_metrics`, scikit-learn's
    ``f1_score(average="macro", labels=<the classes with true images>, zero_division=0)``: a
    class without true images in the resample is not averaged.  One confusion matrix per
    resample, counted with a single ``bincount``."""
    count = len(rows)
    cells = (np.arange(count)[:, None] * classes * classes
             + labels[rows] * classes + predicted[rows])
    confusion = np.bincount(cells.ravel(), minlength=count * classes * classes)
    confusion = confusion.reshape(count, classes, classes)
    hits = np.diagonal(confusion, axis1=1, axis2=2)
    denominator = confusion.sum(1) + confusion.sum(2)  # 2 TP + FP + FN
    f1 = np.divide(2 * hits, denominator, out=np.zeros(hits.shape), where=denominator > 0)
    present = confusion.sum(2) > 0  # true images of the class in the resample
    return (f1 * present).sum(1) / np.maximum(1, present.sum(1))


def bootstrap_interval(values: np.ndarray) -> tuple[float, float]:
    """The central 95 % of resampled values (the percentile bootstrap)."""
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


def metric_intervals(labels: np.ndarray, predicted: np.ndarray, classes: int,
                     resamples: int = RESAMPLES, seed: int = SEED) -> dict:
    """``{"accuracy": {"low", "high"}, "macro_f1": {"low", "high"}, "method": ...}`` for the
    predictions of one model on its test images (empty: the widest intervals)."""
    labels, predicted = np.asarray(labels, np.int64), np.asarray(predicted, np.int64)
    n = len(labels)
    accuracy = wilson_interval(int((labels == predicted).sum()), n)
    if n == 0:
        f1 = (0.0, 1.0)
    else:  # resamples drawn in chunks of ~2 M indices: memory stays flat for large test sets
        rng, chunk, scores = np.random.default_rng(seed), max(1, 2_000_000 // n), []
        for start in range(0, resamples, chunk):
            rows = rng.integers(0, n, (min(chunk, resamples - start), n))
            scores.append(macro_f1_per_resample(labels, predicted, classes, rows))
        f1 = bootstrap_interval(np.concatenate(scores))
    return {"accuracy": {"low": accuracy[0], "high": accuracy[1]},
            "macro_f1": {"low": f1[0], "high": f1[1]},
            # short: a string column of `dvc metrics diff` is as wide as its longest value
            "method": f"Wilson; bootstrap {resamples}, seed {seed}"}
