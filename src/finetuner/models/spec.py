"""What the pipeline knows about one architecture (:class:`ArchSpec`), shared by every source.

A source module (``torchvision_archs``, ``timm_archs``) turns a name into an ArchSpec from its
own tables; :mod:`.registry` looks names up across the sources.  Nothing here imports a source.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class WeightsError(RuntimeError):
    """Pretrained weights cannot be had, or do not fit the architecture."""


@dataclass(frozen=True)
class Parts:
    """A base network cut into the pieces of a :class:`StagedClassifier`: ``stages`` run in
    order, then ``pool`` gives a ``num_features`` vector for the new head."""
    stage_names: tuple[str, ...]
    stages: list[nn.Module]
    pool: nn.Module
    num_features: int
    dropout: float = 0.0


@dataclass(frozen=True)
class ArchSpec:
    name: str
    family: str
    source: str  # "timm" or "torchvision"
    input_size: int
    min_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop_pct: float
    build_base: Callable[[], nn.Module]
    cut: Callable[[nn.Module], Parts]
    weight_names: tuple[str, ...]
    load_named_weights: Callable[[nn.Module, str], None]
    weights_location: Callable[[str], str]
    local_weights: Callable[[str], Path | None]  # the file here, or None: a download is needed

    def build_skeleton(self) -> nn.Module:
        """The base network's structure, for counting stages and parameters, not for computing."""
        try:
            with torch.device("meta"):  # no memory, no init: only the structure is needed
                return self.build_base()
        except NotImplementedError:  # builders that compute with tensors need real ones
            return self.build_base()

    @functools.cached_property
    def stage_names(self) -> tuple[str, ...]:
        return self.cut(self.build_skeleton()).stage_names

    @property
    def num_stages(self) -> int:
        return len(self.stage_names)


def load_by_order(model: nn.Module, state: dict, source: str) -> None:
    """Copy ``state`` into ``model`` tensor by tensor in order, checking every shape."""
    target = model.state_dict()
    if len(state) != len(target):
        raise WeightsError(f"{source}: {len(state)} tensors, but {type(model).__name__} has "
                           f"{len(target)}; is it the right architecture?")
    renamed = {}
    for (name, tensor), (their_name, theirs) in zip(target.items(), state.items()):
        if tuple(tensor.shape) != tuple(theirs.shape):
            raise WeightsError(f"{source}: tensor '{their_name}' has shape {tuple(theirs.shape)}, "
                               f"expected {tuple(tensor.shape)} for '{name}'")
        renamed[name] = theirs
    model.load_state_dict(renamed)
