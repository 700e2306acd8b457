"""Where and how a process computes: device, numeric precision, threads, seeds."""
from __future__ import annotations

import contextlib
import ctypes
import os
import random
from dataclasses import dataclass

import numpy as np
import torch

from .params import ParamsError


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def thread_count(threads: int) -> int:
    """Torch threads for this process: ``threads`` if set, else the cores it may use.

    With ``threads: 0`` that is ``OMP_NUM_THREADS`` when the environment sets it (the standard
    per-process knob: ``OMP_NUM_THREADS=1 dvc queue start -j 2`` gives each queued experiment one
    thread), else this process's share of its CPU affinity: the cores divided by the processes
    torchrun started on this machine (``LOCAL_WORLD_SIZE``).
    """
    if threads:
        return threads
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(1, available_cores() // max(1, local_processes))


def set_threads(threads: int) -> int:
    """Use :func:`thread_count` torch threads; returns the count."""
    count = thread_count(threads)
    torch.set_num_threads(count)
    return count


# glibc's mallopt(3) parameter numbers (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
# the environment's own malloc tuning, which reuse_freed_memory leaves alone
MALLOC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def glibc_version() -> tuple[int, ...] | None:
    """The running C library's version when it is glibc (``(2, 36)``), else None."""
    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
        return tuple(int(part) for part in version.split(".")[:2]) if name == "glibc" else None
    except (AttributeError, ValueError, OSError):  # not glibc, or no confstr at all
        return None


def reuse_freed_memory() -> bool:
    """Keep large freed blocks in glibc's heap for reuse instead of unmapping them.

    glibc serves blocks over 32 MiB (a training step's activations) with a fresh ``mmap`` and
    unmaps them on free, so every step page-faults them in again.  An mmap threshold of 1 GiB
    and no trimming keep them (docs/performance.md has the measurements).  Left alone where
    the environment tunes malloc itself (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``,
    ``glibc.malloc`` in ``GLIBC_TUNABLES``) or the C library is not glibc.  Returns whether it
    applied.
    """
    if (glibc_version() is None or any(name in os.environ for name in MALLOC_ENV)
            or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", "")):
        return False
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    if mallopt(_M_MMAP_THRESHOLD, 1 << 30) != 1:  # refused by glibcs that cap it at 32 MiB
        return False
    mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
    return True


def resolve_device(name: str, source: str = "params.yaml: 'device'") -> torch.device:
    """``auto``: CUDA when present, else MPS, else CPU; an explicit device must exist
    (:class:`ParamsError` otherwise, its message starting with ``source``: where the name
    came from)."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ParamsError(f"{source} is {name!r} but CUDA is not available here; "
                          "use auto or cpu")
    if (device.type == "cuda" and device.index is not None
            and device.index >= torch.cuda.device_count()):
        raise ParamsError(f"{source} is {name!r} but there are only "
                          f"{torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ParamsError(f"{source} is 'mps' but MPS is not available here")
    return device


@dataclass(frozen=True)
class Precision:
    """How the forward pass computes: ``fp32``, or autocast to ``bf16`` / ``fp16``.

    ``fp16`` needs a gradient scaler (its range is too small for small gradients); ``bf16`` has
    fp32's range and needs none.  Weights, optimizer state and checkpoints stay fp32 either way.
    """
    name: str  # fp32, bf16, fp16
    device_type: str

    @property
    def dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.name)

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A GradScaler that is active only for fp16 (disabled: scale/step/update pass through)."""
        return torch.amp.GradScaler(self.device_type, enabled=self.name == "fp16")


def resolve_precision(name: str, device: torch.device) -> Precision:
    """``auto``: on CUDA bf16 autocast where the GPU supports it, else fp16 with a GradScaler;
    fp32 elsewhere (CPU bf16 autocast can only pay off on CPUs with native bf16 instructions,
    AVX512-BF16 or AMX, is several times slower on the rest, and even on such a CPU slowed the
    default backbone, EfficientNet-Lite0, down: docs/scaling-out.md "GPUs and precision").  An
    explicit ``bf16`` on a CUDA GPU without it is an error, and so is ``fp16`` on the CPU (a
    Lite0 training step ran 23 times slower than in fp32 there)."""
    if name == "auto":
        if device.type == "cuda":
            name = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            name = "fp32"
    if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ParamsError("params.yaml: 'precision' is 'bf16' but this GPU does not support it; "
                          "use auto or fp16")
    if name == "fp16" and device.type == "cpu":
        raise ParamsError("params.yaml: 'precision' is 'fp16' but the device is the CPU, where "
                          "fp16 autocast is about 20 times slower than fp32; use auto, fp32 "
                          "or bf16")
    return Precision(name, device.type)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
