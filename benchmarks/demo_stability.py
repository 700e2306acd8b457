#!/usr/bin/env python
"""How much the demo's test accuracy moves with the thread and process count alone.

    python benchmarks/demo_stability.py [--configs before demo] [--settings t1 t2 p2]
        [--work DIR] [-S key=value ...]

The same code, data, params and seed, trained and scored as the pipeline's own stages do it
(stages/finetune.py, stages/evaluate.py, each in its own process), under each setting:

* ``t1``: ``threads: 1``, one process;  ``t2``: ``threads: 2``, one process;
* ``p2``: ``nproc_per_node: 2`` (two torchrun DDP processes of one thread each).

Only the arithmetic's order changes between them (how a reduction is split over threads, the
batch split over two processes with their own BatchNorm statistics), yet a run of 10 epochs of
SGD follows it into a different model.  Configs (conf/ composed with Hydra overrides, as
`dvc exp run -S` composes them; ``-S`` adds overrides to every config):

* ``before``: the demo as it was before issue 25 (lr 0.02, no warmup, best epoch by val
  accuracy, 10 % test split: 179 digits);
* ``demo``: the demo of conf/ as it is now.

The demo data, split and preprocessing are made once per config (they do not depend on the
setting).  Prints ``name=value`` lines: per config and setting the test accuracy, the errors
it made, the best epoch and the training seconds; per config the spread of accuracy over the
settings in points (max - min), the widest 95 % interval, and the earliest best epoch.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

CONFIGS = {
    "before": ["lr=0.02", "train.epochs=10", "train.schedule=cosine", "train.warmup_epochs=0",
               "train.monitor=val_acc", "data.test_fraction=0.1", "data.val_fraction=0.1"],
    "demo": [],
}
SETTINGS = {
    "t1": ["threads=1", "nproc_per_node=1"],
    "t2": ["threads=2", "nproc_per_node=1"],
    "p2": ["threads=1", "nproc_per_node=2"],
}


def stage(cwd: Path, name: str, *args: str) -> float:
    """Run ``stages/<name>.py`` in ``cwd`` (its params.yaml); return the seconds it took."""
    start = time.perf_counter()
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    env.pop("OMP_NUM_THREADS", None)  # `threads` decides
    done = subprocess.run([sys.executable, str(ROOT / "stages" / f"{name}.py"), *args], cwd=cwd,
                          env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"demo_stability: {name} failed in {cwd}:\n{done.stdout[-2000:]}"
                 f"{done.stderr[-3000:]}")
    return time.perf_counter() - start


def write_params(folder: Path, overrides: list[str]) -> dict:
    from finetuner.presets import compose
    raw = compose("demo", overrides, ROOT / "conf")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return raw


def prepare(config_dir: Path, digits: Path, overrides: list[str]) -> Path:
    """split + input_spec + preprocess of one config, in ``config_dir``; the prepared folder."""
    write_params(config_dir, [*overrides, f"data.dir={digits}"])
    stage(config_dir, "split", str(digits), "data/split")
    stage(config_dir, "input_spec", "data/input_spec.json")
    stage(config_dir, "preprocess", str(digits), "data/split", "data/input_spec.json",
          "data/prepared")
    return config_dir / "data" / "prepared"


def run_setting(run_dir: Path, prepared: Path, overrides: list[str]) -> dict:
    """finetune + evaluate under one setting; eval.json with the training seconds measured."""
    write_params(run_dir, overrides)
    seconds = stage(run_dir, "finetune", str(prepared), "model.pt", "dvclive")
    stage(run_dir, "evaluate", "model.pt", str(prepared), "metrics")
    result = json.loads((run_dir / "metrics" / "eval.json").read_text())
    result["stage_seconds"] = seconds
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--work", type=Path, help="keep the runs here (default: a temp folder)")
    parser.add_argument("-S", dest="extra", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="finetuner-stability-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"# work folder: {work}; load average at start: {os.getloadavg()[0]:.1f}", flush=True)
    digits = work / "digits"
    if not digits.exists():
        stage(work, "demo_data", str(digits))
    for config in args.configs:
        overrides = [*CONFIGS[config], *args.extra]
        prepared = prepare(work / config, digits, overrides)
        results = {}
        for setting in args.settings:
            result = run_setting(work / config / setting, prepared,
                                 [*overrides, f"data.dir={digits}", *SETTINGS[setting]])
            results[setting] = result
            errors = round((1 - result["accuracy"]) * result["test_images"])
            name = f"stability_{config}_{setting}"
            print(f"{name}_accuracy={result['accuracy']:.4f}", flush=True)
            print(f"{name}_errors={errors}")
            print(f"{name}_best_epoch={result['best_epoch']}")
            print(f"{name}_train_seconds={result['train_seconds']:.0f}")
            print(f"# {name}: load average {os.getloadavg()[0]:.1f}", flush=True)
        accuracies = [r["accuracy"] for r in results.values()]
        widest = max(r["accuracy_ci95"]["high"] - r["accuracy_ci95"]["low"]
                     for r in results.values())
        print(f"stability_{config}_test_images={results[args.settings[0]]['test_images']}")
        print(f"stability_{config}_spread_points={100 * (max(accuracies) - min(accuracies)):.2f}")
        print(f"stability_{config}_ci95_width_points={100 * widest:.2f}")
        print(f"stability_{config}_earliest_best_epoch="
              f"{min(r['best_epoch'] for r in results.values())}", flush=True)


if __name__ == "__main__":
    main()
