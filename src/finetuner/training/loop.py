"""The training loop: frozen-prefix feature cache, validation each epoch, best-epoch weights.

Everything a frozen prefix computes is constant across epochs (frozen stages run in eval mode,
and all augmentation happened in preprocess), so it is computed once per stored view, without
autograd, and the trainable rest trains on those outputs.  When the cache would not fit in
``train.feature_cache_gb`` the prefix runs per batch, still without autograd.  Either way the
same batches meet the same weights: caching changes the speed, not what is learned.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..models import StagedClassifier
from ..params import Params
from .freeze import depth_at_epoch, set_frozen_prefix, train_mode
from .optim import lr_multiplier, make_optimizer, set_lr, unfreeze


@dataclass
class TrainData:
    """Preprocessed arrays as tensors: images uint8 (N, H, W, 3); train has ``views`` per image."""
    train_images: torch.Tensor
    train_labels: torch.Tensor
    val_images: torch.Tensor
    val_labels: torch.Tensor
    views: int
    num_classes: int


@dataclass
class FitResult:
    history: list[dict]
    best_epoch: int
    best_state: dict
    stopped_early: bool
    seconds: float
    lrs: list[list[float]] = field(default_factory=list)  # per epoch, each group's starting lr


def to_nchw(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 NHWC -> uint8 NCHW in channels_last memory (the fast layout on CPU and GPU)."""
    return images.to(device, non_blocking=True).permute(0, 3, 1, 2)


class FrozenPrefix:
    """Outputs of the frozen part for a set of stored images: cached, or computed per batch."""

    def __init__(self, model: StagedClassifier, images: torch.Tensor, depth: int,
                 device: torch.device, budget_bytes: float, batch_size: int = 64):
        self.model, self.images, self.depth, self.device = model, images, depth, device
        self.cache = None
        if depth == 0:  # only normalisation: cheaper to redo than to store as floats
            return
        with torch.no_grad():
            sample = model.forward_frozen(to_nchw(images[:1], device), depth)
        if sample.numel() * sample.element_size() * len(images) <= budget_bytes:
            self.cache = torch.cat([self._compute(images[i:i + batch_size])
                                    for i in range(0, len(images), batch_size)])

    @torch.no_grad()
    def _compute(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.forward_frozen(to_nchw(images, self.device), self.depth)

    def __call__(self, index: torch.Tensor) -> torch.Tensor:
        if self.cache is not None:
            return self.cache[index.to(self.cache.device)]
        return self._compute(self.images[index])


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


@torch.no_grad()
def evaluate_split(model: StagedClassifier, prefix: FrozenPrefix, labels: torch.Tensor,
                   batch_size: int, device: torch.device) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of ``model`` in eval mode."""
    model.eval()
    total_loss, correct = 0.0, 0
    for start in range(0, len(labels), batch_size):
        index = torch.arange(start, min(start + batch_size, len(labels)))
        target = labels[index].to(device)
        logits = model.forward_trainable(prefix(index), prefix.depth)
        total_loss += F.cross_entropy(logits.float(), target, reduction="sum").item()
        correct += (logits.argmax(1) == target).sum().item()
    return total_loss / max(1, len(labels)), correct / max(1, len(labels))


def _better(monitor: str, value: float, best: float | None) -> bool:
    if best is None:
        return True
    return value > best if monitor == "val_acc" else value < best


def fit(model: StagedClassifier, data: TrainData, params: Params, device: torch.device,
        progress: bool = True, use_cache: bool = True) -> FitResult:
    """Train ``model`` in place; return the history and the best epoch's weights."""
    t = params.train
    start_time = time.perf_counter()
    model.to(device).to(memory_format=torch.channels_last)
    num_stages = model.num_stages
    freeze_depth = params.resolved_freeze_depth
    depth_of = lambda epoch: depth_at_epoch(epoch, freeze_depth, num_stages, t.head_epochs,
                                            t.unfreeze_every, t.unfreeze_floor)
    n_train = len(data.train_labels)
    steps_per_epoch = max(1, math.ceil(n_train / t.batch_size))
    total_steps = steps_per_epoch * t.epochs
    weight = (class_weights(data.train_labels, data.num_classes).to(device)
              if t.class_balance == "weighted_loss" else None)
    budget = t.feature_cache_gb * 1e9 if use_cache else 0.0
    view_labels = data.train_labels.repeat_interleave(data.views)
    multiplier = lambda step: lr_multiplier(t.schedule, step, total_steps, steps_per_epoch,
                                            t.warmup_epochs * steps_per_epoch, t.step_size, t.gamma)

    depth = depth_of(0)
    set_frozen_prefix(model, depth)
    optimizer = make_optimizer(model, depth, t.optimizer, params.lr, t.momentum, t.weight_decay,
                               t.backbone_lr_mult, t.stage_lr_decay)
    train_prefix = val_prefix = None
    history, lrs, best_value, best_epoch, best_state, stale = [], [], None, 0, None, 0
    stopped_early = False
    step = 0
    bar = tqdm(total=total_steps, desc="finetune", unit="batch", disable=not progress,
               mininterval=1.0, leave=False)
    for epoch in range(t.epochs):
        new_depth = depth_of(epoch)
        if new_depth != depth or train_prefix is None:
            if new_depth < depth:
                unfreeze(optimizer, model, depth, new_depth, params.lr, t.weight_decay,
                         t.backbone_lr_mult, t.stage_lr_decay)
            depth = new_depth
            set_frozen_prefix(model, depth)
            model.eval()
            train_prefix = FrozenPrefix(model, data.train_images, depth, device, budget)
            val_prefix = FrozenPrefix(model, data.val_images, depth, device, budget)
        epoch_start = time.perf_counter()
        train_mode(model, depth)
        order = epoch_order(data.train_labels, data.views, epoch, params.seed,
                            t.class_balance == "sampler")
        set_lr(optimizer, multiplier(step))
        lrs.append([g["lr"] for g in optimizer.param_groups])  # what the optimizer really holds
        total_loss, correct, seen = 0.0, 0, 0
        batches = [order[i:i + t.batch_size] for i in range(0, len(order), t.batch_size)]
        if len(batches) > 1 and len(batches[-1]) == 1:  # BatchNorm cannot train on one sample
            batches.pop()
        for index in batches:
            set_lr(optimizer, multiplier(step))
            target = view_labels[index].to(device)
            logits = model.forward_trainable(train_prefix(index), depth)
            loss = F.cross_entropy(logits.float(), target, weight=weight,
                                   label_smoothing=t.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            total_loss += loss.item() * len(index)
            correct += (logits.argmax(1) == target).sum().item()
            seen += len(index)
            bar.update()
        val_loss, val_acc = evaluate_split(model, val_prefix, data.val_labels, 256, device)
        record = {"epoch": epoch + 1, "frozen_stages": depth, "lr": lrs[-1][0],
                  "train_loss": total_loss / max(1, seen), "train_acc": correct / max(1, seen),
                  "val_loss": val_loss, "val_acc": val_acc,
                  "seconds": time.perf_counter() - epoch_start}
        history.append(record)
        bar.set_postfix(epoch=epoch + 1, val_acc=f"{val_acc:.3f}", refresh=False)
        value = record[t.monitor]
        if _better(t.monitor, value, best_value):
            best_value, best_epoch, stale = value, epoch + 1, 0
            best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
        else:
            stale += 1
            if t.early_stopping_patience and stale >= t.early_stopping_patience:
                stopped_early = True
                break
    bar.close()
    model.load_state_dict(best_state)
    return FitResult(history, best_epoch, best_state, stopped_early,
                     time.perf_counter() - start_time, lrs)

