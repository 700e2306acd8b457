"""What a model costs: parameters, compute per image, CPU speed, file size, training time.

Speed is measured on the CPU with the process's torch threads (``cpu_threads`` records how
many), as the median of repeated timed runs after warm-up, so runs on one machine compare:
eager PyTorch, and the model's ONNX export in ONNX Runtime with as many threads.  A median
does not help when the whole process runs slow because another one holds a core (on 2 cores
with one busy, 2 threads timed Lite0 2.2 to 3.3 times slower than idle): ``cpu_share`` says
how much of its threads' time the process got while eager PyTorch's throughput was timed (1.0:
all of it; less: another process, or a CPU quota, held the cores).
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Callable, TypeVar

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..export import onnx_checked
from ..onnx_file import onnx_runner
from ..models import ProbeEnsemble, StagedClassifier

BUSY = 0.8  # a cpu_share below this: the timings say more about the machine's load
T = TypeVar("T")


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def trainable_params(model: StagedClassifier | ProbeEnsemble, frozen_stages: int) -> int:
    """Parameters that train with ``frozen_stages`` frozen (the model is not touched). An
    ensemble's members are probes: only their heads train."""
    if isinstance(model, ProbeEnsemble):
        return sum(count_params(member.classifier) for member in model.members)
    return sum(p.numel() for p in model.trainable_parameters(frozen_stages))


@torch.no_grad()
def gflops(model: torch.nn.Module, image_size: int) -> float:
    """Forward FLOPs of one image / 1e9 (convolutions and matrix products, 2 per multiply-add)."""
    device = next(model.parameters()).device
    counter = FlopCounterMode(display=False)
    with counter:
        model(torch.zeros(1, 3, image_size, image_size, device=device))
    return counter.get_total_flops() / 1e9


@torch.no_grad()
def _median_seconds(model, batch: torch.Tensor, warmup: int, runs: int,
                    budget_s: float) -> float:
    """Median seconds of ``runs`` calls ``model(batch)`` (a module or any function), or of those
    done in ``budget_s`` (at least 3)."""
    for _ in range(warmup):
        model(batch)
    times = []
    deadline = time.perf_counter() + budget_s
    while len(times) < runs and (len(times) < 3 or time.perf_counter() < deadline):
        start = time.perf_counter()
        model(batch)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cpu_latency_ms(model, image_size: int, runs: int = 30, budget_s: float = 3.0) -> float:
    """Median milliseconds for one image (batch 1) on the CPU; ``model``: a module in eval mode
    on the CPU, or any function of a float batch."""
    batch = torch.rand(1, 3, image_size, image_size)
    return 1000 * _median_seconds(model, batch, 3, runs, budget_s)


def cpu_throughput(model, image_size: int, batch_size: int = 32, runs: int = 5,
                   budget_s: float = 5.0) -> float:
    """Images per second in batches of ``batch_size`` on the CPU (``model`` as above)."""
    batch = torch.rand(batch_size, 3, image_size, image_size)
    return batch_size / _median_seconds(model, batch, 1, runs, budget_s)


def onnxruntime_cost(model: StagedClassifier, image_size: int, runs: int = 30,
                     budget_s: float = 3.0) -> dict:
    """The model exported to ONNX (in memory, checked against the model's logits) and timed in
    ONNX Runtime by :func:`cpu_latency_ms` and :func:`cpu_throughput`, as eager PyTorch is;
    ``model`` on the CPU."""
    data, session = onnx_checked(model.cpu().eval(), image_size, "the ONNX export",
                                 "it is not timed")
    runner = onnx_runner(session)
    run = lambda batch: runner(batch.numpy())  # noqa: E731
    return {"onnxruntime_latency_ms": round(cpu_latency_ms(run, image_size, runs, budget_s), 2),
            "onnxruntime_images_per_s": round(cpu_throughput(run, image_size), 1),
            "onnx_mb": round(len(data) / 1e6, 2)}


def with_cpu_share(timed: Callable[[], T]) -> tuple[T, float]:
    """``timed()``'s result, and the CPU time this process got while it ran over its wall time
    times the torch threads: below 1 when the threads waited for a core (or slept)."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = timed()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return result, cpu / max(wall * torch.get_num_threads(), 1e-9)


def cost_report(model: StagedClassifier, image_size: int, frozen_stages: int,
                checkpoint: str | Path, train_seconds: float) -> dict:
    """The ``cost`` object of metrics/eval.json.  Moves ``model`` to the CPU."""
    model = model.cpu().eval()
    latency = cpu_latency_ms(model, image_size)
    # batches of 32 keep every thread at work on an idle machine of many cores, where one
    # image may not: only waiting for a core lowers the share
    throughput, share = with_cpu_share(lambda: cpu_throughput(model, image_size))
    return {"params_total": count_params(model),
            "params_trainable": trainable_params(model, frozen_stages),
            "gflops": round(gflops(model, image_size), 4),
            "cpu_latency_ms": round(latency, 2),
            "cpu_images_per_s": round(throughput, 1),
            "cpu_threads": torch.get_num_threads(),
            "cpu_share": round(share, 2),
            "checkpoint_mb": round(Path(checkpoint).stat().st_size / 1e6, 2),
            "train_seconds": round(train_seconds, 1)}
