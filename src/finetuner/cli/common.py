"""What every command shares: the usage error (exit status 2), bounded number options, the
``--device`` option, and the help of the options several commands take."""
from __future__ import annotations

import argparse
import math

import torch

from ..params import DEVICES, ParamsError, is_device_name
from ..runtime import resolve_device


class UsageError(ValueError):
    """Arguments or inputs the command cannot work with: exit status 2."""


def bounded(kind: type, low: float, high: float | None = None):
    """An argparse type: a ``kind`` (int or float) from ``low`` to ``high`` (None: no upper
    bound), as the matching param of params.yaml allows; nan, inf and words are refused."""
    allowed = ("an integer" if kind is int else "a number") + (
        f" from {low} to {high}" if high is not None else f" of {low} or more")

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {allowed}, not {text!r}") from None
        if (not (value >= low and (high is None or value <= high))  # nan fails both
                or (kind is float and not math.isfinite(value))):  # an int may overflow a float
            raise argparse.ArgumentTypeError(f"must be {allowed}, not {text}")
        return value
    return parse


positive_int = bounded(int, 1)
probability = bounded(float, 0, 1)


def device_for(args, runtime: str) -> torch.device:
    """``--device`` resolved: ``auto`` is CUDA when present (else MPS, else the CPU) for torch,
    the CPU for onnxruntime (its CPU provider is the one installed)."""
    if runtime == "onnxruntime" and args.device == "auto":
        return torch.device("cpu")
    try:
        return resolve_device(args.device, "--device")
    except ParamsError as error:
        raise UsageError(str(error)) from None


def device_name(text: str) -> str:
    """An argparse type: a device name ``--device`` takes (checked, not resolved: it may not
    be on this machine; :func:`device_for` says so)."""
    if not is_device_name(text):
        raise argparse.ArgumentTypeError(f"must be {', '.join(DEVICES[:-1])} or {DEVICES[-1]}, "
                                         f"not {text!r}")
    return text


DEVICE_CHOICES = ("auto (CUDA when present, else MPS, else the CPU), cpu, cuda, cuda:N or "
                  "mps (default auto)")
BATCH_HELP = "images per forward pass (default %(default)s; fewer if memory is short)"
