"""The preprocess stage's output folder: uint8 arrays per split and a small JSON about them."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..io import read_csv, write_json
from .preprocess import Augmentation, write_views
from .split import SPLITS

META = "meta.json"


@dataclass(frozen=True)
class Prepared:
    class_names: list[str]
    image_size: int
    crop_pct: float
    train_views: int
    images: dict[str, np.ndarray]  # split -> (N [* views], H, W, 3) uint8, memory-mapped
    labels: dict[str, np.ndarray]  # split -> (N,) int64


def prepare(split_dir: Path, data_dir: Path, out_dir: Path, image_size: int, crop_pct: float,
            train_views: int, augmentation: Augmentation, seed: int, workers: int) -> dict:
    """Decode, resize and augment every listed image into ``out_dir``; returns the meta."""
    summary = json.loads((split_dir / "summary.json").read_text())
    class_names = summary["classes"]
    index_of = {name: i for i, name in enumerate(class_names)}
    counts = {}
    for split in SPLITS:
        rows = read_csv(split_dir / f"{split}.csv")
        views = train_views if split == "train" else 1
        np.save(out_dir / f"{split}_labels.npy",
                np.array([index_of[r["label"]] for r in rows], dtype=np.int64))
        write_views([data_dir / r["path"] for r in rows], out_dir / f"{split}_images.npy",
                    image_size, crop_pct, views, augmentation, seed, workers, split)
        counts[split] = len(rows)
    meta = {"classes": class_names, "image_size": image_size, "crop_pct": crop_pct,
            "train_views": train_views, "counts": counts}
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
    return Prepared(meta["classes"], meta["image_size"], meta["crop_pct"], meta["train_views"],
                    images, labels)
