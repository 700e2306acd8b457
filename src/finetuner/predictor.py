"""What ``predict`` and ``evaluate`` run: a checkpoint in PyTorch, or an ONNX model in ONNX
Runtime, behind one interface.

Either way a :class:`Predictor` takes uint8 RGB images (N, H, W, 3) already given the model's
evaluation view (``image_size``, ``crop_pct``), feeds them as float32 in [0, 1] (N, 3, H, W),
and returns logits, or probabilities calibrated by its ``temperature``. The class names and the
preprocessing come from the checkpoint or from the ONNX file's metadata.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .evaluation.calibration import CalibrationError, file_sha256, read_calibration, softmax
from .export import onnx_checked
from .onnx_file import ExportError, onnx_runner, read_onnx
from .models.checkpoint import load_checkpoint

RUNTIMES = ("torch", "onnxruntime")


@dataclass(frozen=True)
class Predictor:
    path: Path
    runtime: str                     # torch or onnxruntime
    class_names: list[str]
    image_size: int
    crop_pct: float
    temperature: float | None        # None: not calibrated
    run: Callable[[np.ndarray], np.ndarray]  # float32 (N, 3, H, W) in [0, 1] -> logits

    def logits(self, images: np.ndarray) -> np.ndarray:
        """float32 logits (N, classes) of uint8 images (N, H, W, 3)."""
        batch = np.ascontiguousarray(np.asarray(images).transpose(0, 3, 1, 2), dtype=np.float32)
        return np.asarray(self.run(batch / np.float32(255)), dtype=np.float32)

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """softmax(logits / temperature) of uint8 images (N, H, W, 3)."""
        return softmax(self.logits(images), self.temperature)


def runtime_for(path: Path, runtime: str | None) -> str:
    """``runtime`` if given, else onnxruntime for an ``.onnx`` file and torch for a checkpoint."""
    onnx = Path(path).suffix.lower() == ".onnx"
    if runtime is None:
        return "onnxruntime" if onnx else "torch"
    if runtime not in RUNTIMES:
        raise ExportError(f"unknown runtime {runtime!r}; one of {', '.join(RUNTIMES)}")
    if onnx and runtime == "torch":
        raise ExportError(f"{path}: an ONNX file runs in onnxruntime, not torch; "
                          "leave out --runtime, or give the checkpoint")
    return runtime


def load_predictor(path: str | Path, runtime: str | None = None,
                   calibration: str | Path | None = None, threads: int | None = None,
                   device: torch.device | None = None) -> Predictor:
    """A checkpoint (``.pt``, run in torch on ``device``, default the CPU, or in onnxruntime
    after an in-memory export) or an ONNX file written by ``finetuner export`` (onnxruntime's
    CPU provider: ``device`` must then be the CPU or None).

    The temperature is the ONNX file's (if it was exported with one), replaced by the one in
    ``calibration`` (``metrics/calibration.json``) when given; that file must have been fitted
    for this model (same checkpoint SHA-256). Errors name the file: :class:`CheckpointError`,
    :class:`ExportError`, :class:`CalibrationError`.
    """
    path = Path(path)
    runtime = runtime_for(path, runtime)
    device = device or torch.device("cpu")
    if runtime == "onnxruntime" and device.type != "cpu":
        raise ExportError(f"{path}: onnxruntime runs on the CPU here, not {device}; give the "
                          "checkpoint with --runtime torch to use the GPU, or --device cpu")
    if path.suffix.lower() == ".onnx":
        session, meta = read_onnx(path, threads)
        temperature = meta["temperature"]
        if calibration is not None:
            source = meta.get("checkpoint_sha256")
            if not isinstance(source, str):
                raise CalibrationError(f"{path}: records no checkpoint SHA-256, so "
                                       f"{calibration} cannot be checked against it")
            temperature = read_calibration(calibration, source)
        return Predictor(path, runtime, meta["class_names"], meta["image_size"],
                         meta["crop_pct"], temperature,
                         onnx_runner(session))
    checkpoint = load_checkpoint(path)
    temperature = (read_calibration(calibration, file_sha256(path))
                   if calibration is not None else None)
    model = checkpoint.model.cpu().eval()
    if runtime == "onnxruntime":  # exported in memory, checked as `finetuner export` checks
        _, session = onnx_checked(model, checkpoint.image_size,
                                  f"{path}: its ONNX export (made in memory for onnxruntime)",
                                  "run it with --runtime torch", threads)
        run = onnx_runner(session)
    else:
        model.to(device)

        def run(x: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return model(torch.from_numpy(x).to(device)).float().cpu().numpy()
    return Predictor(path, runtime, checkpoint.class_names, checkpoint.image_size,
                     checkpoint.crop_pct, temperature, run)
