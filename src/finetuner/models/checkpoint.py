"""The self-describing checkpoint: weights plus everything needed to use them later.

Saved atomically; loaded with ``weights_only=True`` and checked, so a pickle with code in it,
a truncated file or another architecture's weights is refused with a clear error.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..io import atomic_path
from .classifier import StagedClassifier
from .registry import ArchError, build_model, check_arch

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


_FIELDS = {"arch": str, "class_names": list, "image_size": int, "crop_pct": float,
           "state_dict": dict}


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Load and check ``path``; raises :class:`CheckpointError` saying what is wrong with it.

    Nothing in the file is executed: ``torch.load(weights_only=True)`` only rebuilds tensors
    and plain containers, so a pickle that would run code is refused, not run.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, not a checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file (run the finetune stage)")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes); not a checkpoint")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # UnpicklingError for code, RuntimeError/EOFError for truncation
        text = str(error).strip()
        reason = text.splitlines()[0][:300] if text else "no detail"
        if "weights only load failed" in text.lower() or "unsupported global" in text.lower():
            reason = ("it holds Python objects or code, not only weights"
                      + _unsupported_global(text))
        elif any(w in text for w in ("central directory", "PytorchStreamReader", "EOF")) or \
                isinstance(error, EOFError):
            reason = f"the file is truncated or corrupt: {reason[:120]}"
        raise CheckpointError(f"{path}: not a loadable checkpoint ({type(error).__name__}: "
                              f"{reason}); only plain weights files are accepted, nothing in "
                              "the file was executed") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        what = (f"format {payload.get('format')!r}" if isinstance(payload, dict) and
                "format" in payload else f"a {type(payload).__name__} without a format tag")
        raise CheckpointError(f"{path}: not a {FORMAT} file ({what}); models/model.pt written "
                              "by the finetune stage is one")
    for key, kind in _FIELDS.items():
        value = payload.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise CheckpointError(f"{path}: field {key!r} is missing or not a {kind.__name__} "
                                  f"({type(value).__name__}); the file is damaged")
    if not payload["class_names"] or not all(isinstance(c, str) for c in payload["class_names"]):
        raise CheckpointError(f"{path}: field 'class_names' must be a non-empty list of names")
    if not all(isinstance(v, torch.Tensor) for v in payload["state_dict"].values()):
        raise CheckpointError(f"{path}: 'state_dict' holds something other than tensors")
    try:
        check_arch(payload["arch"])
    except ArchError as error:
        raise CheckpointError(f"{path}: architecture {error}") from None
    try:
        model = build_model(payload["arch"], "none", len(payload["class_names"]))
        model.load_state_dict(payload["state_dict"])
    except (KeyError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"{path}: weights do not match architecture "
                              f"{payload.get('arch')!r} with {len(payload['class_names'])} "
                              f"classes (a checkpoint of an older finetuner that cut the "
                              f"network into other stages? `dvc repro` retrains it): "
                              f"{str(error)[:500]}") from None
    model.to(device).eval()
    info = payload.get("info")
    return Checkpoint(model, payload["arch"], list(payload["class_names"]),
                      payload["image_size"], payload["crop_pct"],
                      info if isinstance(info, dict) else {})


def _unsupported_global(text: str) -> str:
    """The refused global named in torch's message (e.g. ``posix.system``), if any."""
    found = re.search(r"unsupported (?:global:? )?GLOBAL ([\w.]+)", text, re.IGNORECASE)
    return f" (refused: {found.group(1)})" if found else ""
