"""The evaluate stage's PNG pictures: confusion matrix, training curves, the worst mistakes,
reliability.  What drawing them shares with the audit's gallery (the Agg backend, the quiet
missing glyphs, the atomic save, the gallery itself) is :mod:`finetuner.pictures`."""
from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

from ..pictures import gallery_png, missing_glyphs_quiet, plt, save_png


def _wrapped(text: str, inches: float) -> str:
    """``text`` broken into lines that fit a title ``inches`` wide (about 11 characters an inch
    at 10 pt)."""
    return "\n".join(textwrap.wrap(text, max(20, int(11 * inches))))


@missing_glyphs_quiet()
def confusion_png(path: str | Path, confusion: list[list[int]], class_names: list[str],
                  scored_on: str = "test split") -> None:
    """``scored_on``: which images were scored (the evaluation's ``source``), in the title."""
    matrix = np.asarray(confusion)
    n = len(class_names)
    side = min(12.0, 2.5 + 0.5 * n)
    figure, ax = plt.subplots(figsize=(side, side))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(n), class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion matrix\n{_wrapped(scored_on, side)}", fontsize=10)
    high = matrix.max() / 2 if matrix.size else 0
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center",
                    color="white" if matrix[i, j] > high else "black", fontsize=8)
    figure.tight_layout()
    save_png(figure, path)


@missing_glyphs_quiet()
def curves_png(path: str | Path, history: list[dict], cross_validation: dict | None = None,
               members: list[str] | None = None, probe: bool = False) -> None:
    """Loss and accuracy per epoch, train and val.  A series with no number (a refit without
    val; a probe's train columns before it logged its fit) is left out of the plot and its
    legend.  ``probe``: the model is a probe, which trains no epochs: its one row (its fit on
    the training rows, its val score) is one point each, and the titles say so.  A
    cross-validated probe (``cross_validation``: the checkpoint's record, whose members keep
    their ``path``) gets its own picture instead: :func:`probe_path_png`."""
    paths = [m.get("path") for m in (cross_validation or {}).get("members", [])]
    if paths and all(paths):
        return probe_path_png(path, cross_validation["members"], members)
    epochs = [h["epoch"] for h in history]
    figure, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for key, style in (("train", "-o"), ("val", "-s")):
        for ax, column in ((loss_ax, f"{key}_loss"), (acc_ax, f"{key}_acc")):
            values = [h[column] for h in history]
            if any(v is not None and np.isfinite(v) for v in values):
                ax.plot(epochs, values, style, label=key)
    one = " (a probe: no epochs, one score)" if probe else ""
    loss_ax.set(xlabel="epoch", ylabel="cross-entropy", title=f"loss{one}")
    acc_ax.set(xlabel="epoch", ylabel="accuracy", title=f"accuracy{one}")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    figure.tight_layout()
    save_png(figure, path)


def probe_path_png(path: str | Path, records: list[dict], names: list[str] | None) -> None:
    """Out-of-fold log-loss and accuracy of each member's probe against its L2 strength C (log
    scale), the chosen C marked: where the choice sits, and whether it is at the grid's edge
    (then the best C may lie beyond it)."""
    figure, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    names = names if names and len(names) == len(records) else [
        f"member {i + 1}" for i in range(len(records))]
    for name, record in zip(names, records):
        Cs = [p["C"] for p in record["path"]]
        for ax, key in ((loss_ax, "cv_loss"), (acc_ax, "cv_acc")):
            line, = ax.plot(Cs, [p[key] for p in record["path"]], "-o", markersize=3,
                            label=f"{name}: C {record['C']:g}")
            ax.plot([record["C"]], [record[key]], "*", markersize=12, color=line.get_color())
    loss_ax.set(xscale="log", xlabel="C (the inverse of the L2 penalty: smaller, stronger)",
                ylabel="out-of-fold cross-entropy", title="the probe's cross-validation: loss")
    acc_ax.set(xscale="log", xlabel="C (the inverse of the L2 penalty: smaller, stronger)",
               ylabel="out-of-fold accuracy", title="accuracy (star: the C chosen, by loss)")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    figure.tight_layout()
    save_png(figure, path)


def mistakes_png(path: str | Path, images: np.ndarray, labels: np.ndarray,
                 probabilities: np.ndarray, class_names: list[str], count: int,
                 scored_on: str = "test split", paths: list[str] | None = None) -> int:
    """Gallery of the ``count`` most confident mistakes among the images ``scored_on`` says,
    each captioned with its file's name (``paths``, when known); returns how many are shown."""
    predicted = probabilities.argmax(1)
    wrong = np.flatnonzero(predicted != labels)
    wrong = wrong[np.argsort(-probabilities[wrong, predicted[wrong]], kind="stable")][:count]
    names = [Path(paths[i]).name + "\n" if paths else "" for i in wrong]
    tiles = [(images[i], f"{name}true: {class_names[labels[i]]}\npred: "
                         f"{class_names[predicted[i]]} ({probabilities[i, predicted[i]]:.2f})")
             for i, name in zip(wrong, names)]
    return gallery_png(path, tiles, f"worst mistakes (most confident first) on the {scored_on}",
                       f"no mistakes on the {_wrapped(scored_on, 3)}")


@missing_glyphs_quiet()
def reliability_png(path: str | Path, before: list[dict], after: list[dict],
                    ece_before: float, ece_after: float, temperature: float | None,
                    scored_on: str = "test split") -> None:
    """Reliability diagram: accuracy against mean confidence per bin, before and after
    temperature scaling (``before``/``after``: rows of ``calibration.reliability``), and how
    many predictions fall in each bin."""
    figure, (ax, hist) = plt.subplots(2, 1, figsize=(5.5, 7), sharex=True,
                                      gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfectly calibrated")
    after_label = (f"T = {temperature:.3g}, ECE {ece_after:.3f}" if temperature is not None
                   else "no temperature fitted")
    for rows, style, label in ((before, "-o", f"T = 1, ECE {ece_before:.3f}"),
                               (after, "-s", after_label)):
        shown = [r for r in rows if r["count"]]
        ax.plot([r["confidence"] for r in shown], [r["accuracy"] for r in shown], style,
                label=label, markersize=4)
    ax.set(ylabel="accuracy in the bin", xlim=(0, 1), ylim=(0, 1.02),
           title=_wrapped(f"reliability (15 bins) on the {scored_on}", 5.5))
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    width = before[0]["upper"] - before[0]["lower"] if before else 1 / 15
    for rows, offset, label in ((before, -0.25, "T = 1"), (after, 0.25, "calibrated")):
        hist.bar([(r["lower"] + r["upper"]) / 2 + offset * width for r in rows],
                 [r["count"] for r in rows], width=width / 2, label=label)
    hist.set(xlabel="confidence (top probability)", ylabel="predictions")
    hist.legend(fontsize=8)
    figure.tight_layout()
    save_png(figure, path)
