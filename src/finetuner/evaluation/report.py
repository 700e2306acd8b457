"""What the evaluate stage computes of a checkpoint, and the files it writes.

:func:`evaluate_checkpoint` scores the checkpoint on the images given
(:func:`finetuner.data.folders.scored_images` chooses them: the test split, the labelled folder
``evaluate.test_dir``, or, with ``data.test_fraction: 0``, the val split, marked as no honest
estimate), fits the temperature (on a cross-validated probe's out-of-fold predictions, else on
val), and measures the cost; :func:`write_report` writes ``eval.json``, ``calibration.json``,
``per_class.json``, the predictions, the coverage curve and the pictures, each whole or not
at all (:mod:`finetuner.io`); :func:`summary_line` is the stage's last line.

Invariants: the images scored never chose or trained the model unless their ``source`` says
so (``chose_model``); the temperature is never fitted on the images it is scored on unless the
note says so.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..io import write_csv, write_json
from ..models import member_names
from ..models.checkpoint import check_training_record
from .calibration import (calibration_record, calibration_scores, coverage_curve, file_sha256,
                          fit_temperature, reliability, softmax)
from .cost import BUSY, cost_report, onnxruntime_cost
from .intervals import metric_intervals
from .metrics import classification_metrics, predict_logits
from .plots import confusion_png, curves_png, mistakes_png, reliability_png

if TYPE_CHECKING:
    from ..models.checkpoint import TrainingRecord

OUT_OF_FOLD = "out-of-fold predictions of train + val (cross-validation)"


@dataclass(frozen=True)
class Evaluation:
    """A checkpoint scored: the images and labels (in the order scored), its logits and
    calibrated probabilities, the metrics with their intervals, the calibration, the cost."""
    class_names: list[str]
    images: np.ndarray          # uint8 (N, H, W, 3)
    labels: np.ndarray          # (N,) class indices
    logits: np.ndarray          # (N, classes)
    probabilities: np.ndarray   # softmax(logits / temperature)
    source: str                 # "test split", "folder ...", or VAL_SOURCE
    metrics: dict               # classification_metrics
    interval: dict              # metric_intervals
    calibration: dict           # eval.json's calibration object
    cost: dict
    info: TrainingRecord        # the checkpoint's training record
    near_duplicates: dict | None
    # what to keep in mind about the temperature (calibration_note): calibration.json and the
    # stage's line, not eval.json, where `dvc metrics diff` would pad every row to its length
    calibration_note: str | None = None
    paths: list[str] | None = None  # each scored image's file (ScoredImages.paths)
    arch: str = ""                  # the checkpoint's (an ensemble's: its members, a+b)

    @property
    def predicted(self) -> np.ndarray:
        return self.logits.argmax(1)


def evaluate_checkpoint(checkpoint, data, scored, model_path: str | Path, batch_size: int,
                        device) -> Evaluation:
    """Score ``checkpoint`` (its model on ``device``) on ``scored`` (a
    :class:`finetuner.data.folders.ScoredImages`); ``data``: the prepared folder (its val
    split, for the temperature)."""
    check_training_record(model_path, checkpoint.info)  # the stage checked; others may not have
    images, labels, source = scored.images, scored.labels, scored.source
    logits = predict_logits(checkpoint.model, images, device, batch_size)
    predicted = logits.argmax(1)
    info = checkpoint.info
    fit_logits, fit_labels, fitted_on = calibration_set(checkpoint, data, logits,
                                                         scored.chose_model, device, batch_size)
    temperature = fit_temperature(fit_logits, fit_labels)
    trained_on_val = "val" in info.get("strategy", {}).get("trained_on", {})
    note = calibration_note(temperature, scored.chose_model, fitted_on, trained_on_val)
    scores, probabilities = calibration_scores(logits, labels, temperature)
    cost = cost_report(checkpoint.model, checkpoint.image_size,
                       info["history"][-1]["frozen_stages"], model_path, info["train_seconds"])
    cost.update(onnx_cost(checkpoint.model, checkpoint.image_size))
    busy = busy_warning(cost)
    if busy:
        print(f"evaluate: warning: {busy}")
    return Evaluation(
        checkpoint.class_names, images, labels, logits, probabilities, source,
        classification_metrics(labels, predicted, checkpoint.class_names),
        metric_intervals(labels, predicted, len(checkpoint.class_names)),
        {"temperature": temperature, "fitted_on": fitted_on,
         "fit_images": int(len(fit_labels)), **scores},
        cost, info, data.near_duplicates, note, scored.paths, checkpoint.arch)


def eval_record(e: Evaluation) -> dict:
    """``metrics/eval.json``."""
    info, strategy = e.info, e.info.get("strategy", {})
    return {
        "accuracy": e.metrics["accuracy"], "accuracy_ci95": e.interval["accuracy"],
        "macro_f1": e.metrics["macro_f1"], "macro_f1_ci95": e.interval["macro_f1"],
        "ci95": e.interval["method"],
        "best_val_acc": info["best_val_acc"], "train_seconds": round(info["train_seconds"], 1),
        "epochs_run": info["epochs_run"], "best_epoch": info["best_epoch"],
        "test_images": int(len(e.labels)), "evaluated_on": e.source,
        "strategy": strategy.get("chosen", "finetune"), "refit": strategy.get("refit", False),
        "refit_problem": strategy.get("refit_problem"),
        "probe_drop": strategy.get("probe_drop"),  # an LP-FT that fell below its probe on val
        "trained_images": sum(strategy.get("trained_on", {}).values()) or None,
        "cross_validation": _cv_summary(strategy.get("cross_validation")),
        "near_duplicates": e.near_duplicates,  # groups the split kept together (or not)
        "calibration": e.calibration, "cost": e.cost}


def write_report(out: Path, e: Evaluation, model_path: str | Path, gallery_size: int) -> None:
    """Every file of the evaluate stage into ``out`` (see the module's doc)."""
    c, names, predicted = e.calibration, e.class_names, e.predicted
    write_json(out / "eval.json", eval_record(e))
    write_json(out / "calibration.json", calibration_record(
        c["temperature"], model_path, file_sha256(model_path), c["fitted_on"], c["fit_images"],
        e.calibration_note))
    write_json(out / "per_class.json", e.metrics["per_class"])
    paths = e.paths or [""] * len(e.labels)
    write_csv(out / "test_predictions.csv", ["path", "actual", "predicted", "confidence"],
              [(path, names[a], names[p], f"{e.probabilities[i, p]:.4f}")
               for i, (path, a, p) in enumerate(zip(paths, e.labels, predicted))])
    confusion_png(out / "confusion.png", e.metrics["confusion"], names, e.source)
    strategy = e.info.get("strategy", {})
    curves_png(out / "curves.png", e.info["history"], strategy.get("cross_validation"),
               member_names(e.arch), strategy.get("chosen") == "probe")
    mistakes_png(out / "mistakes.png", e.images, e.labels, e.probabilities, names, gallery_size,
                 e.source, e.paths)
    reliability_png(out / "reliability.png", reliability(softmax(e.logits), e.labels),
                    reliability(e.probabilities, e.labels), c["ece_before"], c["ece_after"],
                    c["temperature"], e.source)
    write_csv(out / "coverage.csv", ["min_confidence", "coverage", "accuracy", "kept"],
              [(r["min_confidence"], r["coverage"], r["accuracy"], r["kept"])
               for r in coverage_curve(e.probabilities, e.labels)])


def summary_line(e: Evaluation, out: Path) -> str:
    """The stage's line: accuracy with its interval, calibration, cost, where it went."""
    c, cost = e.calibration, e.cost
    fitted = ("no temperature fitted" if c["temperature"] is None
              else f"temperature {c['temperature']:.3g}")
    onnx = (f", ONNX Runtime {cost['onnxruntime_latency_ms']:.1f} ms"
            if "onnxruntime_latency_ms" in cost else "")
    low, high = e.interval["accuracy"]["low"], e.interval["accuracy"]["high"]
    return (f"evaluate: accuracy {e.metrics['accuracy']:.4f} (95 % {low:.3f}-{high:.3f}), "
            f"macro-F1 {e.metrics['macro_f1']:.4f} on {len(e.labels)} images of the "
            f"{e.source}{untested_note(e.metrics['per_class'])}; "
            f"ECE {c['ece_before']:.4f} -> {c['ece_after']:.4f} "
            f"({fitted} on the {c['fitted_on']}); {cost['gflops']:.3f} GFLOPs, "
            f"{cost['cpu_latency_ms']:.1f} ms per image on CPU{onnx} -> {out}")


def _cv_summary(record: dict | None) -> dict | None:
    """What the cross-validated probe chose (eval.json): the folds (0: none, a class of one
    image), out-of-fold scores, each member's C and the stages it reads (``all`` or ``last``;
    None in checkpoints from before the choice).  The checkpoint's ``selection`` sentence is
    the finetune stage's line, not a metric: `dvc metrics diff` pads rows to the longest string."""
    if not record:
        return None
    return {"folds": record.get("folds"), "cv_acc": record["cv_acc"],
            "cv_loss": record["cv_loss"], "C": [m["C"] for m in record["members"]],
            "layers": [m.get("layers") for m in record["members"]]}


def calibration_set(checkpoint, data, logits: np.ndarray, scored_val: bool, device,
                    batch_size: int) -> tuple[np.ndarray, np.ndarray, str]:
    """(logits, labels, what they are) to fit the temperature on: a cross-validated probe's
    out-of-fold predictions (no image predicted by a head that learnt from it), else val
    (``logits`` when ``scored_val``: the val split is what was scored)."""
    oof = checkpoint.info.get("out_of_fold")
    if oof is not None:
        return oof["log_probs"].numpy(), oof["labels"].numpy(), OUT_OF_FOLD
    val_logits = (logits if scored_val else  # scored on val already
                  predict_logits(checkpoint.model, data.images["val"], device, batch_size))
    return val_logits, data.labels["val"], "val split"


def calibration_note(temperature: float | None, scored_val: bool, fitted_on: str,
                     trained_on_val: bool) -> str | None:
    """What to keep in mind about the fitted temperature, if anything."""
    if temperature is None:
        return (f"no temperature fitted: every prediction of the {fitted_on} is right (or "
                "there are none), so no finite temperature minimises its NLL; probabilities "
                "are left as they are")
    if scored_val and fitted_on == OUT_OF_FOLD:
        return ("scored on the val split, which trained the model and whose out-of-fold "
                "predictions the temperature was fitted on: ECE and NLL after are optimistic")
    if fitted_on == OUT_OF_FOLD:
        return None
    if scored_val:
        return ("fitted and scored on the same val split: ECE and NLL after are optimistic")
    if trained_on_val:
        return ("the model learnt from the val split the temperature was fitted on: the "
                "temperature is likely too low (too confident on new photos)")
    return None


def busy_warning(cost: dict) -> str | None:
    """What to say when ``cost``'s timings were taken on a busy CPU (None: they were not)."""
    if cost["cpu_share"] >= BUSY:
        return None
    return (f"the CPU was busy while the model was timed (it got {cost['cpu_share']:.0%} of "
            f"its {cost['cpu_threads']} thread(s)' time: another process, or a CPU quota): "
            "cost's timings are slower than the model on idle cores; to compare runs, `dvc "
            "repro -f evaluate` when nothing else runs")


def onnx_cost(model, image_size: int) -> dict:
    """ONNX Runtime's speed for the cost object; a model the exporter cannot handle is reported
    there, not an error: the accuracy matters more than the timing."""
    try:
        return onnxruntime_cost(model, image_size)
    except Exception as error:  # exporter or runtime limits of some architecture
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        print(f"evaluate: warning: no ONNX Runtime timing: {type(error).__name__}: {reason}")
        return {"onnxruntime_error": f"{type(error).__name__}: {reason}"}


def untested_note(per_class: dict) -> str:
    """" (no image of a, b: not scored)" for the classes the scored images lack, else ""."""
    untested = [name for name, row in per_class.items() if row["support"] == 0]
    return f" (no image of {', '.join(untested)}: not scored)" if untested else ""
