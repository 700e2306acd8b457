"""Stage evaluate: the checkpoint on the test split (or on the labelled folder
``evaluate.test_dir``) -> metrics JSON, predictions, pictures; a temperature fitted on the val
split (``metrics/calibration.json``, read by ``finetuner predict/export --calibration``), the
calibration before and after it, and the coverage-accuracy curve of the reject option.

    python stages/evaluate.py MODEL PREPARED_DIR METRICS_DIR

Errors in params, the checkpoint or the inputs are one line naming the param or file; every
output is written whole or not at all.
"""
from pathlib import Path

import numpy as np

import sys

from finetuner.data.folders import labelled_views
from finetuner.data.images import ImageError
from finetuner.data.prepared import InputError, load_prepared
from finetuner.data.scan import DatasetError
from finetuner.evaluation.calibration import (calibration_record, calibration_scores,
                                              coverage_curve, file_sha256, fit_temperature,
                                              reliability, softmax)
from finetuner.evaluation.cost import cost_report, onnxruntime_cost
from finetuner.evaluation.intervals import metric_intervals
from finetuner.evaluation.metrics import classification_metrics, predict_logits
from finetuner.evaluation.plots import confusion_png, curves_png, mistakes_png, reliability_png
from finetuner.io import write_csv, write_json
from finetuner.models.checkpoint import CheckpointError, load_checkpoint
from finetuner.params import load_params
from finetuner.runtime import resolve_device, reuse_freed_memory, set_threads
from finetuner.stage import run_stage


def main(model_path: str, prepared_dir: str, metrics_dir: str) -> None:
    params = load_params()
    set_threads(params.threads)
    reuse_freed_memory()
    device = resolve_device(params.device)
    out = Path(metrics_dir)
    checkpoint = load_checkpoint(model_path, device)
    data = load_prepared(prepared_dir)
    images, labels, source = test_images(params.evaluate.test_dir, data, checkpoint)
    logits = predict_logits(checkpoint.model, images, device, params.evaluate.batch_size)
    predicted = logits.argmax(1)
    metrics = classification_metrics(labels, predicted, checkpoint.class_names)
    interval = metric_intervals(labels, predicted, len(checkpoint.class_names))
    info = checkpoint.info
    strategy = info.get("strategy", {})
    fit_logits, fit_labels, fitted_on = calibration_set(checkpoint, data, logits, source,
                                                         device, params.evaluate.batch_size)
    temperature = fit_temperature(fit_logits, fit_labels)
    note = calibration_note(temperature, source, fitted_on,
                            "val" in strategy.get("trained_on", {}))
    calibration, probabilities = calibration_scores(logits, labels, temperature)
    calibration = {"temperature": temperature, "fitted_on": fitted_on,
                   "fit_images": int(len(fit_labels)), **calibration, "note": note}
    cost = cost_report(checkpoint.model, checkpoint.image_size,
                       info["history"][-1]["frozen_stages"], model_path, info["train_seconds"])
    cost.update(onnx_cost(checkpoint.model, checkpoint.image_size))
    write_json(out / "eval.json", {
        "accuracy": metrics["accuracy"], "accuracy_ci95": interval["accuracy"],
        "macro_f1": metrics["macro_f1"], "macro_f1_ci95": interval["macro_f1"],
        "ci95": interval["method"],
        "best_val_acc": info["best_val_acc"], "train_seconds": round(info["train_seconds"], 1),
        "epochs_run": info["epochs_run"], "best_epoch": info["best_epoch"],
        "test_images": int(len(labels)), "evaluated_on": source,
        "strategy": strategy.get("chosen", "finetune"), "refit": strategy.get("refit", False),
        "refit_problem": strategy.get("refit_problem"),
        "probe_drop": strategy.get("probe_drop"),  # an LP-FT that fell below its probe on val
        "trained_images": sum(strategy.get("trained_on", {}).values()) or None,
        "cross_validation": _cv_summary(strategy.get("cross_validation")),
        "near_duplicates": data.near_duplicates,  # groups the split kept together (or not)
        "calibration": calibration, "cost": cost})
    write_json(out / "calibration.json", calibration_record(
        temperature, model_path, file_sha256(model_path), fitted_on, int(len(fit_labels)),
        note))
    write_json(out / "per_class.json", metrics["per_class"])
    names = checkpoint.class_names
    write_csv(out / "test_predictions.csv", ["actual", "predicted"],
              [(names[a], names[p]) for a, p in zip(labels, predicted)])
    confusion_png(out / "confusion.png", metrics["confusion"], names)
    curves_png(out / "curves.png", info["history"])
    mistakes_png(out / "mistakes.png", images, labels, probabilities, names,
                 params.evaluate.gallery_size)
    reliability_png(out / "reliability.png", reliability(softmax(logits), labels),
                    reliability(probabilities, labels), calibration["ece_before"],
                    calibration["ece_after"], temperature)
    write_csv(out / "coverage.csv", ["min_confidence", "coverage", "accuracy", "kept"],
              [(r["min_confidence"], r["coverage"], r["accuracy"], r["kept"])
               for r in coverage_curve(probabilities, labels)])
    fitted = "no temperature fitted" if temperature is None else f"temperature {temperature:.3g}"
    onnx = (f", ONNX Runtime {cost['onnxruntime_latency_ms']:.1f} ms"
            if "onnxruntime_latency_ms" in cost else "")
    low, high = interval["accuracy"]["low"], interval["accuracy"]["high"]
    untested = untested_note(metrics["per_class"])
    print(f"evaluate: accuracy {metrics['accuracy']:.4f} (95 % {low:.3f}-{high:.3f}), "
          f"macro-F1 {metrics['macro_f1']:.4f} on {len(labels)} images of the {source}"
          f"{untested}; "
          f"ECE {calibration['ece_before']:.4f} -> {calibration['ece_after']:.4f} "
          f"({fitted} on the {fitted_on}); {cost['gflops']:.3f} GFLOPs, "
          f"{cost['cpu_latency_ms']:.1f} ms per image on CPU{onnx} -> {out}")
    if note:
        print(f"evaluate: calibration: {note}")


OUT_OF_FOLD = "out-of-fold predictions of train + val (cross-validation)"


def _cv_summary(record: dict | None) -> dict | None:
    """What the cross-validated probe chose (eval.json): out-of-fold scores, each member's C
    and the stages it reads (``all`` or ``last``; None in checkpoints from before the choice)."""
    if not record:
        return None
    return {"selection": record["selection"], "cv_acc": record["cv_acc"],
            "cv_loss": record["cv_loss"], "C": [m["C"] for m in record["members"]],
            "layers": [m.get("layers") for m in record["members"]]}


def calibration_set(checkpoint, data, logits: np.ndarray, source: str, device,
                    batch_size: int) -> tuple[np.ndarray, np.ndarray, str]:
    """(logits, labels, what they are) to fit the temperature on: a cross-validated probe's
    out-of-fold predictions (no image predicted by a head that learnt from it), else val."""
    oof = checkpoint.info.get("out_of_fold")
    if oof is not None:
        return oof["log_probs"].numpy(), oof["labels"].numpy(), OUT_OF_FOLD
    val_logits = (logits if source == VAL_SOURCE else  # scored on val already
                  predict_logits(checkpoint.model, data.images["val"], device, batch_size))
    return val_logits, data.labels["val"], "val split"


def calibration_note(temperature: float | None, source: str, fitted_on: str,
                     trained_on_val: bool) -> str | None:
    """What to keep in mind about the fitted temperature, if anything."""
    if temperature is None:
        return (f"no temperature fitted: every prediction of the {fitted_on} is right (or "
                "there are none), so no finite temperature minimises its NLL; probabilities "
                "are left as they are")
    if fitted_on == OUT_OF_FOLD:
        return None
    if source == VAL_SOURCE:
        return ("fitted and scored on the same val split: ECE and NLL after are optimistic")
    if trained_on_val:
        return ("the model learnt from the val split the temperature was fitted on: the "
                "temperature is likely too low (too confident on new photos)")
    return None


def onnx_cost(model, image_size: int) -> dict:
    """ONNX Runtime's speed for the cost object; a model the exporter cannot handle is reported
    there, not an error: the accuracy matters more than the timing."""
    try:
        return onnxruntime_cost(model, image_size)
    except Exception as error:  # exporter or runtime limits of some architecture
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        print(f"evaluate: warning: no ONNX Runtime timing: {type(error).__name__}: {reason}")
        return {"onnxruntime_error": f"{type(error).__name__}: {reason}"}


VAL_SOURCE = "val split (it chose the model: not an honest estimate)"


def test_images(test_dir: str, data, checkpoint) -> tuple[np.ndarray, np.ndarray, str]:
    """(uint8 images, labels, where from): ``test_dir`` when set, else the test split, else
    (``data.test_fraction: 0``) the val split, marked as no honest estimate."""
    if test_dir:
        images, labels, skipped = labelled_views(Path(test_dir), checkpoint.class_names,
                                                 checkpoint.image_size, checkpoint.crop_pct)
        for path, reason in skipped:
            print(f"evaluate: skipped {path}: {reason}", file=sys.stderr)
        return images, labels, f"folder {test_dir}"
    if len(data.labels["test"]) == 0:
        print("evaluate: warning: the test split is empty (data.test_fraction: 0) and "
              "evaluate.test_dir is not set; scoring the val split, which chose the model "
              "(and trained it, with train.refit): NOT an honest estimate")
        return np.asarray(data.images["val"]), data.labels["val"], VAL_SOURCE
    return np.asarray(data.images["test"]), data.labels["test"], "test split"


def untested_note(per_class: dict) -> str:
    """" (no image of a, b: not scored)" for the classes the scored images lack, else ""."""
    untested = [name for name, row in per_class.items() if row["support"] == 0]
    return f" (no image of {', '.join(untested)}: not scored)" if untested else ""


if __name__ == "__main__":
    run_stage("evaluate", main, "MODEL PREPARED_DIR METRICS_DIR",
              (CheckpointError, InputError, ImageError, DatasetError))
