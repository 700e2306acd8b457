"""The uniform model every stage trains and every command loads.

A backbone is cut into freezable *stages* run in order, then a *pool* to a feature vector, then
a new linear *classifier*.  Input normalisation is part of the model, so a checkpoint or an
export takes images as floats in [0, 1] (or uint8) and needs no other preprocessing constants.

``layers``: which pooled features the classifier reads.  ``last``: the pool of the last stage
(the usual head).  ``all``: the global average of every earlier stage's output too,
concatenated before the last stage's pool (mid-level features: edges, textures, parts), as
in Head2Toe (Evci et al., ICML 2022); the linear probe of ``preset: photos`` reads them.  A
model with ``layers: all`` is a probe: it cannot be fine-tuned from a frozen prefix, since the
earlier stages' outputs would be lost.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

LAYERS = ("last", "all")


def stage_tap(x: torch.Tensor) -> torch.Tensor:
    """What ``layers: all`` reads of an earlier stage: its output's global average (N, C, H, W)
    -> (N, C)."""
    return x.mean((2, 3))


class StagedClassifier(nn.Module):
    def __init__(self, stages: list[nn.Module], pool: nn.Module, num_features: int,
                 num_classes: int, mean: tuple[float, ...], std: tuple[float, ...],
                 dropout: float = 0.0, layers: str = "last",
                 stage_channels: tuple[int, ...] = ()):
        """``stage_channels``: each stage's output channels, needed with ``layers: all``."""
        super().__init__()
        if layers not in LAYERS:
            raise ValueError(f"layers is {layers!r}; allowed: {', '.join(LAYERS)}")
        self.layers = layers
        self.pooled_width = num_features  # the last stage's pooled features: the last columns
        if layers == "all":
            num_features += sum(stage_channels[:-1])
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.stages = nn.ModuleList(stages)
        self.pool = pool
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(num_features, num_classes)

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    @property
    def num_classes(self) -> int:
        return self.classifier.out_features

    def trainable_parameters(self, depth: int) -> list[nn.Parameter]:
        """The parameters that train with the first ``depth`` stages frozen: the later stages',
        the pool's while any stage trains (e.g. ConvNeXt's LayerNorm before the head), the
        classifier's always.  The one statement of the freezing rule
        (:func:`finetuner.training.freeze.set_frozen_prefix` applies it)."""
        parts = [*self.stages[depth:], *([self.pool] if depth < self.num_stages else []),
                 self.classifier]
        return [parameter for part in parts for parameter in part.parameters()]

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 or [0, 1] float images (N, 3, H, W) -> normalised float input of stage 0."""
        if images.dtype == torch.uint8:
            images = images.float().div_(255.0)
        return (images - self.mean) / self.std

    def forward_stages(self, x: torch.Tensor, start: int = 0,
                       stop: int | None = None) -> torch.Tensor:
        """Run stages ``start`` .. ``stop``-1 on a normalised batch or a stage's output."""
        stop = len(self.stages) if stop is None else stop
        for stage in self.stages[start:stop]:
            x = stage(x)
        return x

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """Last stage's output -> class logits."""
        return self.classifier(self.dropout(self.pool(x)))

    def forward_frozen(self, images: torch.Tensor, depth: int) -> torch.Tensor:
        """The part of the forward pass that ``depth`` frozen stages make constant.

        With every stage frozen that includes the pool, so only the classifier is left.
        ``forward_trainable(forward_frozen(x, d), d) == forward(x)``.
        """
        if depth >= self.num_stages:
            return self.features(images)
        if self.layers == "all":
            raise ValueError("a model with layers: all reads every stage's output; it can "
                             "only be trained as a probe (every stage frozen)")
        return self.forward_stages(self.normalize(images), 0, depth)

    def stage_outputs(self, images: torch.Tensor) -> Iterator[torch.Tensor]:
        """Each stage's output in turn, from raw images (one at a time: none is kept)."""
        x = self.normalize(images)
        for stage in self.stages:
            x = stage(x)
            yield x

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The pooled feature vector the classifier reads (see ``layers``)."""
        taps, last = [], self.num_stages - 1
        for i, x in enumerate(self.stage_outputs(images)):
            if self.layers == "all" and i < last:
                taps.append(stage_tap(x))
        return torch.cat(taps + [self.pool(x)], 1) if taps else self.pool(x)

    def forward_trainable(self, x: torch.Tensor, depth: int) -> torch.Tensor:
        if depth >= self.num_stages:
            return self.classifier(self.dropout(x))
        return self.forward_head(self.forward_stages(x, depth))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.features(images)))
