#!/usr/bin/env python
"""Accuracy and time of fine-tuning strategies and backbones on a real photo folder.

    python benchmarks/strategies_and_backbones.py [--data DIR] [--seeds 0 1 2] [--configs head_only full ...]

For every seed: the project's own split (val 0.15, test 0.2 of the folder, stratified) and
preprocess (5 views per training image, flip, rotation, crop scale 0.5-1) at each
architecture's native size, then fit() with each config and the test accuracy of the
best-on-val epoch.  Nothing is chosen by looking at test results: the checkpoint is the best
epoch on val; the test split only reports.  Prints one markdown row per config with mean ±
standard deviation over the seeds, the model's parameters and GFLOPs (2-class head, native size)
and its CPU latency at batch 1 (median of timed forward passes after warm-up, all threads).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "hymenoptera" / "train"
LITE0 = {"model": {"arch": "tf_efficientnet_lite0", "weights": "DEFAULT"}}
CONFIGS = {
    "head_only": {**LITE0, "lr": 0.01, "freeze_depth": "all", "train": {"epochs": 10}},
    "full": {**LITE0, "lr": 0.01, "freeze_depth": 0, "train": {"epochs": 8}},
    "discriminative": {**LITE0, "lr": 0.01, "freeze_depth": 0,
                       "train": {"epochs": 8, "backbone_lr_mult": 0.1, "stage_lr_decay": 0.7}},
    "gradual": {**LITE0, "lr": 0.01, "freeze_depth": "all",
                "train": {"epochs": 8, "unfreeze_every": 2, "unfreeze_floor": 5,
                          "backbone_lr_mult": 0.3}},
    "full_bf16": {**LITE0, "lr": 0.01, "freeze_depth": 0, "precision": "bf16",
                  "train": {"epochs": 8}},  # bf16 autocast: on CPUs with AVX512-BF16 / AMX
    "partial": {**LITE0, "lr": 0.01, "freeze_depth": 5, "train": {"epochs": 8}},
    "lite0_none": {"model": {"arch": "tf_efficientnet_lite0", "weights": "none"}, "lr": 0.01,
                   "freeze_depth": 0, "train": {"epochs": 8}},
    "resnet18_none": {"model": {"arch": "resnet18", "weights": "none"}, "lr": 0.01,
                      "freeze_depth": 0, "train": {"epochs": 8}},
}
for index in (0, 1, 2):  # backbone comparison at one cheap strategy: head only
    CONFIGS[f"lite{index}_head"] = {
        "model": {"arch": f"tf_efficientnet_lite{index}", "weights": "DEFAULT"}, "lr": 0.01,
        "freeze_depth": "all", "train": {"epochs": 10}}


def prepared_for(data: Path, seed: int, size: int, crop_pct: float, cache: dict, work: Path):
    """The split (val 0.15, test 0.2) and stored views for this seed and size, made once."""
    from finetuner.data.augment import Augmentation
    from finetuner.data.workspace import split_and_prepare
    key = (seed, size, crop_pct)
    if key not in cache:
        start = time.perf_counter()
        prepared = split_and_prepare(
            data, work / f"s{seed}-{size}-{crop_pct}", val_fraction=0.15, test_fraction=0.2,
            seed=seed, image_size=size, crop_pct=crop_pct, train_views=5,
            augmentation=Augmentation((0.5, 1.0), True, 15.0, 0.2), workers=2)
        cache[key] = (prepared, time.perf_counter() - start)
    return cache[key]


def run(config: dict, seed: int, data: Path, cache: dict, work: Path) -> dict:
    from finetuner.arch_params import image_size
    from finetuner.evaluation.cost import count_params, cpu_latency_ms, gflops
    from finetuner.evaluation.metrics import predict_arrays
    from finetuner.models import build_model, get_arch
    from finetuner.params import parse_params
    from finetuner.training.batches import TrainData
    from finetuner.training.loop import fit
    # constant schedule: the one these figures were measured with (then the default)
    params = parse_params({**config, "seed": seed, "preprocess": {"image_size": "auto"},
                           "train": {"schedule": "constant", **config.get("train", {})}})
    spec = get_arch(params.model.arch)
    prepared, prep_seconds = prepared_for(data, seed, image_size(params), spec.crop_pct, cache,
                                          work)
    tensors = TrainData.from_prepared(prepared, seed)
    torch.manual_seed(seed)
    start = time.perf_counter()
    model = build_model(params.model.arch, params.model.weights, len(prepared.class_names))
    result = fit(model, tensors, params, torch.device("cpu"), progress=False)
    seconds = time.perf_counter() - start
    predicted = predict_arrays(model, prepared.images["test"], torch.device("cpu")).argmax(1)
    return {"test_acc": float((predicted == prepared.labels["test"]).mean()),
            "seconds": seconds, "prep_seconds": prep_seconds, "epochs": len(result.history),
            "best_epoch": result.best_epoch, "params": count_params(model),
            "gflops": gflops(model, image_size(params)),
            "latency_ms": cpu_latency_ms(model.eval(), image_size(params))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--configs", nargs="+", default=["head_only", "full", "discriminative",
                                                        "gradual"], choices=list(CONFIGS))
    args = parser.parse_args()
    data = Path(args.data)
    if not data.is_dir():
        print(f"skipped: {data} not found (../shared is absent)")
        return
    from finetuner.runtime import reuse_freed_memory, set_threads
    set_threads(0)
    reuse_freed_memory()  # as the finetune stage does
    cache: dict = {}
    print("| config | test accuracy (mean ± sd) | fine-tune wall time (s) | epochs | per seed "
          "| params (M) | GFLOPs | CPU latency, batch 1 (ms, median over seeds) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.configs:
            rows = [run(CONFIGS[name], seed, data, cache, Path(tmp)) for seed in args.seeds]
            accs = [r["test_acc"] for r in rows]
            spread = statistics.stdev(accs) if len(accs) > 1 else 0.0
            print(f"| {name} | {statistics.mean(accs):.3f} ± {spread:.3f} | "
                  f"{statistics.mean(r['seconds'] for r in rows):.0f} | "
                  f"{rows[0]['epochs']} (best {', '.join(str(r['best_epoch']) for r in rows)}) | "
                  f"{', '.join(f'{a:.3f}' for a in accs)} | {rows[0]['params'] / 1e6:.2f} | "
                  f"{rows[0]['gflops']:.2f} | "
                  f"{statistics.median(r['latency_ms'] for r in rows):.1f} |", flush=True)


if __name__ == "__main__":
    main()
