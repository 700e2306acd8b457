"""The preprocess stage's inputs checked, and its output folder: uint8 arrays per split and a
small JSON about them (classes, sizes, counts, the augmentation recipe, which training
applies itself in online mode: ``train_views: 0``, and the split's near-duplicate summary,
which the evaluate stage reports)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..io import read_csv, write_csv, write_json
from .augment import Augmentation
from .preprocess import SplitViews, canvas_side, write_views
from .rows import FileRows
from .split import SPLITS, split_folder

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
    """Decode, resize and augment every listed image into ``out_dir``; returns the meta."""
    summary = json.loads((split_dir / "summary.json").read_text())
    class_names = summary["classes"]
    index_of = {name: i for i, name in enumerate(class_names)}
    counts, jobs = {}, []
    for split in SPLITS:
        rows = read_csv(split_dir / f"{split}.csv")
        np.save(out_dir / f"{split}_labels.npy",
                np.array([index_of[r["label"]] for r in rows], dtype=np.int64))
        jobs.append(SplitViews(split, [data_dir / r["path"] for r in rows],
                               train_views if split == "train" else 1,
                               out_dir / f"{split}_images.npy"))
        counts[split] = len(rows)
    write_views(jobs, image_size, crop_pct, augmentation, seed, workers)
    meta = {"classes": class_names, "image_size": image_size, "crop_pct": crop_pct,
            "train_views": train_views, "counts": counts,
            "canvas_side": canvas_side(image_size, crop_pct) if train_views == 0 else None,
            "augmentation": augmentation.to_dict(),
            "near_duplicates": summary.get("near_duplicates")}
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


def split_and_prepare(data_dir: str | Path, work: str | Path, *, val_fraction: float,
                      test_fraction: float, seed: int, image_size: int, crop_pct: float,
                      train_views: int, augmentation: Augmentation,
                      workers: int = 2) -> Prepared:
    """What the split and preprocess stages make of ``data_dir``, without DVC or params.yaml
    (benchmarks): the manifests in ``work/split``, the arrays in ``work/prepared`` (``work``
    must not hold them yet), read back by :func:`load_prepared`."""
    split_dir, out_dir = Path(work) / "split", Path(work) / "prepared"
    split_dir.mkdir(parents=True)
    out_dir.mkdir()
    result = split_folder(data_dir, val_fraction, test_fraction, seed, progress=False)
    for name in SPLITS:
        write_csv(split_dir / f"{name}.csv", ["path", "label", "sha256"],
                  [(i.path, i.label, i.sha256) for i in result.splits[name]])
    write_json(split_dir / "summary.json", {"classes": result.classes})
    prepare(split_dir, Path(data_dir), out_dir, image_size, crop_pct, train_views, augmentation,
            seed, workers)
    return load_prepared(out_dir)


class InputError(ValueError):
    """The split manifests or the image folder are missing or do not agree."""


def check_inputs(data_dir: Path, split_dir: Path) -> None:
    """Fail fast, before any decoding, when the split stage's output cannot be used."""
    if not data_dir.is_dir():
        raise InputError(f"data folder {data_dir} does not exist (data.dir in params.yaml)")
    needed = [split_dir / "summary.json"] + [split_dir / f"{s}.csv" for s in SPLITS]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        raise InputError(f"missing {', '.join(missing)}: run the split stage first "
                         "(dvc repro split)")
    try:
        classes = json.loads((split_dir / "summary.json").read_text(encoding="utf-8"))["classes"]
    except (ValueError, KeyError, TypeError) as error:
        raise InputError(f"{split_dir / 'summary.json'} is damaged ({error}); rerun the split "
                         "stage") from None
    for split in SPLITS:
        for row in read_csv(split_dir / f"{split}.csv"):
            if row.get("label") not in classes:
                raise InputError(f"{split_dir / split}.csv: label {row.get('label')!r} of "
                                 f"{row.get('path')!r} is not one of the classes in "
                                 "summary.json; rerun the split stage")


def read_input_spec(path: Path) -> tuple[int, float]:
    """(image_size, crop_pct) from the input_spec stage's JSON."""
    if not path.is_file():
        raise InputError(f"{path} is missing: run the input_spec stage first "
                         "(dvc repro input_spec)")
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
        size, crop = spec["image_size"], spec["crop_pct"]
    except (ValueError, KeyError, TypeError) as error:
        raise InputError(f"{path} is damaged ({type(error).__name__}: {error}); rerun the "
                         "input_spec stage") from None
    if (isinstance(size, bool) or not isinstance(size, int) or size < 1
            or isinstance(crop, bool) or not isinstance(crop, (int, float)) or not 0 < crop <= 1):
        raise InputError(f"{path}: image_size {size!r} / crop_pct {crop!r} out of range; rerun "
                         "the input_spec stage")
    return size, float(crop)
