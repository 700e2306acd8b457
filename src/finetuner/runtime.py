"""Where and how a process computes: device, threads, seeds."""
from __future__ import annotations

import os
import random

import numpy as np
import torch


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def set_threads(threads: int) -> int:
    """Use ``threads`` torch threads (0: the cores this process may use); returns the count."""
    count = threads or available_cores()
    torch.set_num_threads(count)
    return count


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when present, else MPS, else CPU; an explicit device must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"params.yaml: 'device' is {name!r} but CUDA is not available here; "
                         "use auto or cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"params.yaml: 'device' is {name!r} but there are only "
                         f"{torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("params.yaml: 'device' is 'mps' but MPS is not available here")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
