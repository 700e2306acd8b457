#!/usr/bin/env python
"""Fine-tuning speed on a CUDA GPU: fp32 against mixed precision, and against its host's CPU.

    python benchmarks/gpu.py [--archs resnet18 tf_efficientnet_lite0 resnet50] [--images 2048]
                             [--size 224] [--batch-size 64] [--epochs 3] [--json OUT.json]

Runs the project's own ``fit()`` (full fine-tune, ``freeze_depth: 0``; random weights and random
uint8 images: only speed counts) once per architecture and precision, and reports training
images/s over the epochs after the first (the first pays for cuDNN's algorithm search and the
allocator's warm-up).  An epoch's time includes its validation pass (256 images).  For
reference it also trains resnet18 on the CPU (fp32, all cores, one epoch of a quarter of the
images).  Prints each figure and ``name=value`` lines; exits with a message where CUDA is absent.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import torch

from finetuner.models import build_model
from finetuner.params import parse_params
from finetuner.runtime import available_cores
from finetuner.training.batches import TrainData
from finetuner.training.loop import fit


def random_data(n: int, size: int, classes: int = 10, val: int = 256) -> TrainData:
    generator = torch.Generator().manual_seed(0)
    images = lambda count: torch.randint(0, 256, (count, size, size, 3), dtype=torch.uint8,
                                         generator=generator)
    labels = lambda count: torch.randint(0, classes, (count,), generator=generator)
    return TrainData(images(n), labels(n), images(val), labels(val), 1, classes)


def train_speed(arch: str, data: TrainData, device: str, precision: str, epochs: int,
                batch_size: int, freeze_depth: int | str = 0) -> float:
    """Training images/s over epochs 2.. (all epochs when only one)."""
    params = parse_params({"lr": 0.001, "freeze_depth": freeze_depth, "device": device,
                           "precision": precision, "model": {"arch": arch},
                           "train": {"epochs": epochs, "batch_size": batch_size,
                                     "schedule": "constant"}})
    torch.manual_seed(0)
    model = build_model(arch, "none", data.num_classes)
    result = fit(model, data, params, torch.device(device), progress=False)
    timed = result.history[1:] or result.history
    epoch_seconds = ", ".join(f"{r['seconds']:.2f}" for r in result.history)
    speed = len(data.train_labels) * len(timed) / sum(r["seconds"] for r in timed)
    print(f"  {arch:24s} {device:5s} {result.precision:5s} freeze_depth={freeze_depth}: "
          f"{speed:8.1f} images/s (epochs: {epoch_seconds} s)", flush=True)
    return speed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--archs", nargs="+",
                        default=["resnet18", "tf_efficientnet_lite0", "resnet50"])
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16", "fp16"])
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu benchmark skipped: no CUDA device here")
        return
    torch.set_num_threads(available_cores())
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, {platform.processor()} "
          f"{available_cores()} CPU cores; {args.images} images of {args.size} px, "
          f"batch {args.batch_size}, {args.epochs} epochs", flush=True)
    data = random_data(args.images, args.size)
    figures: dict[str, float] = {}
    for arch in args.archs:
        for precision in args.precisions:
            figures[f"{arch}_{precision}_images_per_s"] = train_speed(
                arch, data, "cuda", precision, args.epochs, args.batch_size)
        if {"fp32", "bf16"} <= set(args.precisions):
            figures[f"{arch}_mixed_speedup"] = (figures[f"{arch}_bf16_images_per_s"]
                                                / figures[f"{arch}_fp32_images_per_s"])
    head = train_speed(args.archs[0], data, "cuda", "bf16", args.epochs, args.batch_size, "all")
    figures[f"{args.archs[0]}_bf16_head_only_images_per_s"] = head
    torch.backends.cudnn.benchmark = True  # cuDNN times its algorithms per input shape
    figures[f"{args.archs[0]}_bf16_cudnn_benchmark_images_per_s"] = train_speed(
        args.archs[0], data, "cuda", "bf16", args.epochs, args.batch_size)
    torch.backends.cudnn.benchmark = False
    cpu_data = random_data(max(args.batch_size * 2, args.images // 4), args.size)
    start = time.perf_counter()
    cpu = train_speed(args.archs[0], cpu_data, "cpu", "fp32", 1, args.batch_size)
    figures[f"{args.archs[0]}_cpu_fp32_images_per_s"] = cpu
    if f"{args.archs[0]}_bf16_images_per_s" in figures:
        figures["gpu_over_cpu"] = figures[f"{args.archs[0]}_bf16_images_per_s"] / cpu
    print(f"  (cpu run took {time.perf_counter() - start:.0f} s)")
    for name, value in figures.items():
        print(f"{name}={value:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                       "cpu_cores": available_cores(), "args": vars(args), **figures}, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
