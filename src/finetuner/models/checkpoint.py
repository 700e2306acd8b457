"""The self-describing checkpoint: weights plus everything needed to use them later.

Saved atomically; loaded with ``weights_only=True`` and checked, so a pickle with code in it,
a truncated file or another architecture's weights is refused with a clear error.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..io import atomic_path
from .classifier import StagedClassifier
from .registry import build_model, check_arch

FORMAT = "finetuner-checkpoint/1"


class CheckpointError(ValueError):
    """A file that is not a usable checkpoint of this project."""


@dataclass(frozen=True)
class Checkpoint:
    model: StagedClassifier
    arch: str
    class_names: list[str]
    image_size: int
    crop_pct: float
    info: dict  # params used, best epoch, training time, ...


def save_checkpoint(path: str | Path, model: StagedClassifier, arch: str, class_names: list[str],
                    image_size: int, crop_pct: float, info: dict) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    payload = {"format": FORMAT, "arch": arch, "class_names": list(class_names),
               "image_size": int(image_size), "crop_pct": float(crop_pct),
               "mean": model.mean.flatten().tolist(), "std": model.std.flatten().tolist(),
               "info": info, "state_dict": state}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # UnpicklingError for code, RuntimeError/EOFError for truncation
        reason = str(error).strip().splitlines()[0][:300]
        raise CheckpointError(f"{path}: not a loadable checkpoint ({type(error).__name__}: "
                              f"{reason}); only plain weights files are accepted") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a {FORMAT} file (models/model.pt written by the "
                              "finetune stage is one)")
    try:
        check_arch(payload["arch"])
        model = build_model(payload["arch"], "none", len(payload["class_names"]))
        model.load_state_dict(payload["state_dict"])
    except (KeyError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"{path}: weights do not match architecture "
                              f"{payload.get('arch')!r}: {str(error)[:500]}") from None
    model.to(device).eval()
    return Checkpoint(model, payload["arch"], list(payload["class_names"]),
                      payload["image_size"], payload["crop_pct"], payload.get("info", {}))
