"""The random changes a training image goes through, stored ahead or drawn fresh every epoch.

One recipe, :class:`Augmentation`, serves both preprocess modes:

* stored views (``preprocess.train_views: K >= 1``): preprocess draws K-1 augmented views per
  photo once, and training picks one per epoch (a frozen-feature cache can keep their outputs);
* online (``train_views: 0``): preprocess stores one *canvas* per photo (short side resized to
  ``image_size / crop_pct``, centre square: the evaluation view before its crop), and
  :class:`AugmentedRows` draws a fresh view from it every epoch; batch-level MixUp / CutMix
  (:class:`BatchMix`) are possible only here.

Every draw is seeded by (seed, epoch, row), never by the process's random state: the same
batches whatever the number of loader workers, and the training loop's own random state (
dropout, order) is left as it was.  The transforms are torchvision.transforms.v2's, which take
PIL images in preprocess and uint8 tensors here alike.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torchvision.transforms import v2 as T

from ..params import PreprocessParams
from .rows import Rows, as_index

AUTO_AUGMENT = {"none": None, "trivial": T.TrivialAugmentWide, "randaugment": T.RandAugment}


_DEFAULTS = PreprocessParams()  # one set of default numbers: the params'


@dataclass(frozen=True)
class Augmentation:
    """Per image: random resized crop (area fraction ``crop_scale``), flip, rotation (degrees),
    colour jitter, and an automatic policy (``auto_augment``); per batch, online only: MixUp and
    CutMix with these Beta(alpha, alpha) strengths (0: off; both: one of them per batch).
    The defaults are :class:`finetuner.params.PreprocessParams`'s."""
    crop_scale: tuple[float, float] = _DEFAULTS.crop_scale
    hflip: bool = _DEFAULTS.hflip
    rotation: float = _DEFAULTS.rotation
    color_jitter: float = _DEFAULTS.color_jitter
    auto_augment: str = _DEFAULTS.auto_augment
    mixup: float = _DEFAULTS.mixup
    cutmix: float = _DEFAULTS.cutmix

    @classmethod
    def from_params(cls, p) -> "Augmentation":
        """From :class:`finetuner.params.PreprocessParams` (or the dict in prepared meta)."""
        get = p.get if isinstance(p, dict) else lambda key: getattr(p, key)
        return cls(tuple(get("crop_scale")), bool(get("hflip")), float(get("rotation")),
                   float(get("color_jitter")), get("auto_augment"), float(get("mixup")),
                   float(get("cutmix")))

    def to_dict(self) -> dict:
        return {**asdict(self), "crop_scale": list(self.crop_scale)}


def train_transform(size: int, augmentation: Augmentation) -> T.Compose:
    """One image (PIL or uint8 CHW tensor) -> a random ``size`` x ``size`` training view."""
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
    policy = AUTO_AUGMENT[augmentation.auto_augment]
    if policy is not None:
        steps.append(policy(interpolation=T.InterpolationMode.BILINEAR))
    return T.Compose(steps)


def draw_seed(*parts: int) -> int:
    """A 31-bit seed from integers (Python hashes int tuples the same in every process)."""
    return hash(parts) & 0x7FFF_FFFF


class AugmentedRows(Rows):
    """A fresh random ``size`` x ``size`` view of each of ``source``'s rows (canvases, or stored
    views) every epoch: row r of epoch e is drawn with seed (seed, salt, e, r)."""
    fixed = False

    def __init__(self, source: Rows, size: int, augmentation: Augmentation, seed: int,
                 salt: int = 0):
        self.source, self.seed, self.salt, self.epoch = source, seed, salt, 0
        self.size, self.augmentation = size, augmentation
        self.row_shape = (size, size, source.row_shape[-1])
        self.transform = train_transform(size, augmentation)

    def __len__(self) -> int:
        return len(self.source)

    def over(self, source: Rows, salt: int) -> "AugmentedRows":
        """The same recipe and seed over other rows (``salt`` keeps their draws apart)."""
        rows = AugmentedRows(source, self.size, self.augmentation, self.seed, salt)
        rows.epoch = self.epoch
        return rows

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def take(self, index, pin: bool = False) -> torch.Tensor:
        rows = as_index(index, len(self))
        images = self.source.take(rows).permute(0, 3, 1, 2)
        out = self._out(len(rows), pin)
        with torch.random.fork_rng(devices=[]):
            for i, (row, image) in enumerate(zip(rows.tolist(), images)):
                torch.manual_seed(draw_seed(self.seed, self.salt, self.epoch, row))
                out[i] = self.transform(image).permute(1, 2, 0)
        return out


class BatchMix:
    """MixUp and/or CutMix of a batch (torchvision.transforms.v2): uint8 NHWC images and class
    indices in; float [0, 1] NHWC images and soft targets (N, classes) out."""

    def __init__(self, augmentation: Augmentation, num_classes: int):
        choices = ([T.MixUp(alpha=augmentation.mixup, num_classes=num_classes)]
                   if augmentation.mixup else [])
        choices += ([T.CutMix(alpha=augmentation.cutmix, num_classes=num_classes)]
                    if augmentation.cutmix else [])
        self.mix = T.RandomChoice(choices) if len(choices) > 1 else choices[0]

    @staticmethod
    def wanted(augmentation: Augmentation) -> bool:
        return bool(augmentation.mixup or augmentation.cutmix)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor,
                 seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            mixed, targets = self.mix(images.permute(0, 3, 1, 2).float().div_(255), labels)
        return mixed.permute(0, 2, 3, 1), targets
