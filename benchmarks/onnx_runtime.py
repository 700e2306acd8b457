#!/usr/bin/env python
"""Eager PyTorch against ONNX Runtime (float32, and int8 by dynamic quantisation) on the CPU.

    python benchmarks/onnx_runtime.py [--checkpoint models/model.pt --prepared data/prepared]
                                      [--arch tf_efficientnet_lite0] [--sizes 64 224]
                                      [--rounds 3] [--threads 2]

With ``--checkpoint`` it times that model at its own input size and scores the three on the
test split of ``--prepared`` (accuracy, and the largest logit difference from eager PyTorch);
without, ``--arch`` with its ImageNet weights and a 10-class head at each of ``--sizes`` (the
head is random, so only the logit differences mean anything there). Latency: median ms of
batch 1; throughput: images/s in batches of 32; each measured ``--rounds`` times, the three
back to back in each round (a shared machine's speed drifts), medians printed as name=value
lines. Threads: torch and ONNX Runtime get the same number.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from finetuner.export import onnx_checked  # noqa: E402
from finetuner.onnx_file import onnx_runner, onnx_session  # noqa: E402
from finetuner.models import build_model  # noqa: E402


def median_seconds(run, batch, repeats: int) -> float:
    run(batch)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(batch)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def int8_model(data: bytes, folder: Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic
    (folder / "fp32.onnx").write_bytes(data)
    quantize_dynamic(folder / "fp32.onnx", folder / "int8.onnx", weight_type=QuantType.QInt8)
    return folder / "int8.onnx"


def measure(model: torch.nn.Module, size: int, rounds: int, threads: int,
            images: np.ndarray | None, labels: np.ndarray | None, tag: str) -> None:
    model = model.cpu().eval()
    data, session = onnx_checked(model, size, f"{tag}: the float32 ONNX export",
                                 "not measured", threads)
    with tempfile.TemporaryDirectory() as folder:
        int8 = int8_model(data, Path(folder))
        runners = {"eager": lambda x: model(torch.from_numpy(x)),
                   "onnxruntime": onnx_runner(session),
                   "onnxruntime_int8": onnx_runner(onnx_session(int8, threads))}
        print(f"{tag}_onnx_mb={len(data) / 1e6:.2f} {tag}_int8_mb={int8.stat().st_size / 1e6:.2f}")
        one = np.random.default_rng(0).random((1, 3, size, size), dtype=np.float32)
        many = np.random.default_rng(1).random((32, 3, size, size), dtype=np.float32)
        results = {name: {"latency": [], "throughput": []} for name in runners}
        with torch.no_grad():
            for _ in range(rounds):
                for name, run in runners.items():
                    results[name]["latency"].append(1000 * median_seconds(run, one, 20))
                    results[name]["throughput"].append(32 / median_seconds(run, many, 3))
            for name, r in results.items():
                print(f"{tag}_{name}_latency_ms={statistics.median(r['latency']):.2f} "
                      f"{tag}_{name}_images_per_s={statistics.median(r['throughput']):.1f} "
                      f"(rounds: {' '.join(f'{v:.2f}' for v in r['latency'])} ms; "
                      f"{' '.join(f'{v:.1f}' for v in r['throughput'])} images/s)")
            if images is None:
                images = np.random.default_rng(2).integers(0, 256, (64, size, size, 3), np.uint8)
            batch = images.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255)
            logits = {name: np.concatenate([run(batch[i:i + 32]) if name != "eager"
                                            else run(batch[i:i + 32]).numpy()
                                            for i in range(0, len(batch), 32)])
                      for name, run in runners.items()}
        for name in ("onnxruntime", "onnxruntime_int8"):
            diff = np.abs(logits[name] - logits["eager"]).max()
            agree = (logits[name].argmax(1) == logits["eager"].argmax(1)).mean()
            print(f"{tag}_{name}_max_abs_diff={diff:.3g} {tag}_{name}_top1_agreement={agree:.4f}")
        if labels is not None:
            for name, values in logits.items():
                print(f"{tag}_{name}_accuracy={(values.argmax(1) == labels).mean():.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--prepared", type=Path, default=ROOT / "data" / "prepared")
    parser.add_argument("--arch", default="tf_efficientnet_lite0")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 224])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"threads={args.threads} torch={torch.__version__}", flush=True)
    if args.checkpoint:
        from finetuner.data.prepared import load_prepared
        from finetuner.models.checkpoint import load_checkpoint
        checkpoint = load_checkpoint(args.checkpoint)
        prepared = load_prepared(args.prepared)
        measure(checkpoint.model, checkpoint.image_size, args.rounds, args.threads,
                np.asarray(prepared.images["test"]), prepared.labels["test"],
                f"checkpoint_{checkpoint.image_size}px")
        return
    for size in args.sizes:
        torch.manual_seed(0)
        measure(build_model(args.arch, "DEFAULT", 10), size, args.rounds, args.threads,
                None, None, f"{args.arch}_{size}px")


if __name__ == "__main__":
    main()
