"""The 95 % intervals of eval.json (src/finetuner/evaluation/intervals.py) on known cases."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score

from finetuner.evaluation.intervals import (bootstrap_interval, macro_f1_per_resample,
                                            metric_intervals, wilson_interval)


@pytest.mark.parametrize("correct, total, low, high", [
    # Newcombe (1998), Statistics in Medicine 17:857, table I, method 3 (Wilson's score)
    (81, 263, 0.2553, 0.3662),
    (15, 148, 0.0624, 0.1605),
    (0, 20, 0.0, 0.1611),
    (1, 29, 0.0061, 0.1718),
    (8, 10, 0.4902, 0.9433),
    (10, 10, 0.7225, 1.0),      # always right: the upper end is 1, the lower end is not
])
def test_wilson_interval_matches_published_values(correct, total, low, high):
    assert wilson_interval(correct, total) == pytest.approx((low, high), abs=5e-5)


def test_resampled_macro_f1_is_scikit_learns_on_each_resample():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, 60)
    predicted = np.where(rng.random(60) < 0.7, labels, rng.integers(0, 4, 60))
    predicted[predicted == 3] = 2  # class 3 never predicted: its F1 is 0, not undefined
    rows = rng.integers(0, 60, (25, 60))
    expected = [f1_score(labels[r], predicted[r], labels=sorted(set(labels[r])), average="macro",
                         zero_division=0) for r in rows]  # class 4: no image, not averaged
    assert macro_f1_per_resample(labels, predicted, 5, rows) == pytest.approx(expected)


def test_bootstrap_interval_is_the_central_95_percent():
    assert bootstrap_interval(np.arange(1001) / 1000) == pytest.approx((0.025, 0.975))


def test_intervals_of_a_perfect_model_and_of_a_known_accuracy():
    labels = np.repeat(np.arange(10), 100)
    perfect = metric_intervals(labels, labels, 10)
    assert perfect["macro_f1"] == {"low": 1.0, "high": 1.0}
    assert perfect["accuracy"]["high"] == 1.0 and perfect["accuracy"]["low"] > 0.99
    # 900 of 1000 right, every error a swap to the next class: macro-F1 = accuracy = 0.9, so the
    # bootstrap of macro-F1 must land where the normal approximation puts accuracy's interval
    predicted = labels.copy()
    wrong = np.arange(0, 1000, 10)
    predicted[wrong] = (labels[wrong] + 1) % 10
    result = metric_intervals(labels, predicted, 10)
    assert result["accuracy"] == dict(zip(("low", "high"), wilson_interval(900, 1000)))
    half = 1.96 * (0.9 * 0.1 / 1000) ** 0.5  # 0.0186
    assert result["macro_f1"]["low"] == pytest.approx(0.9 - half, abs=0.005)
    assert result["macro_f1"]["high"] == pytest.approx(0.9 + half, abs=0.005)


def test_the_same_predictions_always_give_the_same_interval():
    rng = np.random.default_rng(0)
    labels, predicted = rng.integers(0, 3, 50), rng.integers(0, 3, 50)
    assert metric_intervals(labels, predicted, 3) == metric_intervals(labels, predicted, 3)
    assert metric_intervals(labels, predicted, 3, seed=1) != metric_intervals(labels, predicted, 3)


def test_no_test_images_give_the_widest_interval():
    empty = np.zeros(0, np.int64)
    result = metric_intervals(empty, empty, 3)
    assert result["accuracy"] == result["macro_f1"] == {"low": 0.0, "high": 1.0}


def test_a_class_without_test_images_is_left_out_of_macro_f1_as_in_finetuner_evaluate():
    """Too few photos of class 2 for the test split: right on every image of the others is a
    macro-F1 of 1 (it was 0.67, class 2 counted 0), its interval too; predicting the absent
    class is still a mistake."""
    from finetuner.evaluation.metrics import classification_metrics
    labels = np.array([0, 0, 0, 1, 1, 1])
    perfect = classification_metrics(labels, labels, ["a", "b", "c"])
    assert perfect["macro_f1"] == 1.0 and perfect["per_class"]["c"]["support"] == 0
    assert metric_intervals(labels, labels, 3)["macro_f1"] == {"low": 1.0, "high": 1.0}
    wrong = np.array([0, 0, 2, 1, 1, 1])  # one image of class 0 called c
    assert classification_metrics(labels, wrong, ["a", "b", "c"])["macro_f1"] == pytest.approx(
        f1_score(labels, wrong, labels=[0, 1], average="macro"))
    # per_class.json: nothing measured is null (0.0 looked like a total failure), except the
    # precision of a class that was predicted: every prediction of it was wrong
    assert perfect["per_class"]["c"] == {"precision": None, "recall": None, "f1": None,
                                         "support": 0}
    called_c = classification_metrics(labels, wrong, ["a", "b", "c"])["per_class"]
    assert called_c["c"] == {"precision": 0.0, "recall": None, "f1": None, "support": 0}
    assert called_c["a"]["recall"] == pytest.approx(2 / 3)
    from finetuner.evaluation.report import untested_note as note  # the stage's line names it
    assert (note(perfect["per_class"]), note(called_c)) == (" (no image of c: not scored)",) * 2
    assert note(classification_metrics(wrong, wrong, ["a", "b", "c"])["per_class"]) == ""
