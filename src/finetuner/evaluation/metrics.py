"""Predictions of a model over stored images, and the metrics computed from them."""
from __future__ import annotations

import warnings

import numpy as np
import torch
from sklearn.metrics import accuracy_score, classification_report, confusion_matrix, f1_score

from ..models import StagedClassifier


@torch.no_grad()
def predict_logits(model: StagedClassifier, images: np.ndarray | torch.Tensor,
                   device: torch.device, batch_size: int = 64) -> np.ndarray:
    """float32 logits (N, classes) for uint8 images (N, H, W, 3), e.g. a memory map: read one
    batch at a time, never copied whole."""
    model.eval().to(device)
    out = []
    for start in range(0, len(images), batch_size):
        batch = torch.as_tensor(np.array(images[start:start + batch_size]))  # a writable copy
        batch = batch.to(device).permute(0, 3, 1, 2)
        out.append(model(batch).float().cpu())
    return (torch.cat(out).numpy() if out
            else np.zeros((0, model.num_classes), np.float32))


def predict_arrays(model: StagedClassifier, images: np.ndarray | torch.Tensor,
                   device: torch.device, batch_size: int = 64) -> np.ndarray:
    """Class probabilities (N, classes) for uint8 images (N, H, W, 3), as :func:`predict_logits`."""
    return torch.from_numpy(predict_logits(model, images, device, batch_size)).softmax(1).numpy()


def classification_metrics(labels: np.ndarray, predicted: np.ndarray,
                           class_names: list[str]) -> dict:
    """accuracy, macro-F1, the per-class report and the confusion matrix.

    Macro-F1 averages the classes that have images in ``labels`` (as ``finetuner evaluate``
    does): a class with none, too few photos for the test split, has no F1 to count (it counted
    0 once, 0.22 for a model right on every image of the other classes); predicting it is
    still a mistake, in the recall of the true class.  In ``per_class`` such a class has
    ``recall`` and ``f1`` None (JSON null: not measured, which 0.0 would misstate in
    ``dvc exp show``), and ``precision`` None too unless the model predicted it (then 0.0)."""
    indices = list(range(len(class_names)))
    present = sorted(set(np.asarray(labels).tolist()))
    report = classification_report(labels, predicted, labels=indices, target_names=class_names,
                                   output_dict=True, zero_division=0)
    predicted_any = set(np.asarray(predicted).tolist())
    per_class = {name: _class_row(report[name], i in predicted_any)
                 for i, name in enumerate(class_names)}
    return {"accuracy": float(accuracy_score(labels, predicted)),
            "macro_f1": float(f1_score(labels, predicted, labels=present or indices,
                                       average="macro", zero_division=0)),
            "per_class": per_class,
            "confusion": _confusion(labels, predicted, indices)}


def _class_row(row: dict, predicted: bool) -> dict:
    """One class's precision, recall, F1 and support; None where there is nothing to measure
    (no image of the class to recall; never predicted, so no precision)."""
    tested = row["support"] > 0
    return {"precision": row["precision"] if tested or predicted else None,
            "recall": row["recall"] if tested else None,
            "f1": row["f1-score"] if tested else None, "support": int(row["support"])}


def _confusion(labels: np.ndarray, predicted: np.ndarray, indices: list[int]) -> list[list[int]]:
    with warnings.catch_warnings():  # one class (evaluating a one-class folder): a 1 x 1 matrix
        warnings.filterwarnings("ignore", "A single label was found", UserWarning)
        return confusion_matrix(labels, predicted, labels=indices).tolist()
