"""What the split and preprocess stages make of a folder, without DVC or params.yaml: for
benchmarks and tests, which want prepared arrays of a folder in one call."""
from __future__ import annotations

from pathlib import Path

from .augment import Augmentation
from .manifest import write_manifests
from .prepared import Prepared, load_prepared
from .preprocess import prepare
from .split import split_folder


def split_and_prepare(data_dir: str | Path, work: str | Path, *, val_fraction: float,
                      test_fraction: float, seed: int, image_size: int, crop_pct: float,
                      train_views: int, augmentation: Augmentation,
                      workers: int = 2) -> Prepared:
    """The manifests of ``data_dir`` in ``work/split``, its arrays in ``work/prepared``
    (``work`` must not hold them yet), read back by :func:`load_prepared`."""
    split_dir, out_dir = Path(work) / "split", Path(work) / "prepared"
    split_dir.mkdir(parents=True)
    out_dir.mkdir()
    result = split_folder(data_dir, val_fraction, test_fraction, seed, progress=False)
    write_manifests(split_dir, result.classes, result.splits)
    prepare(split_dir, Path(data_dir), out_dir, image_size, crop_pct, train_views, augmentation,
            seed, workers)
    return load_prepared(out_dir)
