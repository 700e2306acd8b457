"""Which stages train: freezing a prefix, frozen BatchNorm in eval mode, gradual unfreezing."""
from __future__ import annotations

from torch import nn

from ..models import StagedClassifier


def set_frozen_prefix(model: StagedClassifier, depth: int) -> None:
    """Freeze the first ``depth`` stages; what trains is
    :meth:`~finetuner.models.StagedClassifier.trainable_parameters` (the later stages, the pool
    while a stage trains, the classifier)."""
    trainable = {id(parameter) for parameter in model.trainable_parameters(depth)}
    for parameter in model.parameters():
        parameter.requires_grad_(id(parameter) in trainable)


def train_mode(model: StagedClassifier, depth: int, freeze_bn: bool = False) -> None:
    """``model.train()``, except frozen stages stay in eval mode (BatchNorm statistics fixed);
    with ``freeze_bn`` every normalisation layer stays in eval mode (its affine weights still
    train): the features the head was fitted on keep their statistics (Keras' advice for
    fine-tuning on small sets)."""
    model.train()
    for stage in model.stages[:depth]:
        stage.eval()
    if depth >= model.num_stages:
        model.pool.eval()
    if freeze_bn:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._NormBase):
                module.eval()


def depth_at_epoch(epoch: int, freeze_depth: int, num_stages: int, head_epochs: int,
                   unfreeze_every: int, unfreeze_floor: int) -> int:
    """Frozen stages in ``epoch`` (0-based).

    The first ``head_epochs`` epochs train only the head (fastai's two-phase fine_tune); then
    ``freeze_depth`` stages are frozen, and with ``unfreeze_every`` > 0 one more stage from the
    top unfreezes every ``unfreeze_every`` epochs, down to ``unfreeze_floor``.
    """
    if epoch < head_epochs:
        return num_stages
    if unfreeze_every <= 0:
        return freeze_depth
    steps = (epoch - head_epochs) // unfreeze_every
    return max(min(unfreeze_floor, freeze_depth), freeze_depth - steps)
