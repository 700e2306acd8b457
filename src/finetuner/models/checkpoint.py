"""The self-describing checkpoint: weights plus everything needed to use them later.

Saved atomically; loaded with ``weights_only=True`` and checked, so a pickle with code in it,
a truncated file or another architecture's weights is refused with a clear error.  A file that
is no ``torch.save`` file at all is named for what it is (:func:`.file_kinds.file_kind`: an
ONNX model, a TorchScript or ``.pt2`` archive, an image, text, ...) before ``torch.load``
reads it.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

import torch

from ..io import atomic_path
from .classifier import LAYERS, StagedClassifier
from .ensemble import ProbeEnsemble
from .file_kinds import file_kind, load_failure
from .registry import ArchError, build_model, check_arch

FORMAT = "finetuner-checkpoint/1"


class CheckpointError(ValueError):
    """A file that is not a usable checkpoint of this project."""


class TrainingRecord(TypedDict, total=False):
    """A checkpoint's ``info``: how the finetune stage trained it (``stages/finetune.py``
    writes every key; evaluate copies most into eval.json).  Other writers (tests, hand-made
    checkpoints) may leave keys out, so readers use ``.get`` for anything but the first five, which
    the evaluate stage reads after :func:`check_training_record`."""
    history: list[dict]      # one row an epoch: epoch, frozen_stages, lr, train/val loss and acc
    best_epoch: int          # 1-based, into history
    best_val_acc: float      # out-of-fold accuracy for a cross-validated probe
    train_seconds: float     # this process's and any killed, resumed one's
    epochs_run: int
    params: dict             # the params the finetune stage lists in dvc.yaml, as it ran
    strategy: dict           # what was chosen and why: strategy.Outcome.info()
    stopped_early: bool
    device: str
    precision: str           # fp32, bf16 or fp16: what the forward passes ran in
    world_size: int          # data-parallel processes
    threads_per_process: int
    out_of_fold: dict | None  # a cross-validated probe's out-of-fold log-probabilities, labels


RECORD_REQUIRED = ("history", "best_epoch", "best_val_acc", "train_seconds", "epochs_run")


def check_training_record(path: str | Path, info: dict) -> None:
    """The first five keys of :class:`TrainingRecord`, which the evaluate stage reads, present
    (``history`` a non-empty list of epochs, each with its ``frozen_stages``); else a
    :class:`CheckpointError` naming the file and the keys.  The loader does not require them:
    ``predict`` and ``export`` need none."""
    missing = [key for key in RECORD_REQUIRED if key not in info]
    history = info.get("history")
    if "history" not in missing and not (
            isinstance(history, list) and history
            and all(isinstance(row, dict) and "frozen_stages" in row for row in history)):
        missing.append("history's epochs (each with frozen_stages)")
    if missing:
        raise CheckpointError(
            f"{path}: its training record lacks {', '.join(map(repr, missing))}, which the "
            "evaluate stage reports; the finetune stage writes them (python -m finetuner "
            "evaluate CHECKPOINT FOLDER scores a checkpoint without them)")


@dataclass(frozen=True)
class Checkpoint:
    model: StagedClassifier | ProbeEnsemble
    arch: str
    class_names: list[str]
    image_size: int
    crop_pct: float
    info: TrainingRecord


def save_checkpoint(path: str | Path, model: StagedClassifier | ProbeEnsemble, arch: str,
                    class_names: list[str], image_size: int, crop_pct: float,
                    info: TrainingRecord) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    payload = {"format": FORMAT, "arch": arch, "layers": model.layers,
               "class_names": list(class_names),
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
    payload = _read_payload(path)
    _check_fields(path, payload)
    model = _rebuild(path, payload)
    model.to(device).eval()
    info = payload.get("info")
    return Checkpoint(model, payload["arch"], list(payload["class_names"]),
                      payload["image_size"], payload["crop_pct"],
                      info if isinstance(info, dict) else {})


def _read_payload(path: Path) -> dict:
    """The file's tagged dict, read with ``weights_only=True``; a folder, a missing, empty or
    foreign file, or one of another format is refused by name."""
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, not a checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file (run the finetune stage)")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes); not a checkpoint")
    kind = file_kind(path)
    if kind is not None:
        raise CheckpointError(f"{path}: not a loadable checkpoint: {kind}; models/model.pt "
                              "written by the finetune stage is one (nothing in the file was "
                              "executed)")
    try:
        with warnings.catch_warnings():  # e.g. about a pickle protocol: the error says it
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # UnpicklingError for code, RuntimeError/EOFError for truncation
        raise CheckpointError(f"{path}: not a loadable checkpoint ({type(error).__name__}: "
                              f"{load_failure(error)}); only plain weights files are accepted, "
                              "nothing in the file was executed") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        what = (f"format {payload.get('format')!r}" if isinstance(payload, dict) and
                "format" in payload else f"a {type(payload).__name__} without a format tag")
        raise CheckpointError(f"{path}: not a {FORMAT} file ({what}); models/model.pt written "
                              "by the finetune stage is one")
    return payload


def _check_fields(path: Path, payload: dict) -> None:
    """Every field of the format present with its type, and an architecture this build has."""
    for key, kind in _FIELDS.items():
        value = payload.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise CheckpointError(f"{path}: field {key!r} is missing or not a {kind.__name__} "
                                  f"({type(value).__name__}); the file is damaged")
    names = payload["class_names"]
    if not names or not all(isinstance(c, str) and c for c in names):
        raise CheckpointError(f"{path}: field 'class_names' must be a non-empty list of names")
    if len(set(names)) < len(names):
        twice = sorted({c for c in names if names.count(c) > 1})
        raise CheckpointError(f"{path}: field 'class_names' names {', '.join(map(repr, twice))} "
                              "more than once; the file is damaged")
    if not 16 <= payload["image_size"] <= 1024:  # preprocess.image_size's range
        raise CheckpointError(f"{path}: field 'image_size' is {payload['image_size']}; allowed: "
                              "16 to 1024 px; the file is damaged")
    if not 0 < payload["crop_pct"] <= 1:
        raise CheckpointError(f"{path}: field 'crop_pct' is {payload['crop_pct']}; allowed: "
                              "above 0, at most 1; the file is damaged")
    if not all(isinstance(v, torch.Tensor) for v in payload["state_dict"].values()):
        raise CheckpointError(f"{path}: 'state_dict' holds something other than tensors")
    try:
        check_arch(payload["arch"])
    except ArchError as error:
        raise CheckpointError(f"{path}: architecture {error}") from None
    layers = payload.get("layers", "last")  # absent in checkpoints before layers existed
    if layers not in LAYERS:
        raise CheckpointError(f"{path}: field 'layers' is {layers!r}; allowed: "
                              f"{', '.join(LAYERS)}")


def _rebuild(path: Path, payload: dict) -> torch.nn.Module:
    """The network of the checkpoint's architecture, with its weights (on the CPU)."""
    heads = {k: v.shape[0] for k, v in payload["state_dict"].items()
             if k.endswith("classifier.weight") and v.dim() == 2}
    classes = len(payload["class_names"])
    if heads and any(rows != classes for rows in heads.values()):
        raise CheckpointError(f"{path}: its head has {max(heads.values())} outputs but field "
                              f"'class_names' lists {classes} names; the file is damaged")
    try:
        model = build_model(payload["arch"], "none", classes, payload.get("layers", "last"))
        model.load_state_dict(payload["state_dict"])
    except (KeyError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"{path}: weights do not match architecture "
                              f"{payload.get('arch')!r} with {len(payload['class_names'])} "
                              f"classes (a checkpoint of an older finetuner that cut the "
                              f"network into other stages? `dvc repro` retrains it): "
                              f"{str(error)[:500]}") from None
    return model
