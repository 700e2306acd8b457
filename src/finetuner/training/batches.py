"""The data fed to a training step: the train and val rows, each epoch's batches, the loader.

The prepared folder's way to a step: :meth:`TrainData.from_prepared` wraps its splits as rows
read batch by batch (:mod:`finetuner.data.rows`; canvases get fresh views each epoch,
:mod:`finetuner.data.augment`); each epoch :func:`epoch_batches` draws the global batches of row
indices; :func:`epoch_loader` reads (augments, mixes) them in ``train.loader_workers``
processes.  The frozen-prefix cache (:mod:`finetuner.training.prefix`) stands between the loader
and the step, and serves cached rows without it.

Invariants: the order of an epoch depends on (seed, epoch) only, never on the process's random
state or the number of workers or processes; every row of an epoch is drawn from a generator
seeded by (seed, epoch, batch), so the batches are the same whoever reads them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from ..data.augment import AugmentedRows, BatchMix, draw_seed
from ..data.rows import ArrayRows, CentreRows, ConcatRows, Rows


@dataclass
class TrainData:
    """Train and val rows (:mod:`finetuner.data.rows`: read batch by batch, never a whole split
    in memory; tensors or arrays given here are wrapped): images uint8 (N, H, W, 3); train has
    ``views`` rows per image.

    Online augmentation: ``train_images`` draws fresh views each epoch (``views`` 1), ``mix``
    mixes batches, and ``train_plain`` holds each training image's evaluation view, which the
    probe learns from.  Val may be empty (a refit on train + val): then nothing is validated
    and the last epoch's weights are the result.
    """
    train_images: Rows
    train_labels: torch.Tensor
    val_images: Rows
    val_labels: torch.Tensor
    views: int
    num_classes: int
    mix: BatchMix | None = None
    train_plain: Rows | None = None

    def __post_init__(self):
        for name in ("train_images", "val_images", "train_plain"):
            rows = getattr(self, name)
            if rows is not None and not isinstance(rows, Rows):
                setattr(self, name, ArrayRows(rows))
        self.train_labels, self.val_labels = (torch.as_tensor(self.train_labels),
                                              torch.as_tensor(self.val_labels))

    @classmethod
    def from_prepared(cls, prepared, seed: int) -> "TrainData":
        """Train and val of a :class:`finetuner.data.prepared.Prepared` folder, read from
        disk; canvases (online mode) get fresh views drawn with ``seed``."""
        labels = [torch.from_numpy(prepared.labels[s]) for s in ("train", "val")]
        train, val = prepared.rows("train"), prepared.rows("val")
        if not prepared.online:
            return cls(train, labels[0], val, labels[1], prepared.train_views,
                       len(prepared.class_names))
        augmentation = prepared.augmentation
        mix = (BatchMix(augmentation, len(prepared.class_names))
               if BatchMix.wanted(augmentation) else None)
        return cls(AugmentedRows(train, prepared.image_size, augmentation, seed), labels[0],
                   val, labels[1], 1, len(prepared.class_names), mix,
                   CentreRows(train, prepared.image_size))

    @property
    def probe_rows(self) -> Rows:
        """Fixed train rows the probe learns from (``views`` per image)."""
        return self.train_images if self.train_plain is None else self.train_plain

    @property
    def view_labels(self) -> torch.Tensor:
        """The label of every train row (``views`` rows per image)."""
        return self.train_labels.repeat_interleave(self.views)

    def with_val_in_train(self) -> "TrainData":
        """Train + val as one training set (each val image's one view stands for all its
        views; online, it gets fresh views too), and no val: what the final refit learns from."""
        val, plain = self.val_images, None
        if isinstance(self.train_images, AugmentedRows):
            val = self.train_images.over(self.val_images, salt=1)
            plain = ConcatRows([self.train_plain, self.val_images], [1, 1])
        return TrainData(ConcatRows([self.train_images, val], [1, self.views]),
                         torch.cat([self.train_labels, self.val_labels]),
                         ArrayRows(torch.zeros((0,) + tuple(self.val_images.row_shape),
                                               dtype=torch.uint8)),
                         self.val_labels[:0], self.views, self.num_classes, self.mix, plain)


def to_nchw(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 NHWC -> uint8 NCHW in channels_last memory (the fast layout on CPU and GPU)."""
    return images.to(device, non_blocking=True).permute(0, 3, 1, 2)


def class_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Inverse class frequency, scaled so a balanced set gets weight 1 everywhere."""
    counts = torch.bincount(labels, minlength=num_classes).float().clamp_min(1)
    return counts.sum() / (num_classes * counts)


def epoch_order(labels: torch.Tensor, views: int, epoch: int, seed: int,
                balance: bool) -> torch.Tensor:
    """Row indices into the train views for one epoch: one view per image, shuffled.

    With ``balance`` images are drawn with replacement, each class equally often.
    """
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    n = len(labels)
    if balance:
        weights = class_weights(labels, int(labels.max()) + 1)[labels]
        images = torch.multinomial(weights, n, replacement=True, generator=generator)
    else:
        images = torch.randperm(n, generator=generator)
    view = torch.randint(views, (n,), generator=generator)
    return images * views + view


def batch_sizes(n: int, batch_size: int, world_size: int = 1) -> list[int]:
    """The sizes of an epoch's global batches of ``n`` rows: ``batch_size`` each, but the last.

    A last batch under half the batch size, or with fewer than two rows per process, is evened
    out with the one before it (two batches of about (batch_size + rest) / 2 rows): BatchNorm
    normalises a training batch by its own statistics, and over a handful of rows, at the 1 x 1
    pixels a small image has in the last stages, those are noise whose gradients explode (a
    batch of 2 after two of 8 took a from-scratch Lite0 at 32 px to NaN at lr 0.02:
    docs/robustness.md).  Should the two halves still have fewer than two rows per process,
    they are one batch (over ``batch_size`` only when it is under 4 x ``world_size`` + 2; a
    full batch has two rows a process, since fit refuses a ``batch_size`` under 2 x
    ``world_size``).  Every row is in a batch; the count is what the lr schedule steps through.
    """
    sizes = [batch_size] * (n // batch_size) + ([n % batch_size] if n % batch_size else [])
    if len(sizes) > 1 and (2 * sizes[-1] < batch_size or sizes[-1] < 2 * world_size):
        both = sizes.pop() + sizes.pop()
        halves = [both - both // 2, both // 2]  # as torch.tensor_split cuts: the larger first
        sizes += halves if halves[1] >= 2 * world_size else [both]
    return sizes


def epoch_batches(data: TrainData, epoch: int, seed: int, batch_size: int, balance: bool,
                  world_size: int = 1) -> list[torch.Tensor]:
    """The epoch's global batches of row indices, of the sizes :func:`batch_sizes` gives."""
    order = epoch_order(data.train_labels, data.views, epoch, seed, balance)
    return list(torch.split(order, batch_sizes(len(order), batch_size, world_size)))


class EpochBatches(torch.utils.data.Dataset):
    """Item i: batch i of an epoch, (uint8 or mixed float images (B, H, W, 3), targets): class
    indices, or soft targets (B, classes) when ``mix`` mixed the batch."""

    def __init__(self, rows: Rows, labels: torch.Tensor, batches: list[torch.Tensor],
                 mix: BatchMix | None, seed: int):
        self.rows, self.labels, self.batches, self.mix, self.seed = (rows, labels, batches, mix,
                                                                     seed)

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = self.batches[i]
        images, targets = self.rows.take(index), self.labels[index]
        if self.mix is not None:
            images, targets = self.mix(images, targets, draw_seed(self.seed, i))
        return images, targets


def _loader_worker(_):
    torch.set_num_threads(1)


def loader_workers(setting: int | str, device: torch.device) -> int:
    """``train.loader_workers``: a number, or auto (none on CPU, where training takes every
    core; up to 4 on CUDA, so the GPU never waits for a batch)."""
    if setting != "auto":
        return int(setting)
    return min(4, max(1, (os.cpu_count() or 2) - 1)) if device.type == "cuda" else 0


def epoch_loader(rows: Rows, labels: torch.Tensor, batches: list[torch.Tensor], epoch: int,
                 seed: int, mix: BatchMix | None, workers: int,
                 pin: bool) -> torch.utils.data.DataLoader:
    """(images, targets) of each batch of ``rows``, in order, read (and augmented, and mixed)
    by ``workers`` processes (0: in this one); ``pin``: into pinned memory (CUDA)."""
    rows.set_epoch(epoch)
    return torch.utils.data.DataLoader(
        EpochBatches(rows, labels, batches, mix, draw_seed(seed, epoch)),
        batch_size=None, shuffle=False, num_workers=workers, pin_memory=pin,
        worker_init_fn=_loader_worker)
