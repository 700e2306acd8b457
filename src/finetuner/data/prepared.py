"""The preprocess stage's inputs checked, and its output folder: uint8 arrays per split and a
small JSON about them (classes, sizes, counts, the augmentation recipe, which training
applies itself in online mode: ``train_views: 0``, and the split's near-duplicate summary,
which the evaluate stage reports)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..io import write_json
from .augment import Augmentation
from .manifest import SPLITS, read_manifests
from .preprocess import SplitViews, write_views
from .views import canvas_side
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

    @property
    def online(self) -> bool:
        return self.train_views == 0

    def rows(self, split: str) -> FileRows:
        """``split``'s images read batch by batch from disk (:mod:`finetuner.data.rows`)."""
        return FileRows(self.directory / f"{split}_images.npy")


def prepare(split_dir: Path, data_dir: Path, out_dir: Path, image_size: int, crop_pct: float,
            train_views: int, augmentation: Augmentation, seed: int, workers: int) -> dict:
    """Decode, resize and augment every image the manifests in ``split_dir`` list into
    ``out_dir``; returns the meta.  The manifests and ``data_dir`` are checked before any
    image is decoded (:func:`read_manifests`: :class:`InputError`)."""
    manifests = read_manifests(split_dir, data_dir)
    class_names = manifests.classes
    counts, jobs = {}, []
    for split in SPLITS:
        np.save(out_dir / f"{split}_labels.npy", manifests.labels(split))
        jobs.append(SplitViews(split, [data_dir / path for path in manifests.paths(split)],
                               train_views if split == "train" else 1,
                               out_dir / f"{split}_images.npy"))
        counts[split] = len(manifests.rows[split])
    write_views(jobs, image_size, crop_pct, augmentation, seed, workers)
    meta = {"classes": class_names, "image_size": image_size, "crop_pct": crop_pct,
            "train_views": train_views, "counts": counts,
            "canvas_side": canvas_side(image_size, crop_pct) if train_views == 0 else None,
            "augmentation": augmentation.to_dict(),
            "near_duplicates": manifests.summary.get("near_duplicates")}
    write_json(out_dir / META, meta)
    return meta


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
                    images, labels, augmentation, directory, meta.get("near_duplicates"))
