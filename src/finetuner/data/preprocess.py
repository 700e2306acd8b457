"""Decode every image once, resize it, and store uint8 arrays that training reads directly.

Val and test images get the evaluation view: short side resized to ``size / crop_pct``, then a
centre crop of ``size``.  Each training image gets ``train_views`` views: view 0 is that same
evaluation view, views 1.. are random augmentations (random resized crop, flip, rotation,
colour jitter) drawn from a generator seeded by (seed, image, view), so the arrays are the same
whatever the number of workers.  With ``train_views: 0`` (online augmentation) each training
image gets one *canvas* instead: short side resized to ``size / crop_pct``, the centre square
kept, from which training draws a fresh view every epoch (:mod:`finetuner.data.augment`).
Decoding runs in ``workers`` DataLoader processes and streams into ``.npy`` files written with
``pwrite`` (not mapped: a map's dirty pages would count in the stage's memory), so memory stays
bounded by a few batches.  JPEGs are decoded at the smallest DCT scale
still large enough (:func:`decode_side`).  :func:`prepare` is the stage's whole work: the
manifests checked, every split's views written, and ``meta.json`` (read back by
:func:`finetuner.data.prepared.load_prepared`).
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

from ..io import write_json
from .augment import Augmentation, draw_seed, train_transform
from .images import ImageError, decode_image
from .manifest import SPLITS, read_manifests
from .prepared import META
from .rows import RowWriter
from .views import canvas_side, changed_after_split, eval_view


def decode_side(size: int, crop_pct: float, views: int, augmentation: Augmentation) -> int:
    """The short side an image must keep after a JPEG draft decode: the canvas's side, and for
    stored augmented views enough that the smallest random crop is not upsampled."""
    side = canvas_side(size, crop_pct)
    if views > 1:
        side = max(side, math.ceil(size / math.sqrt(augmentation.crop_scale[0])))
    return side


def canvas(image: Image.Image, side: int) -> Image.Image:
    """Short side resized to ``side``, centre square of ``side`` x ``side`` kept."""
    resize = T.Resize(side, interpolation=T.InterpolationMode.BICUBIC, antialias=True)
    return T.CenterCrop(side)(resize(image))


@dataclass(frozen=True)
class SplitViews:
    """One split's images and where their views go: ``out_file`` (N * views, size, size, 3);
    ``views`` 0: one canvas per image (N, canvas_side, canvas_side, 3)."""
    name: str
    paths: list[Path]
    views: int
    out_file: Path


class ViewsDataset(torch.utils.data.Dataset):
    """Item i: (split number, index in that split, its views as uint8 (views, H, W, 3)).

    The splits are numbered in order and their images follow one another.  A view's random
    draw is seeded by (seed, index in its split, view), so the arrays do not depend on how the
    images are batched or spread over workers.
    """

    def __init__(self, splits: list[SplitViews], size: int, crop_pct: float,
                 augmentation: Augmentation, seed: int):
        self.splits, self.size, self.crop_pct, self.seed = splits, size, crop_pct, seed
        self.items = [(s, i) for s, split in enumerate(splits) for i in range(len(split.paths))]
        self.augmentation = augmentation
        self.transform = train_transform(size, augmentation)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, item: int) -> tuple[int, int, np.ndarray | str]:
        """(split, index, views), or (split, index, why) when the file no longer decodes: the
        reason is handed back, not raised, because a DataLoader worker's exception reaches
        the stage wrapped in a traceback (:func:`write_views` raises it, one line)."""
        split, index = self.items[item]
        path, views = self.splits[split].paths[index], self.splits[split].views
        try:
            image = decode_image(path, decode_side(self.size, self.crop_pct, views,
                                                   self.augmentation))
        except ImageError as error:
            return split, index, changed_after_split(path, error)
        if views == 0:
            side = canvas_side(self.size, self.crop_pct)
            return split, index, np.asarray(canvas(image, side))[None]
        out = np.empty((views, self.size, self.size, 3), dtype=np.uint8)
        out[0] = np.asarray(eval_view(image, self.size, self.crop_pct))
        for view in range(1, views):
            torch.manual_seed(draw_seed(self.seed, index, view))
            out[view] = np.asarray(self.transform(image))
        return split, index, out


def split_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Dataset indices in batches of ``batch_size`` that never mix two splits."""
    batches, offset = [], 0
    for length in lengths:
        batches += [list(range(offset + i, offset + min(i + batch_size, length)))
                    for i in range(0, length, batch_size)]
        offset += length
    return batches


def _concatenate(batch: list[tuple[int, int, np.ndarray | str]]
                 ) -> tuple[int, int, torch.Tensor | str]:
    """(split, first index, all views as one tensor): workers hand a tensor over in shared
    memory, not through a pipe.  An image that failed: (split, first index, its reason)."""
    failed = [views for _, _, views in batch if isinstance(views, str)]
    if failed:
        return batch[0][0], batch[0][1], failed[0]
    return batch[0][0], batch[0][1], torch.from_numpy(np.concatenate([b[2] for b in batch]))


def _worker_init(_):
    torch.set_num_threads(1)  # one core per decoding process


def write_views(splits: list[SplitViews], size: int, crop_pct: float,
                augmentation: Augmentation, seed: int, workers: int) -> None:
    """Stream the views of every split's images into its ``out_file``.

    One DataLoader for all splits: its worker processes start once, not once per split.  Batches
    are written where they belong as soon as any worker finishes one (``in_order=False``), so a
    slow batch does not leave the other workers idle.
    """
    dataset = ViewsDataset(splits, size, crop_pct, augmentation, seed)
    side = lambda split: canvas_side(size, crop_pct) if split.views == 0 else size
    arrays = [RowWriter(split.out_file, (len(split.paths) * max(1, split.views),)
                        + (side(split),) * 2 + (3,)) for split in splits]
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=split_batches([len(s.paths) for s in splits], 8),
        num_workers=workers, worker_init_fn=_worker_init, collate_fn=_concatenate,
        in_order=False)
    names = "+".join(split.name for split in splits)
    for split, index, batch in tqdm(loader, desc=f"preprocess {names}", unit="batch",
                                    leave=False, mininterval=1.0):
        if isinstance(batch, str):
            raise ImageError(batch)
        start = index * max(1, splits[split].views)
        arrays[split].write(start, batch.numpy())
    for array in arrays:
        array.close()


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
            "near_duplicates": manifests.summary.get("near_duplicates"),
            "paths": {split: manifests.paths(split) for split in ("val", "test")}}
    write_json(out_dir / META, meta)
    return meta
