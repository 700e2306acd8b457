"""Shared fixtures: tiny image folders made on the fly (nothing stored in git)."""
from __future__ import annotations

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


@pytest.fixture
def image_folder(tmp_path) -> Path:
    return make_image_folder(tmp_path / "images", {"red": 10, "green": 10, "blue": 10})
