"""Several backbones, one prediction: the mean of their class probabilities.

A :class:`ProbeEnsemble` holds one :class:`~finetuner.models.classifier.StagedClassifier` per
backbone, each with its own head, all fed the same input images (one size for all: the
largest native size among them).  Its output is the logarithm of the members' mean class
probabilities, so ``softmax(output)`` is that mean and ``argmax`` the ensemble's class: it
stands wherever a model's logits are read (evaluation, calibration, ONNX export).

Invariants: members are trained independently (as linear probes, each with its own L2
strength), none sees another's output, and averaging gives each the same weight.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .classifier import StagedClassifier


class ProbeEnsemble(nn.Module):
    def __init__(self, members: list[StagedClassifier]):
        super().__init__()
        if len(members) < 2 or len({m.num_classes for m in members}) != 1:
            raise ValueError("an ensemble needs two or more members with the same classes")
        self.members = nn.ModuleList(members)

    @property
    def num_classes(self) -> int:
        return self.members[0].num_classes

    @property
    def layers(self) -> str:
        return self.members[0].layers

    @property
    def mean(self) -> torch.Tensor:  # recorded in checkpoints: the first member's
        return self.members[0].mean

    @property
    def std(self) -> torch.Tensor:
        return self.members[0].std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        log_probs = torch.stack([F.log_softmax(m(images).float(), 1) for m in self.members])
        return torch.logsumexp(log_probs, 0) - math.log(len(self.members))
