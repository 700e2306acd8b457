"""Optimizer parameter groups (discriminative learning rates, no decay on norms and biases)
and learning-rate schedules as a multiplier of each group's base learning rate."""
from __future__ import annotations

import math

import torch
from torch import nn

from ..models import StagedClassifier


def stage_lr(base_lr: float, stage: int, num_stages: int, backbone_lr_mult: float,
             stage_lr_decay: float) -> float:
    """Learning rate of backbone ``stage``: ``lr * backbone_lr_mult * decay**(stages above it)``."""
    return base_lr * backbone_lr_mult * stage_lr_decay ** (num_stages - 1 - stage)


def _split_decay(module: nn.Module) -> tuple[list, list]:
    """(parameters with weight decay, norm and bias parameters without)."""
    decay, no_decay = [], []
    for parameter in module.parameters():
        (no_decay if parameter.ndim <= 1 else decay).append(parameter)
    return decay, no_decay


def module_groups(module: nn.Module, lr: float, weight_decay: float, name: str) -> list[dict]:
    decay, no_decay = _split_decay(module)
    groups = [{"params": decay, "lr": lr, "base_lr": lr, "weight_decay": weight_decay,
               "name": name},
              {"params": no_decay, "lr": lr, "base_lr": lr, "weight_decay": 0.0,
               "name": f"{name} (norm/bias)"}]
    return [g for g in groups if g["params"]]


def stage_groups(model: StagedClassifier, stage: int, lr: float, weight_decay: float,
                 backbone_lr_mult: float, stage_lr_decay: float) -> list[dict]:
    """Parameter groups of one backbone stage."""
    rate = stage_lr(lr, stage, model.num_stages, backbone_lr_mult, stage_lr_decay)
    return module_groups(model.stages[stage], rate, weight_decay, f"stage {stage}")


def make_optimizer(model: StagedClassifier, depth: int, name: str, lr: float, momentum: float,
                   weight_decay: float, backbone_lr_mult: float,
                   stage_lr_decay: float) -> torch.optim.Optimizer:
    """Optimizer over the head (at ``lr``) and every stage from ``depth`` on (discriminative)."""
    head = (nn.ModuleList([model.pool, model.classifier]) if depth < model.num_stages
            else model.classifier)
    groups = module_groups(head, lr, weight_decay, "head")
    for stage in range(depth, model.num_stages):
        groups += stage_groups(model, stage, lr, weight_decay, backbone_lr_mult, stage_lr_decay)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum)
    return torch.optim.AdamW(groups, lr=lr, betas=(momentum, 0.999))


def unfreeze(optimizer: torch.optim.Optimizer, model: StagedClassifier, old_depth: int,
             new_depth: int, lr: float, weight_decay: float, backbone_lr_mult: float,
             stage_lr_decay: float) -> None:
    """Stages ``new_depth`` .. ``old_depth``-1 join ``optimizer`` with their own learning rates
    (and the pool, if it was frozen with every stage)."""
    if old_depth >= model.num_stages:
        for group in module_groups(model.pool, lr, weight_decay, "pool"):
            optimizer.add_param_group(group)
    for stage in range(new_depth, min(old_depth, model.num_stages)):
        for group in stage_groups(model, stage, lr, weight_decay, backbone_lr_mult, stage_lr_decay):
            optimizer.add_param_group(group)


def lr_multiplier(schedule: str, step: int, total_steps: int, steps_per_epoch: int,
                  warmup_steps: int, step_size: int, gamma: float) -> float:
    """The factor applied to every group's base learning rate at optimizer ``step`` (0-based).

    constant: 1 (after linear warmup).  step: ``gamma ** (epoch // step_size)`` (torch's StepLR).
    cosine: linear warmup from 0 to 1 over ``warmup_steps``, then ``(1 + cos(pi t)) / 2``.
    onecycle: cosine up from 1/25 to 1 over the warmup (30 % of the steps if none is set),
    then cosine down to 1/25e4 (torch's OneCycleLR defaults).
    """
    if schedule == "onecycle":
        up = warmup_steps or max(1, int(0.3 * total_steps))
        if step < up:
            t = step / up
            return 1 / 25 + (1 - 1 / 25) * (1 - math.cos(math.pi * t)) / 2
        t = (step - up) / max(1, total_steps - up)
        low = 1 / 25 / 1e4
        return low + (1 - low) * (1 + math.cos(math.pi * min(t, 1.0))) / 2
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if schedule == "constant":
        return 1.0
    if schedule == "step":
        return gamma ** ((step // steps_per_epoch) // step_size)
    t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return (1 + math.cos(math.pi * min(t, 1.0))) / 2


def set_lr(optimizer: torch.optim.Optimizer, multiplier: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * multiplier
