"""The frozen-prefix cache: what the frozen stages compute, computed once.

With stored views everything a frozen prefix computes is constant across epochs (frozen stages
run in eval mode, and all augmentation happened in preprocess), so it is computed once per
stored view, without autograd, and the trainable rest trains on those outputs.  When the cache
would not fit in ``train.feature_cache_gb`` it spills to a file in the store's temporary folder
(the finetune stage's), else the prefix runs per batch, still without autograd.  Either way the
same batches meet the same weights: caching changes the speed, not what is learned.  With
online augmentation (canvases) every epoch's views are new, so the prefix runs per batch.

Invariant: a cache holds outputs of stages that have not trained yet (the frozen depth only
ever decreases within a fit), so it depends on the starting weights alone, and runs that start
from the same weights may share it (:class:`PrefixStore`).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..data.augment import BatchMix
from ..data.rows import FileRows, Rows
from ..models import StagedClassifier
from . import distributed
from .batches import epoch_loader, to_nchw
from .distributed import Dist


class FrozenPrefix:
    """Outputs of the frozen part for a set of stored rows: cached (in memory, or spilled to a
    file when over the budget), or computed per batch.

    With ``dist`` (several processes) each rank computes its share of the cache and the shares
    are all-gathered, so every rank holds the whole cache for the price of 1/world of it.
    Rows that change every epoch (online augmentation) are never cached.
    """

    def __init__(self, model: StagedClassifier, images: Rows, depth: int,
                 device: torch.device, budget_bytes: float, batch_size: int = 64,
                 dist: Dist | None = None, cache=None, spill_dir: Path | None = None):
        self.model, self.images, self.depth, self.device = model, images, depth, device
        self.pin = device.type == "cuda"
        self.cache = cache  # given: computed earlier from the same frozen weights
        if cache is not None or depth == 0 or len(images) == 0 or not images.fixed:
            return  # depth 0: cheaper to redo
        with torch.no_grad():
            sample = model.forward_frozen(to_nchw(images.take([0]), device), depth)
        size = sample.numel() * sample.element_size() * len(images)
        shared = dist is not None and dist.enabled
        if size <= budget_bytes:
            start, stop = distributed.chunk(len(images), dist) if shared else (0, len(images))
            parts = [self._compute(slice(i, min(i + batch_size, stop)))
                     for i in range(start, stop, batch_size)]
            local = torch.cat(parts) if parts else sample[:0]
            self.cache = distributed.all_gather_rows(local, len(images), dist) if shared else local
        elif spill_dir is not None and not shared and budget_bytes > 0:
            self.cache = SpilledCache.compute(self._compute, len(images), sample, batch_size,
                                              spill_dir)

    @torch.no_grad()
    def _compute(self, rows) -> torch.Tensor:
        return self.features(self.images.take(rows, self.pin))

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The frozen prefix of a batch of images (uint8 or [0, 1] float NHWC)."""
        return self.model.forward_frozen(to_nchw(images, self.device), self.depth)

    def __call__(self, index: torch.Tensor) -> torch.Tensor:
        if self.cache is not None:
            return self.cache[index.to(self.cache.device)].to(self.device, non_blocking=True)
        return self._compute(index)

    def epoch(self, batches: list[torch.Tensor], labels: torch.Tensor, epoch: int, seed: int,
              mix: BatchMix | None, workers: int):
        """(frozen-prefix outputs, targets) of each batch of rows, on the device, in order:
        from the cache, else read (and augmented, and mixed) by
        :func:`~finetuner.training.batches.epoch_loader`."""
        if self.cache is not None and mix is None:
            for index in batches:
                yield self(index), labels[index].to(self.device, non_blocking=True)
            return
        for images, targets in epoch_loader(self.images, labels, batches, epoch, seed, mix,
                                            workers, self.pin):
            yield self.features(images), targets.to(self.device, non_blocking=True)


class SpilledCache:
    """Frozen-prefix outputs in a file (raw bytes per row, read back with ``preadv``): for a
    cache over ``train.feature_cache_gb``, reading is still far cheaper than recomputing."""

    def __init__(self, rows: FileRows, shape: tuple[int, ...], dtype: torch.dtype):
        self.rows, self.shape, self.dtype, self.device = rows, shape, dtype, torch.device("cpu")

    @classmethod
    def compute(cls, compute, n: int, sample: torch.Tensor, batch_size: int,
                directory: Path) -> "SpilledCache":
        row_bytes = sample[0].numel() * sample.element_size()
        fd, name = tempfile.mkstemp(suffix=".npy", prefix="prefix-", dir=directory)
        with os.fdopen(fd, "wb") as f:
            np.lib.format.write_array_header_1_0(
                f, {"descr": "|u1", "fortran_order": False, "shape": (n, row_bytes)})
            for start in range(0, n, batch_size):
                part = compute(slice(start, min(start + batch_size, n))).cpu().contiguous()
                f.write(part.view(torch.uint8).numpy().tobytes())
        return cls(FileRows(name), tuple(sample.shape[1:]), sample.dtype)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: torch.Tensor) -> torch.Tensor:
        raw = self.rows.take(index)
        return raw.view(self.dtype).reshape((len(raw),) + self.shape)


class PrefixStore(dict):
    """(depth, "train" or "val") -> cached outputs of the frozen prefix.  Every prefix fit()
    computes runs stages that have not trained yet (depth only ever decreases), so its outputs
    depend on the starting weights alone: runs that start from the same weights can share them.
    ``spill_dir``: where a cache over the budget may spill (None: computed per batch instead)."""

    def __init__(self, spill_dir: str | Path | None = None):
        super().__init__()
        self.spill_dir = Path(spill_dir) if spill_dir is not None else None


def prefix_for(store: PrefixStore | None, name: str, model: StagedClassifier,
               images: Rows, depth: int, device: torch.device, budget: float,
               dist: Dist | None = None) -> FrozenPrefix:
    """The frozen prefix of ``images`` at ``depth``: from ``store`` when it has it, else
    computed (and kept there when it was cached).  Rows that change per epoch skip the store."""
    if store is not None and images.fixed and (depth, name) in store:
        return FrozenPrefix(model, images, depth, device, budget, cache=store[depth, name])
    spill = getattr(store, "spill_dir", None)
    prefix = FrozenPrefix(model, images, depth, device, budget, dist=dist, spill_dir=spill)
    if store is not None and prefix.cache is not None:
        store[depth, name] = prefix.cache
    return prefix


def merged_store(store: PrefixStore, views: int) -> PrefixStore:
    """``store`` for :meth:`TrainData.with_val_in_train`: val rows appended to train (caches in
    memory only; spilled ones are computed again).  Empties ``store`` as it goes, so the old
    and the merged caches are not held both at once."""
    merged = PrefixStore(getattr(store, "spill_dir", None))
    for depth, name in list(store):
        if name == "train" and (depth, "val") in store:
            train, val = store.pop((depth, "train")), store.pop((depth, "val"))
            if isinstance(train, torch.Tensor) and isinstance(val, torch.Tensor):
                merged[depth, "train"] = torch.cat([train, val.repeat_interleave(views, 0)])
                merged[depth, "val"] = val[:0]
            del train
    store.clear()
    return merged
