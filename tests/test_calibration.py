"""Temperature scaling, ECE, the coverage curve of the reject option, the calibration file, and
the evaluate stage's calibration outputs on tiny data."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from conftest import make_image_folder
from finetuner.cli import main
from finetuner.evaluation.report import OUT_OF_FOLD, calibration_note
from finetuner.evaluation.calibration import (CalibrationError, calibration_record,
                                              coverage_curve, expected_calibration_error,
                                              file_sha256, fit_temperature, nll,
                                              read_calibration, reliability, softmax)
from finetuner.io import write_json
from finetuner.models import build_model
from finetuner.models.checkpoint import load_checkpoint, save_checkpoint


def _calibrated_logits(n: int = 3000, classes: int = 5, seed: int = 0):
    """Logits and labels drawn from softmax(logits): calibrated at T = 1 by construction."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2.0, (n, classes))
    probabilities = softmax(logits)
    labels = np.array([rng.choice(classes, p=p) for p in probabilities])
    return logits, labels


@pytest.mark.parametrize("scale", [3.0, 0.5])  # over-confident, then under-confident
def test_the_fitted_temperature_undoes_a_scaling_of_calibrated_logits(scale):
    logits, labels = _calibrated_logits()
    distorted = logits * scale
    temperature = fit_temperature(distorted, labels)
    assert temperature == pytest.approx(scale, rel=0.1)
    assert nll(distorted, labels, temperature) < nll(distorted, labels)
    before, after = softmax(distorted), softmax(distorted, temperature)
    assert (after.argmax(1) == before.argmax(1)).all()  # accuracy unchanged
    assert expected_calibration_error(after, labels) < expected_calibration_error(before, labels)
    for nearby in (temperature * 1.05, temperature / 1.05):  # a minimum of the NLL
        assert nll(distorted, labels, temperature) < nll(distorted, labels, nearby)


def test_an_over_confident_toy_set_gets_a_temperature_above_one():
    # 8 of 10 right, but each said with probability about 0.99
    logits = np.array([[5.0, 0.0]] * 8 + [[0.0, 5.0]] * 2)
    labels = np.zeros(10, int)
    temperature = fit_temperature(logits, labels)
    assert temperature > 1
    assert nll(logits, labels, temperature) < nll(logits, labels)
    # 0.8 accurate: the calibrated confidence is 0.8 (NLL's minimum for one shared margin)
    assert softmax(logits, temperature).max(1) == pytest.approx(0.8, abs=1e-4)
    assert (softmax(logits, temperature).argmax(1) == logits.argmax(1)).all()


def test_no_temperature_when_every_prediction_is_right_or_there_is_nothing():
    assert fit_temperature(np.array([[3.0, 0.0], [0.0, 2.0]]), np.array([0, 1])) is None
    assert fit_temperature(np.zeros((0, 3)), np.zeros(0, int)) is None


@pytest.mark.parametrize("fitted_on", ["val split", OUT_OF_FOLD])
def test_a_temperature_scored_on_the_val_split_it_was_fitted_on_gets_a_note(fitted_on):
    """Scored on val (``data.test_fraction: 0``): the temperature was fitted on val's own
    predictions, or on out-of-fold predictions of train + val, val among them; either way
    ECE and NLL after are optimistic, and eval.json must say so."""
    note = calibration_note(1.3, True, fitted_on, trained_on_val=True)
    assert note and "optimistic" in note
    # scored on a test split, a temperature from out-of-fold predictions needs no note
    assert calibration_note(1.3, False, OUT_OF_FOLD, trained_on_val=True) is None


def test_rows_never_predicted_are_left_out_of_the_temperature_fit():
    logits = np.array([[5.0, 0.0]] * 8 + [[0.0, 5.0]] * 2)
    labels = np.zeros(10, int)
    with_nan = np.concatenate([logits, np.full((5, 2), np.nan)])
    temperature = fit_temperature(with_nan, np.zeros(15, int))
    assert temperature == pytest.approx(fit_temperature(logits, labels))
    assert fit_temperature(np.full((4, 2), np.nan), np.zeros(4, int)) is None


def test_ece_by_hand():
    probabilities = np.array([[0.95, 0.05], [0.95, 0.05], [0.55, 0.45], [0.55, 0.45]])
    labels = np.array([0, 1, 0, 0])
    # bin (14/15, 1]: confidence 0.95, accuracy 0.5; bin (8/15, 9/15]: 0.55 and 1.0
    assert expected_calibration_error(probabilities, labels) == pytest.approx(
        0.5 * 0.45 + 0.5 * 0.45)
    bins = reliability(probabilities, labels)
    assert len(bins) == 15 and sum(b["count"] for b in bins) == 4
    assert bins[14]["count"] == 2 and bins[14]["accuracy"] == 0.5
    assert bins[8]["count"] == 2 and bins[8]["confidence"] == pytest.approx(0.55)
    # a confidence of exactly 1 is in the last bin; k / 15 is in bin k - 1
    edges = reliability(np.array([[1.0, 0.0], [0.6, 0.4]]), np.array([0, 0]))
    assert edges[14]["count"] == 1 and edges[8]["count"] == 1


def test_coverage_curve_by_hand_and_as_predict_applies_the_threshold():
    probabilities = np.array([[0.9, 0.1], [0.2, 0.8], [0.8, 0.2], [0.6, 0.4]])
    labels = np.array([0, 0, 0, 0])  # the 0.8 on class 1 is the only mistake
    rows = coverage_curve(probabilities, labels)
    assert [(r["min_confidence"], r["kept"], r["accuracy"]) for r in rows] == [
        (0.8, 1, 1.0), (0.6, 3, pytest.approx(2 / 3)), (0.0, 4, 0.75)]
    assert [r["coverage"] for r in rows] == [0.25, 0.75, 1.0]
    for row in rows:  # predict keeps a photo when its top probability is above P
        assert (probabilities.max(1) > row["min_confidence"]).sum() == row["kept"]


def test_coverage_curve_is_thinned_to_max_points_and_ends_with_everything_kept():
    rng = np.random.default_rng(1)
    probabilities = softmax(rng.normal(0, 2, (1000, 4)))
    labels = rng.integers(0, 4, 1000)
    rows = coverage_curve(probabilities, labels, max_points=50)
    assert len(rows) <= 51 and rows[-1]["coverage"] == 1.0 and rows[-1]["min_confidence"] == 0
    assert rows[-1]["accuracy"] == pytest.approx((probabilities.argmax(1) == labels).mean())
    coverage = [r["coverage"] for r in rows]
    assert coverage == sorted(coverage) and len(set(coverage)) == len(coverage)
    for row in rows:
        kept = probabilities.max(1) > row["min_confidence"]
        assert kept.sum() == row["kept"]
        assert row["accuracy"] == pytest.approx((probabilities.argmax(1) == labels)[kept].mean())


def test_the_calibration_file_is_checked_against_the_checkpoint(tmp_path):
    model = tmp_path / "model.pt"
    model.write_bytes(b"weights")
    good = tmp_path / "calibration.json"
    write_json(good, calibration_record(1.7, model, file_sha256(model), "val split", 10))
    assert read_calibration(good, file_sha256(model)) == 1.7
    with pytest.raises(CalibrationError, match=r"calibration\.json: fitted for another model"):
        read_calibration(good, "0" * 64)
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(CalibrationError, match=r"broken\.json: not a calibration file"):
        read_calibration(tmp_path / "broken.json", None)
    with pytest.raises(CalibrationError, match=r"missing\.json: no such calibration file"):
        read_calibration(tmp_path / "missing.json", None)
    write_json(tmp_path / "negative.json", {**json.loads(good.read_text()), "temperature": -1})
    with pytest.raises(CalibrationError, match=r"negative\.json: 'temperature' must be a positive"):
        read_calibration(tmp_path / "negative.json", None)



def test_evaluate_stage_writes_calibration_coverage_reliability_and_onnx_cost(
        evaluated, tmp_path, capsys):
    """The shared evaluate run (conftest.evaluated: an over-confident head on noise)."""
    checkpoint, prepared = evaluated / "model.pt", evaluated / "prepared"
    metrics = evaluated / "metrics"
    cost = json.loads((metrics / "eval.json").read_text())["cost"]
    assert {"cpu_latency_ms", "cpu_images_per_s", "onnxruntime_latency_ms",
            "onnxruntime_images_per_s"} <= set(cost), cost

    calibration = json.loads((metrics / "eval.json").read_text())["calibration"]
    record = json.loads((metrics / "calibration.json").read_text())
    assert record["checkpoint_sha256"] == file_sha256(checkpoint)  # the stage left it as it was
    assert record["temperature"] == calibration["temperature"] and calibration["temperature"] > 1
    assert calibration["fitted_on"] == "val split" and calibration["fit_images"] == 30
    assert calibration["bins"] == 15
    # the report is of the test split, computed from the model's own logits
    test = np.load(prepared / "test_images.npy")
    labels = np.load(prepared / "test_labels.npy")
    with torch.no_grad():
        logits = load_checkpoint(checkpoint).model(
            torch.from_numpy(test).permute(0, 3, 1, 2)).numpy()
    temperature = calibration["temperature"]
    assert calibration["nll_before"] == pytest.approx(nll(logits, labels), rel=1e-4)
    assert calibration["nll_after"] == pytest.approx(nll(logits, labels, temperature), rel=1e-4)
    assert calibration["nll_after"] < calibration["nll_before"]
    assert calibration["ece_after"] == pytest.approx(
        expected_calibration_error(softmax(logits, temperature), labels), abs=1e-4)
    assert calibration["ece_before"] == pytest.approx(
        expected_calibration_error(softmax(logits), labels), abs=1e-4)

    with (metrics / "coverage.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["min_confidence", "coverage", "accuracy", "kept"]
    assert float(rows[-1]["coverage"]) == 1.0
    assert float(rows[-1]["accuracy"]) == pytest.approx((logits.argmax(1) == labels).mean())
    confidence = softmax(logits, temperature).max(1)
    for row in rows:
        assert (confidence > float(row["min_confidence"])).sum() == int(row["kept"])
    assert (metrics / "reliability.png").read_bytes()[:4] == b"\x89PNG"

    cost = json.loads((metrics / "eval.json").read_text())["cost"]
    assert cost["onnxruntime_latency_ms"] > 0 and cost["onnxruntime_images_per_s"] > 0
    # the model learnt from the val split the temperature was fitted on: the note says so in
    # calibration.json and on the stage's line, and eval.json holds no sentence (test_cost)
    note = calibration_note(temperature, False, "val split", trained_on_val=True)
    assert note and note.startswith("the model learnt from the val split") and record["note"] == note
    log = (evaluated / "evaluate.log").read_text()
    assert "ECE" in log and f"evaluate: calibration: {note}\n" in log

    # predict applies the file's temperature: probabilities = softmax(logits / T)
    photos = make_image_folder(tmp_path / "photos", {"a": 2})
    assert main(["predict", str(checkpoint), str(photos), "--json", "--top-k", "3",
                 "--calibration", str(metrics / "calibration.json")]) == 0
    results = json.loads(capsys.readouterr().out)
    assert main(["predict", str(checkpoint), str(photos), "--json", "--top-k", "3"]) == 0
    plain = json.loads(capsys.readouterr().out)
    for calibrated, raw in zip(results, plain):
        raw_probs = np.array([t["prob"] for t in raw["top"]])
        expected = softmax(np.log(raw_probs)[None], temperature)[0]
        assert [t["prob"] for t in calibrated["top"]] == pytest.approx(expected, abs=1e-6)
        assert [t["class"] for t in calibrated["top"]] == [t["class"] for t in raw["top"]]


def test_predict_refuses_a_calibration_fitted_for_another_checkpoint(tmp_path, capsys):
    model = build_model("resnet18", "none", 2)
    save_checkpoint(tmp_path / "model.pt", model, "resnet18", ["a", "b"], 32, 0.875, {})
    calibration = tmp_path / "calibration.json"
    write_json(calibration, calibration_record(2.0, "other.pt", "f" * 64, "val split", 5))
    photos = make_image_folder(tmp_path / "photos", {"a": 1})
    assert main(["predict", str(tmp_path / "model.pt"), str(photos),
                 "--calibration", str(calibration)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{calibration}: fitted for another model" in err
