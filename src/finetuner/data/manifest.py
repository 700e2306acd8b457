"""The split stage's manifests (``data/split``): ``{train,val,test}.csv``, one row per image
(``path`` relative to the data folder, ``label``, ``sha256``), and ``summary.json`` (``classes``
in index order, and the split's report).  Written by the split stage, read by preprocess and the
audit.

This module imports no scanning or splitting code, so the stages that read the manifests do
not depend on that code in ``dvc.yaml``: they rerun when the manifests change, not when the
split's code does.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..io import read_csv, write_csv, write_json

SPLITS = ("train", "val", "test")
COLUMNS = ["path", "label", "sha256"]


class InputError(ValueError):
    """The split manifests or the image folder are missing or do not agree."""


@dataclass(frozen=True)
class Manifests:
    """What the split listed: ``rows[split]`` in the manifest's order, ``classes`` in index
    order (every row's label is one of them), ``summary`` the whole ``summary.json``."""
    classes: list[str]
    rows: dict[str, list[dict[str, str]]]
    summary: dict

    def labels(self, split: str) -> np.ndarray:
        """The class index of each of ``split``'s images, int64, in the manifest's order."""
        index = {name: i for i, name in enumerate(self.classes)}
        return np.array([index[row["label"]] for row in self.rows[split]], dtype=np.int64)

    def paths(self, split: str) -> list[str]:
        return [row["path"] for row in self.rows[split]]

    def listed(self) -> tuple[list[str], np.ndarray, list[str]]:
        """(paths, class indices, split names) of every image, train then val then test."""
        return ([path for split in SPLITS for path in self.paths(split)],
                np.concatenate([self.labels(split) for split in SPLITS]),
                [split for split in SPLITS for _ in self.rows[split]])


def write_manifests(out_dir: str | Path, classes: list[str], splits: dict[str, list],
                    **summary) -> None:
    """The manifests of ``splits`` (split -> items with ``path``, ``label`` and ``sha256``:
    the scan's :class:`~finetuner.data.scan.Item`) into ``out_dir``; ``summary.json`` holds
    ``classes`` and the ``summary`` keys after it."""
    out_dir = Path(out_dir)
    for name in SPLITS:
        write_csv(out_dir / f"{name}.csv", COLUMNS,
                  [(item.path, item.label, item.sha256) for item in splits[name]])
    write_json(out_dir / "summary.json", {"classes": classes, **summary})


def read_manifests(split_dir: str | Path, data_dir: str | Path | None = None) -> Manifests:
    """The manifests in ``split_dir``, checked before any image is decoded: every file there,
    ``summary.json`` readable, every label one of its classes, and ``data_dir`` (when given)
    a folder.  Raises :class:`InputError` naming the file and what to do."""
    split_dir = Path(split_dir)
    if data_dir is not None and not Path(data_dir).is_dir():
        raise InputError(f"data folder {data_dir} does not exist (data.dir in params.yaml)")
    needed = [split_dir / "summary.json"] + [split_dir / f"{s}.csv" for s in SPLITS]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        raise InputError(f"missing {', '.join(missing)}: run the split stage first "
                         "(dvc repro split)")
    try:
        summary = json.loads((split_dir / "summary.json").read_text(encoding="utf-8"))
        classes = summary["classes"]
    except (ValueError, KeyError, TypeError) as error:
        raise InputError(f"{split_dir / 'summary.json'} is damaged ({error}); rerun the split "
                         "stage") from None
    rows = {split: read_csv(split_dir / f"{split}.csv") for split in SPLITS}
    for split in SPLITS:
        for row in rows[split]:
            if row.get("label") not in classes:
                raise InputError(f"{split_dir / split}.csv: label {row.get('label')!r} of "
                                 f"{row.get('path')!r} is not one of the classes in "
                                 "summary.json; rerun the split stage")
    return Manifests(classes, rows, summary)
