#!/usr/bin/env python
"""The photos recipe against the strongest simple baseline, paired, on every shared set.

    python benchmarks/recipe_vs_probe.py [--sets hymenoptera trashnet chest_xray]
        [--seeds 0 1 2 3 4] [--test-fraction 0.3] [-S key=value ...]

For every set and seed (each seed a different stratified split of the project's own `split`:
val 0.15 of the photos preset, test ``--test-fraction``):

* ``recipe``: the photos preset as a user gets it (``-S`` overrides on top), trained by the
  finetune stage's own :func:`finetuner.training.strategy.train_model` on train + val, scored
  on the test split, which it never reads;
* ``floor``: scikit-learn's ``LogisticRegressionCV`` (10 values of C, 5-fold CV, accuracy) on the
  frozen, pooled features of each photo's evaluation view at the backbone's native size, fitted
  on the same train + val photos, for each offline backbone (Lite0, Lite1, Lite2); the floor is
  the best of the three *on the test split*: an oracle choice, so the floor is strict.

Prints ``name=value`` lines: one per set and seed, then per set the recipe's and the floor's
mean test accuracy, the paired difference (recipe - floor, in points) with its 95 % t-interval
over the seeds, and the recipe's mean training time.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from scipy import stats

from shared_sets import shared_sets

ROOT = Path(__file__).resolve().parents[1]
SETS = shared_sets()
FLOOR_ARCHS = ("tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2")


def recipe_params(seed: int, test_fraction: float, extra: list[str]):
    """The photos preset as `dvc exp run -S preset=photos` composes it from conf/, with the
    seed, the benchmark's test fraction and the ``-S`` overrides ``extra`` on top."""
    from finetuner.presets import preset_params
    return preset_params("photos", [f"seed={seed}", f"data.test_fraction={test_fraction}",
                                    *extra], ROOT / "conf")


def accuracy(model, images, labels) -> float:
    from finetuner.evaluation.metrics import predict_logits
    logits = predict_logits(model, images, torch.device("cpu"))
    return float((logits.argmax(1) == labels).mean())


def floor_probabilities(arch: str, work: Path, data: Path, seed: int,
                        device=torch.device("cpu")) -> tuple[np.ndarray, np.ndarray]:
    """(test class probabilities, test labels) of the issue's baseline for one backbone, on
    the split in ``work/split``."""
    from sklearn.linear_model import LogisticRegressionCV
    from finetuner.data.augment import Augmentation
    from finetuner.data.prepared import load_prepared
    from finetuner.data.preprocess import prepare
    from finetuner.models import build_model, get_arch
    spec, out = get_arch(arch), work / f"floor-{arch}"
    out.mkdir()
    prepare(work / "split", data, out, spec.input_size, spec.crop_pct, 1, Augmentation(), seed, 2)
    prepared = load_prepared(out)
    model = build_model(arch, "DEFAULT", len(prepared.class_names)).eval().to(device)

    @torch.no_grad()
    def features(images):
        parts = [model.forward_frozen(torch.from_numpy(np.array(images[i:i + 64])).to(device)
                                      .permute(0, 3, 1, 2), model.num_stages).float().cpu()
                 for i in range(0, len(images), 64)]
        return torch.cat(parts).numpy()

    x = np.concatenate([features(prepared.images["train"]), features(prepared.images["val"])])
    y = np.concatenate([prepared.labels["train"], prepared.labels["val"]])
    with warnings.catch_warnings():  # scikit-learn's notices about future defaults
        warnings.simplefilter("ignore")
        probe = LogisticRegressionCV(Cs=10, cv=5, max_iter=3000, scoring="accuracy").fit(x, y)
    return probe.predict_proba(features(prepared.images["test"])), prepared.labels["test"]


def floor_accuracy(arch: str, work: Path, data: Path, seed: int) -> float:
    """Test accuracy of :func:`floor_probabilities` (the argmax is scikit-learn's predict)."""
    probabilities, labels = floor_probabilities(arch, work, data, seed)
    return float((probabilities.argmax(1) == labels).mean())


def train_on_split(params, data: Path, work: Path, device=torch.device("cpu")):
    """(model, outcome, prepared arrays, training seconds): ``params`` trained by the finetune
    stage's own :func:`finetuner.training.strategy.train_model` on a split of ``data`` made
    in ``work`` by the project's ``split_folder`` (near-duplicates not grouped)."""
    from finetuner.arch_params import image_size
    from finetuner.data.augment import Augmentation
    from finetuner.data.workspace import split_and_prepare
    from finetuner.models import build_model, input_spec
    from finetuner.training.batches import TrainData
    from finetuner.training.distributed import Dist
    from finetuner.training.strategy import train_model
    p = params.preprocess
    prepared = split_and_prepare(
        data, work, val_fraction=params.data.val_fraction,
        test_fraction=params.data.test_fraction, seed=params.seed,
        image_size=image_size(params), crop_pct=input_spec(params.model.arch).crop_pct,
        train_views=p.train_views, augmentation=Augmentation.from_params(p),
        workers=p.workers)
    torch.manual_seed(params.seed)
    build = lambda: build_model(params.model.arch, params.model.weights,
                                len(prepared.class_names), params.probe.model_layers)
    start = time.perf_counter()
    model, outcome = train_model(build, TrainData.from_prepared(prepared, params.seed), params,
                                 Dist(device), progress=False)
    return model, outcome, prepared, time.perf_counter() - start


def recipe_accuracy(params, data: Path, work: Path) -> tuple[float, float, dict]:
    """(test accuracy, training seconds, the cross-validation record) of the recipe."""
    model, outcome, prepared, seconds = train_on_split(params, data, work)
    return (accuracy(model, prepared.images["test"], prepared.labels["test"]), seconds,
            outcome.cross_validation or {})


def _number(value: float | None) -> float:
    return float("nan") if value is None else value


def interval(differences: list[float]) -> tuple[float, float, float]:
    """Mean and 95 % t-interval of paired differences."""
    d = np.asarray(differences)
    if len(d) < 2:
        return float(d.mean()), float("nan"), float("nan")
    half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
    return float(d.mean()), float(d.mean() - half), float(d.mean() + half)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--test-fraction", type=float, default=0.3)
    parser.add_argument("-S", dest="set", action="append", default=[],
                        help="override a param of the recipe, e.g. -S probe.layers=last")
    args = parser.parse_args()
    from finetuner.runtime import reuse_freed_memory, set_threads
    set_threads(0)
    reuse_freed_memory()  # as the finetune stage does
    for set_name in args.sets:
        data = SETS[set_name]
        if not data.is_dir():
            print(f"skipped: {data} not found (../shared is absent)")
            continue
        recipe, floor, seconds = [], [], []
        for seed in args.seeds:
            params = recipe_params(seed, args.test_fraction, args.set)
            with tempfile.TemporaryDirectory() as tmp:
                acc, secs, cv = recipe_accuracy(params, data, Path(tmp))
                floors = {a: floor_accuracy(a, Path(tmp), data, seed) for a in FLOOR_ARCHS}
            best = max(floors, key=floors.get)
            recipe.append(acc), floor.append(floors[best]), seconds.append(secs)
            each = " ".join(f"floor_{a.rsplit('_', 1)[-1]}={v:.4f}" for a, v in floors.items())
            layers = ",".join(m.get("layers", "?") for m in cv.get("members", []))
            print(f"set={set_name} seed={seed} recipe={acc:.4f} floor={floors[best]:.4f} "
                  f"({best}) {each} recipe_cv_acc={_number(cv.get('cv_acc')):.4f} "
                  f"recipe_layers={layers} recipe_train_seconds={secs:.1f}", flush=True)
        gain, low, high = interval([100 * (r - f) for r, f in zip(recipe, floor)])
        print(f"recipe_mean_{set_name}={statistics.mean(recipe):.4f}")
        print(f"floor_mean_{set_name}={statistics.mean(floor):.4f}")
        print(f"gain_points_{set_name}={gain:.2f}")
        print(f"gain_ci95_{set_name}={low:.2f},{high:.2f}")
        print(f"recipe_train_seconds_{set_name}={statistics.mean(seconds):.1f}", flush=True)


if __name__ == "__main__":
    main()
