"""torchvision's classification models, by family: a table of how to cut each family's network
into stages; weights from torchvision's own enums (``DEFAULT``, ``IMAGENET1K_V1``, ...), fetched
once into torch's hub cache (offline: an error naming the file and where to put it)."""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .spec import IMAGENET_MEAN, IMAGENET_STD, ArchSpec, Parts, WeightsError


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
              nn.Sequential(f.denseblock1, f.transition1),
              nn.Sequential(f.denseblock2, f.transition2),
              nn.Sequential(f.denseblock3, f.transition3), nn.Sequential(f.denseblock4, f.norm5)]
    return Parts(("stem", "block1", "block2", "block3", "block4"), stages,
                 nn.Sequential(nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(1)),
                 m.classifier.in_features)


# family (a model-name prefix) -> how to cut it into stages
FAMILIES: dict[str, Callable[[nn.Module], Parts]] = {
    "resnet": _cut_resnet, "resnext": _cut_resnet, "wide_resnet": _cut_resnet,
    "regnet": _cut_regnet,
    "efficientnet": _cut_features_classifier, "mobilenet": _cut_features_classifier,
    "convnext": _cut_features_classifier, "vgg": _cut_features_classifier,
    "alexnet": _cut_features_classifier,
    "densenet": _cut_densenet,
}


def family(name: str) -> str | None:
    return next((f for f in sorted(FAMILIES, key=len, reverse=True) if name.startswith(f)), None)


@functools.cache
def names() -> tuple[str, ...]:
    import torchvision
    return tuple(n for n in torchvision.models.list_models(module=torchvision.models) if family(n))


def _cache_path(url: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def spec(name: str) -> ArchSpec:
    import torchvision
    enum = torchvision.models.get_model_weights(name)
    default = enum.DEFAULT
    crop = default.transforms().crop_size[0]
    resize = default.transforms().resize_size[0]

    def load(model, weights_name):
        weights = enum[weights_name]
        cached = _cache_path(weights.url)
        try:
            state = weights.get_state_dict(progress=False, check_hash=False, weights_only=True)
        except Exception as error:  # no network, proxy, disk: all mean "put the file there"
            raise WeightsError(
                f"cannot get {name} weights {weights_name} ({error.__class__.__name__}: {error}). "
                f"Download {weights.url} on a machine with internet and put it at {cached} "
                f"(torch's hub cache; TORCH_HOME moves it), or set model.weights (the CLI: "
                f"--weights) to a local state-dict file or to none") from None
        model.load_state_dict(state)

    def local(weights_name):
        path = _cache_path(enum[weights_name].url)
        return path if path.is_file() else None

    return ArchSpec(name=name, family=family(name), source="torchvision", input_size=crop,
                    min_size=max(32, default.meta.get("min_size", (32, 32))[0]),
                    mean=IMAGENET_MEAN, std=IMAGENET_STD, crop_pct=crop / resize,
                    build_base=lambda: torchvision.models.get_model(name, weights=None),
                    cut=FAMILIES[family(name)],
                    weight_names=tuple(enum.__members__),
                    load_named_weights=load,
                    weights_location=lambda w: str(_cache_path(enum[w].url)),
                    local_weights=local)
