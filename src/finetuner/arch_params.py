"""The params checks and values that depend on the architecture, and so on the model registry
(torch, timm): kept out of :mod:`finetuner.params`, which imports no model code, so that split
and preprocess validate their params without loading either.

The stages that build or read a model (input_spec, audit, finetune, evaluate) call
:func:`load_arch_params`; the registry's own errors become params errors naming the key.
"""
from __future__ import annotations

from pathlib import Path

from .models.registry import (ArchError, check_arch, get_arch, input_spec, member_names,
                              weights_problem)
from .params import Params, ParamsError, load_params
from .typed_config import fail as _fail


def check_arch_params(params: Params) -> Params:
    """``params``, once model.arch and model.weights are known (else the closest names),
    freeze_depth is within the arch's stages, image_size at least its minimum and
    train.unfreeze_floor at most the frozen depth; raises :class:`ParamsError` otherwise."""
    try:
        check_arch(params.model.arch)
    except ArchError as error:
        raise ParamsError(f"params.yaml: 'model.arch': {error}") from None
    problem = weights_problem(params.model.arch, params.model.weights)
    if problem:
        _fail("model.weights", problem)
    min_size = input_spec(params.model.arch).min_size
    size = params.preprocess.image_size
    if isinstance(size, int) and size < min_size:
        _fail("preprocess.image_size", f"is {size}; {params.model.arch} needs at least "
              f"{min_size} px")
    if len(member_names(params.model.arch)) > 1:
        return params  # an ensemble trains as a probe: nothing is frozen or unfrozen
    stages = get_arch(params.model.arch).num_stages
    if not isinstance(params.freeze_depth, str) and params.freeze_depth > stages:
        _fail("freeze_depth", f"is {params.freeze_depth}; {params.model.arch} has {stages} "
              f"freezable stages, so allowed: 0..{stages} or 'all'")
    depth = freeze_depth(params.freeze_depth, stages)
    if params.train.unfreeze_floor > depth:
        _fail("train.unfreeze_floor", f"is {params.train.unfreeze_floor}; must be <= "
              f"freeze_depth ({depth})")
    return params


def load_arch_params(path: str | Path = "params.yaml") -> Params:
    """:func:`finetuner.params.load_params`, then :func:`check_arch_params`."""
    return check_arch_params(load_params(path))


def freeze_depth(value: int | str, num_stages: int) -> int:
    """freeze_depth as a number of leading stages of a model of ``num_stages`` ("all": every
    one).  Needs no registry: the caller knows the model."""
    return num_stages if value == "all" else int(value)


def image_size(params: Params) -> int:
    """The input size: preprocess.image_size, or the architecture's native size ("auto")."""
    if params.preprocess.image_size == "auto":
        return input_spec(params.model.arch).size
    return int(params.preprocess.image_size)
