"""Shared helpers and fixtures: tiny image folders and training data made on the fly (nothing
stored in git).  Test files import the helpers from here (``from conftest import tiny_data``),
never from one another (tests/test_layout.py checks).  torch is imported only by the helpers that
need it, so test files without torch do not pay for it.
"""
from __future__ import annotations

import fnmatch
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def make_image_folder(root: Path, classes: dict[str, int], size: int = 20, seed: int = 0) -> Path:
    """``classes``: name -> image count; each class gets its own colour so it is learnable."""
    rng = np.random.default_rng(seed)
    for c, (name, count) in enumerate(classes.items()):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        base = np.array([(60 * c) % 256, (200 - 50 * c) % 256, (30 + 90 * c) % 256])
        for i in range(count):
            noise = rng.integers(-25, 25, (size, size, 3))
            pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"img_{i:03d}.png")
    return root


SHAPES = ("circles", "squares", "triangles")


def shapes_image(kind: str, rng: np.random.Generator, size: int = 96) -> Image.Image:
    """Eight to twelve small ``kind`` (one of :data:`SHAPES`) scattered at random on a plain
    background, in random contrasting colours: what an ImageNet backbone tells apart by kind,
    every image distinct, and a resized copy keeps its layout (what a perceptual hash and
    regional features see)."""
    from PIL import ImageDraw
    back = rng.integers(0, 256, 3)
    image = Image.new("RGB", (size, size), tuple(int(c) for c in back))
    draw = ImageDraw.Draw(image)
    fill = tuple(int(c) for c in 255 - back)
    for _ in range(int(rng.integers(8, 13))):
        cx, cy = rng.integers(8, size - 8, 2).tolist()
        r = int(rng.integers(4, 9))
        if kind == "circles":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        elif kind == "squares":
            draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
        else:
            draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    return image


def make_shapes_folder(root: Path, count: int, size: int = 96, seed: int = 0) -> Path:
    """``count`` :func:`shapes_image` JPEGs in each of the class folders :data:`SHAPES`."""
    rng = np.random.default_rng(seed)
    for kind in SHAPES:
        (root / kind).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            shapes_image(kind, rng, size).save(root / kind / f"img_{i:03d}.jpg", quality=95)
    return root


def jpeg_copy(image: Image.Image, scale: float = 0.8, quality: int = 70) -> Image.Image:
    """A near-duplicate of ``image``: resized by ``scale``, re-encoded as JPEG."""
    import io
    w, h = image.size
    buffer = io.BytesIO()
    image.resize((round(w * scale), round(h * scale)), Image.BICUBIC).save(
        buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


PROJECT_FILES = ["dvc.yaml", "params.yaml", "stages", "src", ".dvcignore"]


def copy_project(repo: Path) -> Path:
    """The pipeline's files (not its data or outputs) copied into ``repo``."""
    repo.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, repo / name)
    return repo


def noise_prepared(folder: Path, counts: dict[str, int], classes=("a", "b", "c"),
                   size: int = 32) -> Path:
    """A prepared folder (as the preprocess stage writes it) of random pixels: ``counts``
    images per split, labels cycling through ``classes``."""
    from finetuner.io import write_json
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, count in counts.items():
        np.save(folder / f"{split}_images.npy",
                rng.integers(0, 255, (count, size, size, 3), dtype=np.uint8))
        np.save(folder / f"{split}_labels.npy", np.arange(count) % len(classes))
    write_json(folder / "meta.json", {"classes": list(classes), "image_size": size,
                                      "crop_pct": 0.875, "train_views": 1})
    return folder


def load_stage(name: str):
    """The module of ``stages/<name>.py`` (stage scripts are not a package), to call its main."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(f"stage_{name}", ROOT / "stages" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def ignored(name: str) -> bool:
    """Whether the project's .gitignore hides ``name`` (so neither git nor `dvc exp` sees it)."""
    patterns = [line.strip() for line in (ROOT / ".gitignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    return any(fnmatch.fnmatch(name, p.strip("/")) for p in patterns)


def tiny_data(n_per_class=6, classes=3, views=2, size=32, seed=0):
    """A :class:`~finetuner.training.batches.TrainData` of noisy solid colours, one per class."""
    import torch
    from finetuner.training.batches import TrainData
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    colours = torch.tensor([[220, 30, 30], [30, 220, 30], [30, 30, 220]])[:classes]

    def images(lab, k):
        base = colours[lab].repeat_interleave(k, 0)[:, None, None, :].float()
        noise = torch.randint(-30, 30, (len(base), size, size, 3), generator=g)
        return (base + noise).clamp(0, 255).to(torch.uint8)

    return TrainData(images(labels, views), labels, images(labels, 1), labels.clone(), views, classes)


def fit_tiny(overrides: dict, data=None, use_cache=True, arch="resnet18"):
    """``fit`` a randomly initialised ``arch`` (3 classes, 32 px, 3 epochs of batch 8, lr 0.01,
    constant schedule: fixed here, not taken from the params defaults) on :func:`tiny_data`,
    params ``overrides`` on top; returns ``(model, result)``."""
    import torch
    from finetuner.models import build_model
    from finetuner.params import parse_params
    from finetuner.training.loop import fit
    raw = {"lr": 0.01, "model": {"arch": arch, "weights": "none"}, "preprocess": {"image_size": 32},
           "train": {"epochs": 3, "batch_size": 8, "schedule": "constant"}}
    for key, value in overrides.items():
        if isinstance(value, dict):
            raw.setdefault(key, {}).update(value)
        else:
            raw[key] = value
    params = parse_params(raw)
    torch.manual_seed(params.seed)
    model = build_model(arch, "none", 3)
    result = fit(model, data or tiny_data(), params, torch.device("cpu"), progress=False,
                 use_cache=use_cache)
    return model, result


@pytest.fixture
def image_folder(tmp_path) -> Path:
    return make_image_folder(tmp_path / "images", {"red": 10, "green": 10, "blue": 10})
