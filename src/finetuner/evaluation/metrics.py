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
    still a mistake, in the recall of the true class."""
    indices = list(range(len(class_names)))
    present = sorted(set(np.asarray(labels).tolist()))
    report = classification_report(labels, predicted, labels=indices, target_names=class_names,
                                   output_dict=True, zero_division=0)
    per_class = {name: {"precision": report[name]["precision"], "recall": report[name]["recall"],
                        "f1": report[name]["f1-score"], "support": int(report[name]["support"])}
                 for name in class_names}
    return {"accuracy": float(accuracy_score(labels, predicted)),
            "macro_f1": float(f1_score(labels, predicted, labels=present or indices,
                                       average="macro", zero_division=0)),
            "per_class": per_class,
            "confusion": _confusion(labels, predicted, indices)}


def _confusion(labels: np.ndarray, predicted: np.ndarray, indices: list[int]) -> list[list[int]]:
    with warnings.catch_warnings():  # one class (evaluating a one-class folder): a 1 x 1 matrix
        warnings.filterwarnings("ignore", "A single label was found", UserWarning)
        return confusion_matrix(labels, predicted, labels=indices).tolist()
