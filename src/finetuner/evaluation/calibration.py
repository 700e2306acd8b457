"""Calibrated confidence: temperature scaling, its measures, and the reject option's curve.

Temperature scaling (Guo et al. 2017) divides the logits by one scalar ``T`` fitted on the val
split to minimise the negative log-likelihood: the predicted class never changes, only how sure
the probabilities say the model is. The evaluate stage fits it, reports NLL and the expected
calibration error (ECE, 15 equal-width confidence bins) before and after on the test split, and
writes ``metrics/calibration.json``, which ``finetuner predict`` and ``finetuner export`` read
with ``--calibration`` (the checkpoint is the finetune stage's output; evaluate never rewrites
it). That file names the checkpoint by its SHA-256, so it is never applied to another model.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

BINS = 15
T_RANGE = (0.05, 20.0)  # the fit stays inside; beyond it the val split is too small to say
CALIBRATION_FORMAT = "finetuner-calibration/1"


class CalibrationError(ValueError):
    """A calibration file that cannot be used: one line naming it."""


def softmax(logits: np.ndarray, temperature: float | None = 1.0) -> np.ndarray:
    """Probabilities (float64) of ``logits / temperature``; ``None`` means 1 (not calibrated)."""
    z = np.asarray(logits, dtype=np.float64) / (temperature or 1.0)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float | None = 1.0) -> float:
    """Mean negative log-likelihood of ``labels`` under ``softmax(logits / temperature)``."""
    z = torch.as_tensor(np.asarray(logits, dtype=np.float64)) / (temperature or 1.0)
    return float(torch.nn.functional.cross_entropy(z, torch.as_tensor(labels, dtype=torch.long)))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float | None:
    """The ``T`` in :data:`T_RANGE` that minimises ``nll(logits, labels, T)`` (L-BFGS on log T).

    None when there is no best ``T`` to find: no examples, or every prediction right (then the
    NLL only falls as ``T`` -> 0, and a tiny ``T`` would make every later mistake look certain).
    Rows with a logit that is not finite are left out.
    """
    logits, labels = np.asarray(logits, dtype=np.float64), np.asarray(labels)
    finite = np.isfinite(logits).all(1) if logits.ndim == 2 else np.ones(len(labels), bool)
    logits, labels = logits[finite], labels[finite]  # a row never predicted teaches nothing
    if len(labels) == 0 or (logits.argmax(1) == labels).all():
        return None
    z = torch.as_tensor(logits)
    y = torch.as_tensor(labels, dtype=torch.long)
    low, high = np.log(T_RANGE[0]), np.log(T_RANGE[1])
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=1.0, max_iter=200, tolerance_grad=1e-10,
                                  tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.clamp(low, high).exp(), y)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().clamp(low, high).exp())


def calibration_scores(logits: np.ndarray, labels: np.ndarray,
                       temperature: float | None) -> tuple[dict, np.ndarray]:
    """NLL and ECE (``BINS`` bins) of ``logits`` before and after ``temperature``, and the
    calibrated probabilities."""
    before, after = softmax(logits), softmax(logits, temperature)
    return {"bins": BINS,
            "nll_before": nll(logits, labels), "nll_after": nll(logits, labels, temperature),
            "ece_before": expected_calibration_error(before, labels),
            "ece_after": expected_calibration_error(after, labels)}, after


def _bin_of(confidence: np.ndarray, bins: int) -> np.ndarray:
    """Bin k holds confidences in (k / bins, (k + 1) / bins]."""
    return np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)


def reliability(probabilities: np.ndarray, labels: np.ndarray, bins: int = BINS) -> list[dict]:
    """Per confidence bin: its range, how many predictions, their mean confidence and accuracy."""
    confidence = probabilities.max(1)
    correct = probabilities.argmax(1) == np.asarray(labels)
    index = _bin_of(confidence, bins)
    rows = []
    for k in range(bins):
        member = index == k
        count = int(member.sum())
        rows.append({"lower": k / bins, "upper": (k + 1) / bins, "count": count,
                     "confidence": float(confidence[member].mean()) if count else None,
                     "accuracy": float(correct[member].mean()) if count else None})
    return rows


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray,
                               bins: int = BINS) -> float:
    """Sum over confidence bins of (share of predictions) x |accuracy - mean confidence|."""
    total = len(labels)
    if total == 0:
        return 0.0
    return float(sum(r["count"] / total * abs(r["accuracy"] - r["confidence"])
                     for r in reliability(probabilities, labels, bins) if r["count"]))


def coverage_curve(probabilities: np.ndarray, labels: np.ndarray,
                   max_points: int = 200) -> list[dict]:
    """Accuracy on the predictions kept against the fraction kept, as the threshold moves.

    ``predict --min-confidence P`` keeps a prediction when its top probability is above ``P``.
    Given as ``P``, a row's ``min_confidence`` keeps exactly its ``kept`` most confident
    predictions, whose accuracy is ``accuracy``; ``coverage`` = kept / all. Rows by rising
    coverage, the last one ``P = 0`` (all kept); at most ``max_points`` of them, evenly spread
    over the distinct confidence levels.
    """
    confidence = probabilities.max(1)
    correct = probabilities.argmax(1) == np.asarray(labels)
    if len(confidence) == 0:
        return []
    order = np.argsort(-confidence, kind="stable")
    confidence, correct = confidence[order], correct[order]
    levels = np.unique(confidence)[::-1]                     # distinct confidences, high to low
    kept = np.searchsorted(-confidence, -levels, side="right")  # how many are >= each level
    right = np.cumsum(correct)
    thresholds = np.append(levels[1:], 0.0)                  # P in [next level, level) keeps them
    rows = np.arange(len(levels))
    if len(rows) > max_points:
        spread = np.linspace(0, len(levels) - 1, max_points).round().astype(int)
        rows = np.unique(np.append(spread, len(levels) - 1))
    return [{"min_confidence": float(thresholds[i]), "coverage": float(kept[i] / len(confidence)),
             "accuracy": float(right[kept[i] - 1] / kept[i]), "kept": int(kept[i])} for i in rows]


# --- the calibration file ------------------------------------------------------------------------

def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def calibration_record(temperature: float | None, checkpoint: str | Path, checkpoint_sha256: str,
                       fitted_on: str, images: int, note: str | None = None) -> dict:
    """The content of ``metrics/calibration.json``."""
    return {"format": CALIBRATION_FORMAT, "temperature": temperature,
            "checkpoint": str(checkpoint), "checkpoint_sha256": checkpoint_sha256,
            "fitted_on": fitted_on, "images": images, "note": note}


def read_calibration(path: str | Path, checkpoint_sha256: str | None) -> float | None:
    """The temperature in the calibration file ``path`` (None: fitting found none), after
    checking that it was fitted for the model whose checkpoint has ``checkpoint_sha256``."""
    path = Path(path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CalibrationError(f"{path}: no such calibration file (the evaluate stage writes "
                               "metrics/calibration.json)") from None
    except (OSError, ValueError) as error:
        raise CalibrationError(f"{path}: not a calibration file ({type(error).__name__}: "
                               f"{str(error)[:200]})") from None
    if not isinstance(record, dict) or record.get("format") != CALIBRATION_FORMAT:
        raise CalibrationError(f"{path}: not a {CALIBRATION_FORMAT} file (the evaluate stage "
                               "writes metrics/calibration.json)")
    temperature = record.get("temperature")
    if temperature is not None and (isinstance(temperature, bool)
                                    or not isinstance(temperature, (int, float))
                                    or not temperature > 0):
        raise CalibrationError(f"{path}: 'temperature' must be a positive number or null, "
                               f"not {temperature!r}")
    if checkpoint_sha256 is not None and record.get("checkpoint_sha256") != checkpoint_sha256:
        raise CalibrationError(f"{path}: fitted for another model (checkpoint SHA-256 "
                               f"{str(record.get('checkpoint_sha256'))[:12]}..., this model's is "
                               f"{checkpoint_sha256[:12]}...); rerun the evaluate stage "
                               "(dvc repro) for this checkpoint")
    return None if temperature is None else float(temperature)
