"""The preprocess stage's output folder, as the stages after it read it: uint8 arrays per split
and a small JSON about them (classes, sizes, counts, the augmentation recipe, which training
applies itself in online mode: ``train_views: 0``, and the split's near-duplicate summary,
which the evaluate stage reports).  The writer is :func:`finetuner.data.preprocess.prepare`;
this module imports no decoding code, so the stages that only read the arrays do not depend
on it."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .augment import Augmentation
from .manifest import SPLITS
from .rows import FileRows

META = "meta.json"


@dataclass(frozen=True)
class Prepared:
    class_names: list[str]
    image_size: int
    crop_pct: float
    train_views: int               # 0: one canvas per training image (online augmentation)
    images: dict[str, np.ndarray]  # split -> (N [* views], H, W, 3) uint8, memory-mapped
    labels: dict[str, np.ndarray]  # split -> (N,) int64
    augmentation: Augmentation
    directory: Path
    near_duplicates: dict | None = None  # the split's summary of them (None: an older split)
    paths: dict[str, list[str]] | None = None  # "val", "test" -> each image's file (one row
    #                  each), relative to data.dir, in row order: what evaluate names (None:
    #                  older arrays; train's are not kept: nothing reads them, and they grow)

    @property
    def online(self) -> bool:
        return self.train_views == 0

    def rows(self, split: str) -> FileRows:
        """``split``'s images read batch by batch from disk (:mod:`finetuner.data.rows`)."""
        return FileRows(self.directory / f"{split}_images.npy")


def load_prepared(directory: str | Path) -> Prepared:
    directory = Path(directory)
    meta_path = directory / META
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path} is missing: run the preprocess stage (dvc repro)")
    meta = json.loads(meta_path.read_text())
    images = {s: np.load(directory / f"{s}_images.npy", mmap_mode="r") for s in SPLITS}
    labels = {s: np.load(directory / f"{s}_labels.npy") for s in SPLITS}
    augmentation = (Augmentation.from_params(meta["augmentation"]) if "augmentation" in meta
                    else Augmentation())
    return Prepared(meta["classes"], meta["image_size"], meta["crop_pct"], meta["train_views"],
                    images, labels, augmentation, directory, meta.get("near_duplicates"),
                    meta.get("paths"))
