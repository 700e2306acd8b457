"""The evaluation view: how an image file becomes the square the model scores, and at what size.

Every reader of image files after the split decodes them here, as preprocess decodes val and
test (:func:`eval_view_of`: a JPEG at the smallest DCT scale that still covers the canvas,
short side resized to ``size / crop_pct``, centre crop), so the audit, ``evaluate.test_dir``,
``finetuner predict`` and ``evaluate`` see the pixels the test split was scored on.  Nothing
here depends on augmentation: the audit, which reads only evaluation views, does not rerun
when the augmentation code changes.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image
from torchvision.transforms import v2 as T

from .images import ImageError, decode_image
from .manifest import InputError


def eval_resize(size: int, crop_pct: float) -> int:
    """The short side the evaluation view resizes an image to before its centre crop."""
    return int(math.floor(size / crop_pct))


def eval_view(image: Image.Image, size: int, crop_pct: float) -> Image.Image:
    """Resize the short side to ``size / crop_pct`` and centre-crop ``size`` x ``size``."""
    resize = T.Resize(eval_resize(size, crop_pct), interpolation=T.InterpolationMode.BICUBIC,
                      antialias=True)
    return T.CenterCrop(size)(resize(image))


def canvas_side(size: int, crop_pct: float) -> int:
    """The side of a stored canvas: what the evaluation view resizes the short side to."""
    return max(size, int(math.floor(size / crop_pct)))


def eval_view_of(path: str | Path, size: int, crop_pct: float) -> np.ndarray:
    """The evaluation view (size, size, 3) uint8 of an image file, decoded as preprocess
    decodes val and test (a JPEG at the smallest DCT scale that still covers the canvas):
    every reader of files after the split (the audit, ``evaluate.test_dir``, ``finetuner
    predict`` and ``evaluate``) gets the pixels the test split was scored on.  Raises
    :class:`ImageError` as :func:`decode_image` does."""
    image = decode_image(path, canvas_side(size, crop_pct))
    return np.asarray(eval_view(image, size, crop_pct))


AFTER_SPLIT = "did the data change after split?"


def changed_after_split(path: Path, error: ImageError, question: str = AFTER_SPLIT) -> str:
    """Why a file that decoded when it was checked (by the split, or a folder's scan) cannot be
    decoded now, and ``question``: what probably happened."""
    return f"{path}: {error} ({question})"


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
