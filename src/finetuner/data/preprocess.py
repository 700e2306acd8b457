"""Decode every image once, resize it, and store uint8 arrays that training reads directly.

Val and test images get the evaluation view: short side resized to ``size / crop_pct``, then a
centre crop of ``size``.  Each training image gets ``train_views`` views: view 0 is that same
evaluation view, views 1.. are random augmentations (random resized crop, flip, rotation,
colour jitter) drawn from a generator seeded by (seed, image, view), so the arrays are the same
whatever the number of workers.  Decoding runs in ``workers`` DataLoader processes and streams
into memory-mapped ``.npy`` files, so memory stays bounded by a few batches.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2 as T
from tqdm import tqdm

from .images import ImageError, decode_image


@dataclass(frozen=True)
class Augmentation:
    """The random changes applied to training views 1.. (view 0 is never augmented)."""
    crop_scale: tuple[float, float] = (0.8, 1.0)
    hflip: bool = False
    rotation: float = 0.0
    color_jitter: float = 0.0


def eval_view(image: Image.Image, size: int, crop_pct: float) -> Image.Image:
    """Resize the short side to ``size / crop_pct`` and centre-crop ``size`` x ``size``."""
    resize = T.Resize(int(math.floor(size / crop_pct)), interpolation=T.InterpolationMode.BICUBIC,
                      antialias=True)
    return T.CenterCrop(size)(resize(image))


def train_transform(size: int, augmentation: Augmentation) -> T.Compose:
    steps = [T.RandomResizedCrop(size, scale=augmentation.crop_scale,
                                 interpolation=T.InterpolationMode.BICUBIC, antialias=True)]
    if augmentation.hflip:
        steps.append(T.RandomHorizontalFlip())
    if augmentation.rotation:
        steps.append(T.RandomRotation(augmentation.rotation,
                                      interpolation=T.InterpolationMode.BILINEAR))
    if augmentation.color_jitter:
        c = augmentation.color_jitter
        steps.append(T.ColorJitter(brightness=c, contrast=c, saturation=c))
    return T.Compose(steps)


class ViewsDataset(torch.utils.data.Dataset):
    """Item i: the ``views`` uint8 arrays (views, H, W, 3) of image i."""

    def __init__(self, paths: list[Path], size: int, crop_pct: float, views: int,
                 augmentation: Augmentation, seed: int):
        self.paths, self.size, self.crop_pct, self.views = paths, size, crop_pct, views
        self.transform = train_transform(size, augmentation)
        self.seed = seed

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> np.ndarray:
        try:
            image = decode_image(self.paths[index])
        except ImageError as error:
            raise ImageError(f"{self.paths[index]}: {error} (did the data change after split?)") from None
        out = np.empty((self.views, self.size, self.size, 3), dtype=np.uint8)
        out[0] = np.asarray(eval_view(image, self.size, self.crop_pct))
        for view in range(1, self.views):
            torch.manual_seed(hash((self.seed, index, view)) & 0x7FFF_FFFF)
            out[view] = np.asarray(self.transform(image))
        return out


def _concatenate(batch: list[np.ndarray]) -> torch.Tensor:
    """One tensor per batch: workers hand tensors over in shared memory, not through a pipe."""
    return torch.from_numpy(np.concatenate(batch))


def _worker_init(_):
    torch.set_num_threads(1)  # one core per decoding process


def write_views(paths: list[Path], out_file: Path, size: int, crop_pct: float, views: int,
                augmentation: Augmentation, seed: int, workers: int, desc: str) -> None:
    """Stream the views of ``paths`` into ``out_file`` (N * views, size, size, 3) uint8."""
    dataset = ViewsDataset(paths, size, crop_pct, views, augmentation, seed)
    array = np.lib.format.open_memmap(out_file, mode="w+", dtype=np.uint8,
                                      shape=(len(paths) * views, size, size, 3))
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=8, num_workers=workers, worker_init_fn=_worker_init,
        collate_fn=_concatenate)
    start = 0
    for batch in tqdm(loader, desc=f"preprocess {desc}", unit="batch", leave=False,
                      mininterval=1.0):
        array[start:start + len(batch)] = batch.numpy()
        start += len(batch)
    array.flush()
    del array
