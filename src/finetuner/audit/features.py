"""What the audit reads of each image: the frozen backbone's features of its evaluation view.

One forward pass gives two vectors per image:

* ``pooled``: every stage and the pool (``forward_frozen(x, num_stages)``), what a linear
  probe reads: the input of the label check and the outlier check;
* ``taps``: the spatial mean of every stage's output before the last (what a multi-layer
  probe, ``probe.layers: all``, reads beside ``pooled``): colour and texture that the last
  stage has abstracted away.  The outlier check reads it too: a blank frame or a screenshot
  among photos of objects on plain backgrounds is close to them in ``pooled`` and far in
  ``taps`` + ``pooled`` (docs/audit.md has the measurements);
* ``regional``: the output of the stage before the last, averaged over a 4 x 4 grid of
  regions and flattened, what the near-duplicate check compares.  It keeps where things are
  and finer detail than the pool, so a resized, re-encoded or slightly cropped copy stays
  close to its original while two photos of the same kind do not (docs/audit.md has the
  measurements).  Wider than ``MAX_REGIONAL`` it is projected to that many dimensions by a
  fixed Gaussian matrix (cosines are kept within a few percent), so memory per image is
  bounded whatever the architecture.

Beside the features, ``thumbs``: each view in grey, averaged down to 32 x 32 pixels (1 KB an
image), what the near-duplicate check compares where features cannot vouch for a pair (two
outliers: a blank frame and a text page are alike to the backbone, not in pixels).

Images are read batch by batch, so memory holds the features and one batch of pixels, never
a split's pixels; the features, their count known (:func:`files_features`), are written into
place batch by batch, held once (:class:`FeatureRows`).  :func:`folder_batches` decodes the files
as preprocess decodes val and test (``eval_view_of``): the audit stage and ``finetuner
audit`` read the images themselves, not the prepared arrays, so changing augmentation
(``preprocess.*``) does not rerun the audit.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..data.images import ImageError
from ..data.views import AFTER_SPLIT, changed_after_split, eval_view_of
from ..models import StagedClassifier, member_names, stage_tap

REGION_GRID = 4
MAX_REGIONAL = 2048
THUMB_SIDE = 32
GREY = (0.299, 0.587, 0.114)  # ITU-R 601-2 luma, as PIL's convert("L")


def audit_arch(arch: str) -> str:
    """The backbone whose features the audit reads for ``model.arch``: ``arch`` itself, or an
    ensemble's first member (``a+b+c`` -> ``a``), at the ensemble's input size.  Measured on
    the shared sets, the first member of the photos preset (Lite0) finds as many injected
    faults as the three members' features side by side, at a quarter of their cost
    (docs/audit.md)."""
    return member_names(arch)[0]


@dataclass(frozen=True)
class Features:
    """Per image, in order: ``pooled`` (N, D), ``regional`` (N, R) and ``taps`` (N, T)
    float32, and ``thumbs`` (N, P) uint8, each view's grey thumbnail flattened (P =
    ``THUMB_SIDE ** 2``); ``taps`` has T = 0 columns where the stages' outputs are not feature
    maps (or were not computed), ``thumbs`` P = 0 where no thumbnails were made."""
    pooled: np.ndarray
    regional: np.ndarray
    taps: np.ndarray | None = None
    thumbs: np.ndarray | None = None

    def __post_init__(self):
        if self.taps is None:
            object.__setattr__(self, "taps", np.zeros((len(self.pooled), 0), np.float32))
        if self.thumbs is None:
            object.__setattr__(self, "thumbs", np.zeros((len(self.pooled), 0), np.uint8))

    def __len__(self) -> int:
        return len(self.pooled)

    def every_stage(self) -> np.ndarray:
        """``taps`` and ``pooled`` side by side (N, T + D): what a multi-layer probe reads."""
        return np.concatenate([self.taps, self.pooled], 1)

    @staticmethod
    def concatenate(parts: list["Features"]) -> "Features":
        """One after another; parts without images (an empty split) are left out."""
        parts = [p for p in parts if len(p)] or parts[:1]
        return Features(*(np.concatenate([getattr(p, name) for p in parts])
                          for name in ("pooled", "regional", "taps", "thumbs")))


def _projection(width: int) -> torch.Tensor:
    """The fixed (width, MAX_REGIONAL) Gaussian projection (seeded: the same every run)."""
    generator = torch.Generator().manual_seed(0)
    return torch.randn(width, MAX_REGIONAL, generator=generator) / MAX_REGIONAL ** 0.5


def _regional(x: torch.Tensor, pooled: torch.Tensor, projection: dict) -> torch.Tensor:
    if x.ndim != 4:  # not a feature map (N, C, H, W): the pooled vector stands in
        return pooled
    regions = F.adaptive_avg_pool2d(x.float(), REGION_GRID).flatten(1)
    if regions.shape[1] <= MAX_REGIONAL:
        return regions
    if "matrix" not in projection:
        projection["matrix"] = _projection(regions.shape[1]).to(regions.device)
    return regions @ projection["matrix"]


def thumbnails(images: torch.Tensor) -> np.ndarray:
    """(B, THUMB_SIDE ** 2) uint8: each of ``images`` (B, 3, H, W) uint8 in grey (:data:`GREY`),
    averaged over a ``THUMB_SIDE`` x ``THUMB_SIDE`` grid of areas, rounded, flattened."""
    weights = torch.tensor(GREY).view(1, 3, 1, 1)
    grey = (images.float() * weights).sum(1, keepdim=True)
    small = F.adaptive_avg_pool2d(grey, THUMB_SIDE).round().clamp(0, 255)
    return small.flatten(1).to(torch.uint8).numpy()


class FeatureRows:
    """One (N, width) array gathered batch by batch (:meth:`add`), of ``dtype``: with ``count``
    (N) known, each batch is written into place in one array allocated at the first batch, so
    the rows are held once; without, the batches are kept and joined at the end (held twice
    while they are joined)."""

    def __init__(self, dtype: type, count: int | None = None):
        self.dtype, self.count, self.parts, self.filled = dtype, count, [], 0

    def add(self, part: np.ndarray) -> None:
        if self.count is None:
            self.parts.append(part)
            return
        if self.filled + len(part) > self.count:
            raise ValueError(f"more than the {self.count} rows announced")
        if not self.parts:
            self.parts.append(np.empty((self.count,) + part.shape[1:], self.dtype))
        self.parts[0][self.filled:self.filled + len(part)] = part
        self.filled += len(part)

    def array(self) -> np.ndarray:
        """The rows added, in order (a batch at least: the width is the first batch's)."""
        if self.count is None:
            return np.concatenate(self.parts).astype(self.dtype, copy=False)
        if self.filled != self.count:
            raise ValueError(f"{self.filled} rows where {self.count} were announced")
        return self.parts[0]


@torch.no_grad()
def image_features(model: StagedClassifier, batches: Iterable, device: torch.device | None = None,
                   progress: Callable[[int], None] | None = None,
                   count: int | None = None) -> Features:
    """:class:`Features` of ``batches``: uint8 tensors or arrays (B, H, W, 3); ``progress(n)``
    is called with each batch's size.  ``count``: how many images the batches hold, if known,
    so that the features are written into place, held once (:class:`FeatureRows`)."""
    device = device or torch.device("cpu")
    model.eval().to(device)
    pooled, regional, taps = (FeatureRows(np.float32, count) for _ in range(3))
    thumbs, projection = FeatureRows(np.uint8, count), {}
    for batch in batches:
        images = torch.as_tensor(np.asarray(batch)).permute(0, 3, 1, 2)
        thumbs.add(thumbnails(images))  # on the host, before the pixels move
        pool, tapped, before_last = _forward(model, images.to(device))
        pooled.add(pool.cpu().numpy())
        taps.add(torch.cat(tapped, 1).cpu().numpy() if tapped else np.zeros((len(pool), 0)))
        regional.add(_regional(before_last, pool, projection).cpu().numpy())
        if progress:
            progress(len(images))
    if not pooled.parts:  # no batch: the regional width is unknown, 0 (concatenate skips it)
        if count:
            raise ValueError(f"no batch where {count} images were announced")
        return Features(np.zeros((0, model.classifier.in_features), np.float32),
                        np.zeros((0, 0), np.float32))
    return Features(*(rows.array() for rows in (pooled, regional, taps, thumbs)))


def _forward(model: StagedClassifier, images: torch.Tensor
             ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    """The pool (float), the taps of every stage before the last, and the output of the stage
    before the last (one stage: the pool) of a batch."""
    last = model.num_stages - 1
    tapped, before_last = [], None
    for stage, x in enumerate(model.stage_outputs(images)):
        if stage < last:
            tapped += [stage_tap(x.float())] if x.ndim == 4 else []
            before_last = x
    pool = model.pool(x).float()
    return pool, tapped, pool if before_last is None else before_last


class EvalViews(torch.utils.data.Dataset):
    """Item i: the evaluation view (size, size, 3) uint8 of ``paths[i]``, decoded as preprocess
    decodes val and test (a JPEG at the smallest DCT scale that still covers the canvas), so
    the audit sees the pixels the evaluate stage scores.  A file that no longer decodes raises
    :class:`ImageError` naming it (:func:`folder_batches`)."""

    def __init__(self, paths: list[Path], size: int, crop_pct: float, changed: str = AFTER_SPLIT):
        self.paths, self.size, self.crop_pct, self.changed = paths, size, crop_pct, changed

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> np.ndarray | str:
        """The view, or why the file no longer decodes (handed back, not raised: a worker's
        exception would reach the stage wrapped in a traceback)."""
        path = self.paths[index]
        try:
            return eval_view_of(path, self.size, self.crop_pct)
        except ImageError as error:
            return changed_after_split(path, error, self.changed)


def _one_thread(_):
    torch.set_num_threads(1)  # one core per decoding process


def _stack(views: list[np.ndarray | str]) -> torch.Tensor | str:
    failed = [view for view in views if isinstance(view, str)]
    if failed:
        return failed[0]
    return torch.from_numpy(np.stack(views))  # a worker hands it over in shared memory


def folder_batches(paths: list[Path], size: int, crop_pct: float, batch_size: int = 32,
                   workers: int = 0, changed: str = AFTER_SPLIT) -> Iterator[torch.Tensor]:
    """Evaluation views (B, size, size, 3) uint8 of image files, in order (:class:`EvalViews`),
    decoded in ``workers`` DataLoader processes (0: in this one) while the caller computes.
    A file that no longer decodes is an :class:`ImageError` naming it, ``changed`` after the
    reason (what probably happened: the files were checked before)."""
    loader = torch.utils.data.DataLoader(
        EvalViews(list(paths), size, crop_pct, changed), batch_size=batch_size,
        num_workers=workers, collate_fn=_stack, worker_init_fn=_one_thread if workers else None)
    for batch in loader:
        if isinstance(batch, str):
            raise ImageError(batch)
        yield batch


def files_features(model: StagedClassifier, paths: list[Path], size: int, crop_pct: float,
                   device: torch.device, batch_size: int = 32, workers: int = 0,
                   changed: str = AFTER_SPLIT) -> Features:
    """:class:`Features` of image files' evaluation views (:func:`folder_batches` into
    :func:`image_features`), with a progress bar on a terminal: what the audit stage and
    ``finetuner audit`` compute."""
    with tqdm(total=len(paths), desc="audit", unit="image", leave=False, mininterval=1.0,
              disable=None) as bar:  # None: only on a terminal
        batches = folder_batches(paths, size, crop_pct, batch_size, workers, changed)
        return image_features(model, batches, device, bar.update, count=len(paths))
