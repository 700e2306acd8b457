"""The audit's outputs: the suspects as CSV rows, the counts, and a gallery of the top ones."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import numpy as np

from ..io import write_csv
from ..pictures import gallery_png
from .findings import COLUMNS, ISSUES, Audit, Finding


def write_suspects(path: str | Path, audit: Audit) -> None:
    write_csv(path, list(COLUMNS), [f.row() for f in audit.findings])


def top_suspects(audit: Audit, count: int) -> list[Finding]:
    """The ``count`` most certain findings, taken in turn from each kind, so every kind that
    has findings is shown."""
    queues = [[f for f in audit.findings if f.issue == issue] for issue in ISSUES]
    chosen: list[Finding] = []
    while len(chosen) < count and any(queues):
        for queue in queues:
            if queue and len(chosen) < count:
                chosen.append(queue.pop(0))
    return chosen


WEAK_PROBE = 0.9  # out-of-fold accuracy below which the line warns about the label suspects


def labels_phrase(summary: dict) -> str:
    """The label suspects' part of the stage's and the CLI's line, with how right the probe
    that found them is on images it did not see: the weaker it is, the more of its suspects
    are right labels it confuses (on 120 TrashNet photos: right on 72 %, 20 suspects, the ones
    looked at all rightly labelled), so below :data:`WEAK_PROBE` the line says to look first."""
    phrase = f"{summary['label']} likely wrong label(s)"
    accuracy = summary.get("probe_accuracy")
    if accuracy is None:
        return phrase
    phrase += f" (the probe right on {math.floor(accuracy * 100)}% out of fold"  # 89.95: 89
    if summary["label"] and accuracy < WEAK_PROBE:
        phrase += ": a weak probe, many may be right labels; look before you relabel"
    return phrase + ")"


def caption(finding: Finding) -> str:
    name = Path(finding.path).name
    where = f" [{finding.split}]" if finding.split else ""
    if finding.issue == "label":
        return (f"{name}{where}\nlabel: given {finding.given}, "
                f"suggested {finding.suggested} ({finding.score:.2f})")
    if finding.issue == "near_duplicate":
        there = f" [{finding.other_split}]" if finding.other_split else ""
        return f"{name}{where} (left)\nnear-duplicate of {Path(finding.other).name}{there}"
    return f"{name}{where}\noutlier in {finding.given} ({finding.score:.2f})"


def suspects_png(path: str | Path, audit: Audit, view: Callable[[str], np.ndarray],
                 count: int) -> int:
    """A gallery of :func:`top_suspects`: each image (a near-duplicate beside its twin) with
    its given and suggested labels; ``view(path)``: the image's evaluation view."""
    tiles = []
    for finding in top_suspects(audit, count):
        image = view(finding.path)
        if finding.issue == "near_duplicate":
            gap = np.full((image.shape[0], max(2, image.shape[1] // 20), 3), 255, np.uint8)
            image = np.concatenate([image, gap, view(finding.other)], axis=1)
        tiles.append((image, caption(finding)))
    counts = ", ".join(f"{audit.count(issue)} {issue}" for issue in ISSUES)
    return gallery_png(path, tiles, f"audit of {audit.images} images: {counts} "
                       "(most certain first)", "nothing found")
