#!/usr/bin/env python
"""Fine-tuning against the linear probe, paired, on every shared set: the GPU question.

    python -m finetuner.presets photos strategy=finetune ... -o /tmp/ft.yaml   # where Hydra is
    python benchmarks/finetune_vs_probe.py --candidate ft=/tmp/ft.yaml [--candidate ...]
        [--sets hymenoptera trashnet chest_xray] [--seeds 0 1 2 3 4] [--test-fraction 0.3]
        [--data-root ../shared/datasets] [--floor-arch tf_efficientnet_lite0] [--budget-s 0]

Each candidate is a composed params file (``python -m finetuner.presets``: the machine that
runs this needs no Hydra, e.g. a GPU machine with only PyTorch).  For every seed (a different
stratified split of the project's own ``split``: val as the params say, test
``--test-fraction``) and set:

* each candidate trained by the finetune stage's own
  :func:`finetuner.training.strategy.train_model` on CUDA when present (mixed precision as the
  params say), its test accuracy; the val split chooses what it chooses (best epoch, probe or
  fine-tune), the test split is read only to score;
* ``floor``: scikit-learn's ``LogisticRegressionCV`` (10 values of C, 5-fold CV) on the frozen
  pooled features of ``--floor-arch`` at its native size, fitted on train + val (as
  ``recipe_vs_probe.py``'s floor for one backbone);
* ``<candidate>+floor``: the mean of the candidate's and the floor's class probabilities.

Seeds run in the outer loop, so a ``--budget-s`` that stops early (no new seed starts after it)
still covers every set.  Prints ``name=value`` lines: one per set, seed and model, then per set
and model the mean test accuracy and the paired difference from the floor (points) with its
95 % t-interval over the seeds, and the mean training seconds.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from recipe_vs_probe import floor_probabilities, interval, train_on_split
from shared_sets import FOLDERS, SHARED, shared_sets


def probabilities(model, images, device) -> np.ndarray:
    from finetuner.evaluation.metrics import predict_logits
    return torch.softmax(torch.from_numpy(predict_logits(model, images, device)), 1).numpy()


def train_candidate(params, data: Path, work: Path, device) -> tuple[np.ndarray, dict]:
    """(test class probabilities, a record of what was chosen) of one candidate."""
    model, outcome, prepared, seconds = train_on_split(params, data, work, device)
    record = {"seconds": seconds, "chosen": outcome.chosen, "best_epoch": outcome.best_epoch,
              "val_acc": outcome.best_val_acc}
    return probabilities(model, prepared.images["test"], device), record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidate", action="append", required=True, metavar="NAME=PARAMS",
                        help="a name and a composed params file (python -m finetuner.presets)")
    parser.add_argument("--sets", nargs="+", default=list(FOLDERS), choices=FOLDERS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--test-fraction", type=float, default=0.3)
    parser.add_argument("--data-root", type=Path, default=SHARED)
    parser.add_argument("--floor-arch", default="tf_efficientnet_lite0")
    parser.add_argument("--budget-s", type=float, default=0,
                        help="start no new seed after this many seconds (0: no limit)")
    args = parser.parse_args()
    from finetuner.params import parse_params
    from finetuner.runtime import resolve_device, set_threads
    set_threads(0)
    device = resolve_device("auto")
    print(f"device={device} torch={torch.__version__}", flush=True)
    candidates = {}
    for item in args.candidate:
        name, _, path = item.partition("=")
        raw = yaml.safe_load(Path(path).read_text())
        raw["data"]["test_fraction"] = args.test_fraction
        candidates[name] = raw
    scores: dict[tuple[str, str], list[float]] = {}
    seconds: dict[tuple[str, str], list[float]] = {}
    start = time.perf_counter()
    for seed in args.seeds:
        if args.budget_s and time.perf_counter() - start > args.budget_s:
            print(f"stopped: budget of {args.budget_s:.0f} s spent before seed {seed}")
            break
        for set_name in args.sets:
            data = shared_sets(args.data_root)[set_name]
            if not data.is_dir():
                print(f"skipped: {data} not found")
                continue
            with tempfile.TemporaryDirectory() as tmp:
                probs = {}
                for name, raw in candidates.items():
                    params = parse_params({**raw, "seed": seed})
                    probs[name], record = train_candidate(params, data, Path(tmp) / name, device)
                    seconds.setdefault((set_name, name), []).append(record["seconds"])
                    print(f"set={set_name} seed={seed} model={name} " + " ".join(
                        f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in record.items()), flush=True)
                first = Path(tmp) / next(iter(candidates))
                tests = {(Path(tmp) / name / "split" / "test.csv").read_text()
                         for name in candidates}
                assert len(tests) == 1, ("the candidates split the photos differently: give "
                                         "them the same data.val_fraction (paired comparison)")
                probs["floor"], labels = floor_probabilities(args.floor_arch, first, data, seed,
                                                             device)
                for name in candidates:
                    probs[f"{name}+floor"] = (probs[name] + probs["floor"]) / 2
            for name, p in probs.items():
                acc = float((p.argmax(1) == labels).mean())
                scores.setdefault((set_name, name), []).append(acc)
                print(f"set={set_name} seed={seed} model={name} test_acc={acc:.4f}", flush=True)
    for (set_name, name), accs in scores.items():
        print(f"test_acc_mean_{set_name}_{name}={statistics.mean(accs):.4f}")
        if name != "floor":
            floor = scores[(set_name, "floor")]
            gain, low, high = interval([100 * (a - f) for a, f in zip(accs, floor)])
            print(f"gain_points_{set_name}_{name}={gain:.2f}")
            print(f"gain_ci95_{set_name}_{name}={low:.2f},{high:.2f}")
        if (set_name, name) in seconds:
            print(f"train_seconds_{set_name}_{name}={statistics.mean(seconds[(set_name, name)]):.1f}")


if __name__ == "__main__":
    main()
