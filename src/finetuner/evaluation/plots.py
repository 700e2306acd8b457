"""PNG pictures: confusion matrix, training curves, a gallery of the worst mistakes."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..io import atomic_path  # noqa: E402


def _save(figure, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    plt.close(figure)


def confusion_png(path: str | Path, confusion: list[list[int]], class_names: list[str]) -> None:
    matrix = np.asarray(confusion)
    n = len(class_names)
    side = min(12.0, 2.5 + 0.5 * n)
    figure, ax = plt.subplots(figsize=(side, side))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(n), class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix (test split)")
    high = matrix.max() / 2 if matrix.size else 0
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center",
                    color="white" if matrix[i, j] > high else "black", fontsize=8)
    figure.tight_layout()
    _save(figure, path)


def curves_png(path: str | Path, history: list[dict]) -> None:
    epochs = [h["epoch"] for h in history]
    figure, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for key, style in (("train", "-o"), ("val", "-s")):
        loss_ax.plot(epochs, [h[f"{key}_loss"] for h in history], style, label=key)
        acc_ax.plot(epochs, [h[f"{key}_acc"] for h in history], style, label=key)
    loss_ax.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    acc_ax.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    figure.tight_layout()
    _save(figure, path)


def mistakes_png(path: str | Path, images: np.ndarray, labels: np.ndarray,
                 probabilities: np.ndarray, class_names: list[str], count: int) -> int:
    """Gallery of the ``count`` most confident mistakes; returns how many are shown."""
    predicted = probabilities.argmax(1)
    wrong = np.flatnonzero(predicted != labels)
    wrong = wrong[np.argsort(-probabilities[wrong, predicted[wrong]], kind="stable")][:count]
    columns = 4
    rows = max(1, int(np.ceil(len(wrong) / columns)))
    figure, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3.3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, index in zip(axes.flat, wrong):
        ax.imshow(images[index])
        ax.set_title(f"true: {class_names[labels[index]]}\npred: {class_names[predicted[index]]} "
                     f"({probabilities[index, predicted[index]]:.2f})", fontsize=9)
    if not len(wrong):
        axes.flat[0].text(0.5, 0.5, "no mistakes on the test split", ha="center", va="center")
    figure.suptitle("worst mistakes on the test split (most confident first)")
    figure.tight_layout()
    _save(figure, path)
    return len(wrong)
