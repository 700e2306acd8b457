"""The built-in demo data: scikit-learn's handwritten digits (1,797 8x8 images, 10 classes)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

from ..io import atomic_path


def write_digits(out_dir: str | Path) -> None:
    """Write the digits as ``out_dir/<digit>/<index>.png`` (8x8 grayscale, ink white)."""
    digits = load_digits()
    with atomic_path(out_dir, directory=True) as tmp:
        for index, (pixels, label) in enumerate(zip(digits.images, digits.target)):
            folder = tmp / str(label)
            folder.mkdir(exist_ok=True)
            array = np.round(pixels * (255 / 16)).astype(np.uint8)
            Image.fromarray(array, "L").save(folder / f"{index:04d}.png")
