"""What predict and evaluate share: their MODEL loaded, and its class probabilities for files,
batch by batch, with each skipped file reported as it comes."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterator

import numpy as np
from tqdm import tqdm

from ..data.folders import eval_views
from ..models.checkpoint import CheckpointError
from ..predictor import RUNTIMES, Predictor, load_predictor, runtime_for
from .common import BATCH_HELP, DEVICE_CHOICES, device_for, device_name, positive_int

MODEL_HELP = "a checkpoint (models/model.pt) or an ONNX file written by export"
RUNTIME_HELP = ("torch or onnxruntime (a checkpoint is exported to ONNX in memory); default: "
                "onnxruntime for an .onnx file, torch for a checkpoint")
DEVICE_HELP = f"where torch runs the model (onnxruntime runs on the CPU): {DEVICE_CHOICES}"


def add_runtime_options(parser) -> None:
    """The options of how predict and evaluate run their MODEL: runtime, device, batch size."""
    parser.add_argument("--runtime", choices=RUNTIMES, help=RUNTIME_HELP)
    parser.add_argument("--device", type=device_name, default="auto", help=DEVICE_HELP)
    parser.add_argument("--batch-size", type=positive_int, default=32, help=BATCH_HELP)


def load_model(args) -> Predictor:
    """The MODEL of predict and evaluate; a file that is neither a checkpoint nor ONNX is
    refused saying both are taken (checkpoint.py's message names only the checkpoint)."""
    runtime = runtime_for(args.model, args.runtime)
    try:
        return load_predictor(args.model, runtime, args.calibration,
                              device=device_for(args, runtime))
    except CheckpointError as error:
        raise CheckpointError(f"{error}; {args.command} also takes its ONNX export "
                              "(`finetuner export CHECKPOINT model.onnx`)") from None


class Skipped(list):
    """The paths skipped so far; each one is reported on stderr with the reason as it comes."""

    def __call__(self, path: Path, reason: str) -> None:
        tqdm.write(f"skipped {path}: {reason}", file=sys.stderr)  # above a progress bar
        self.append(path)


def predict_files(predictor: Predictor, files: list[Path], batch_size: int,
                  skipped: Skipped) -> Iterator[tuple[list[Path], np.ndarray]]:
    """(paths, class probabilities) per batch of the files that are images; others -> ``skipped``.

    Each image is decoded and given the pipeline's evaluation view by
    :func:`finetuner.data.folders.eval_views`; the probabilities are calibrated by the
    predictor's temperature, if it has one.  A progress bar on stderr when it is a terminal.
    """
    with tqdm(total=len(files), unit="image", leave=False, mininterval=1.0, disable=None,
              file=sys.stderr) as bar:
        done = len(skipped)
        for paths, views in eval_views(files, predictor.image_size, predictor.crop_pct,
                                       batch_size, skipped):
            yield paths, predictor.probabilities(views)
            bar.update(len(paths) + len(skipped) - done)
            done = len(skipped)
