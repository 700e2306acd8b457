#!/usr/bin/env python
"""The real-photo recipe against the linear-probe floor, on every shared photo set.

    python benchmarks/recipe_vs_probe.py [--sets hymenoptera trashnet] [--seeds 0 1 2]
        [--configs floor head_only full recipe probe lpft] [-S key=value ...]

For every set and seed: the project's own split (the photos preset's val 0.15 / test 0.2,
stratified; each seed a different split) and preprocess (the preset's stored views) at the
architecture's native size, then each config trained as the finetune stage trains it
(:func:`finetuner.training.strategy.train_model`) and scored on that seed's test split, which
no config sees before (every choice is made on val):

* ``floor``: the issue's baseline, computed independently of the project's training code:
  scikit-learn ``LogisticRegressionCV`` (10 values of C, 5-fold CV) on the frozen, pooled
  Lite0 features of the evaluation view of train + val;
* ``probe``: ``strategy: probe`` (the project's probe, C chosen on val, refit on train + val);
* ``head_only``: Lite0's new head trained by SGD on frozen features (10 epochs, lr 0.01);
* ``full``: the earlier recipe: Lite0, full fine-tune, random head, lr 0.01, 8 epochs, cosine;
* ``lpft``: ``strategy: finetune`` with the head started from the probe, no refit;
* ``recipe``: the photos preset as a user gets it (``-S`` overrides apply to it alone); its
  candidates before the choice and the refit are scored too (``lpft_train_only``,
  ``probe_train_only``), so LP-FT and the probe need no runs of their own.

Prints one ``name=value`` line per run and, per set, a markdown table: test accuracy mean ±
sample sd over the seeds, each seed's value, and the mean wall time of training (the shared
preprocessing excluded; it is printed once per set and seed).  Last lines: ``margin_<set>=``,
the recipe's mean minus the floor's mean, in accuracy points.
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
import yaml

ROOT = Path(__file__).resolve().parents[1]
SETS = {"hymenoptera": ROOT.parent / "shared" / "datasets" / "hymenoptera" / "train",
        "trashnet": ROOT.parent / "shared" / "datasets" / "trashnet"}
LITE0 = "tf_efficientnet_lite0"
CONFIGS = {
    "probe": {"strategy": "probe"},
    "head_only": {"strategy": "finetune", "freeze_depth": "all", "lr": 0.01,
                  "train": {"epochs": 10, "head_init": "random", "refit": False,
                            "freeze_bn": False}, "model": {"arch": LITE0}},
    "full": {"strategy": "finetune", "freeze_depth": 0, "lr": 0.01,
             "train": {"epochs": 8, "head_init": "random", "refit": False, "freeze_bn": False},
             "model": {"arch": LITE0}},
    "lpft": {"strategy": "finetune", "train": {"head_init": "probe", "refit": False}},
    "recipe": {},
}


def merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


def overrides(pairs: list[str]) -> dict:
    """``-S train.epochs=6`` -> {"train": {"epochs": 6}} (values parsed as YAML)."""
    out: dict = {}
    for pair in pairs:
        key, _, text = pair.partition("=")
        *outer, leaf = key.split(".")
        node = out
        for part in outer:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(text)
    return out


def params_for(config: dict, seed: int):
    """The project's params.yaml under the photos preset, as `dvc exp run -S preset=photos`
    gives it, with ``config`` and the seed on top."""
    from finetuner.params import parse_params
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    return parse_params(merge(merge(raw, {"preset": "photos", "seed": seed}), config))


def prepared_for(data: Path, params, work: Path, cache: dict):
    """The split and stored views for these params (shared by configs of the same size)."""
    from finetuner.data.augment import Augmentation
    from finetuner.data.prepared import split_and_prepare
    from finetuner.models import get_arch
    p, size = params.preprocess, params.image_size
    key = (params.seed, size)
    if key not in cache:
        start = time.perf_counter()
        cache[key] = split_and_prepare(
            data, work / f"s{params.seed}-{size}", val_fraction=params.data.val_fraction,
            test_fraction=params.data.test_fraction, seed=params.seed, image_size=size,
            crop_pct=get_arch(params.model.arch).crop_pct, train_views=p.train_views,
            augmentation=Augmentation(p.crop_scale, p.hflip, p.rotation, p.color_jitter),
            workers=p.workers)
        print(f"preprocess_seconds={time.perf_counter() - start:.1f} seed={params.seed} "
              f"size={size}", flush=True)
    return cache[key]


def test_accuracy(model, prepared) -> float:
    from finetuner.evaluation.metrics import predict_arrays
    probabilities = predict_arrays(model, prepared.images["test"], torch.device("cpu"))
    return float((probabilities.argmax(1) == prepared.labels["test"]).mean())


def floor(prepared) -> float:
    """scikit-learn's cross-validated logistic regression on frozen Lite0 pooled features."""
    from sklearn.linear_model import LogisticRegressionCV
    from finetuner.models import build_model
    model = build_model(LITE0, "DEFAULT", len(prepared.class_names)).eval()

    @torch.no_grad()
    def features(images):
        batches = [torch.from_numpy(np.array(images[i:i + 64])).permute(0, 3, 1, 2)
                   for i in range(0, len(images), 64)]
        return torch.cat([model.forward_frozen(b, model.num_stages) for b in batches]).numpy()

    views = prepared.train_views
    x = np.concatenate([features(prepared.images["train"][::views]),
                        features(prepared.images["val"])])
    y = np.concatenate([prepared.labels["train"], prepared.labels["val"]])
    with warnings.catch_warnings():  # scikit-learn's notices about future defaults
        warnings.simplefilter("ignore", FutureWarning)
        probe = LogisticRegressionCV(Cs=10, cv=5, max_iter=3000, scoring="accuracy").fit(x, y)
    return float((probe.predict(features(prepared.images["test"]))
                  == prepared.labels["test"]).mean())


def run(name: str, config: dict, data: Path, seed: int, work: Path, cache: dict) -> dict:
    from finetuner.models import build_model
    from finetuner.training.distributed import Dist
    from finetuner.training.batches import TrainData
    from finetuner.training.strategy import train_model
    params = params_for(config if name != "floor" else {"model": {"arch": LITE0}}, seed)
    prepared = prepared_for(data, params, work, cache)
    start = time.perf_counter()
    if name == "floor":
        return {"acc": floor(prepared), "seconds": time.perf_counter() - start}
    tensors = TrainData.from_prepared(prepared)
    torch.manual_seed(seed)
    build = lambda: build_model(params.model.arch, params.model.weights,
                                len(prepared.class_names))
    candidates, observing = {}, [0.0]  # the candidates before the choice and refit, on test

    def observe(name, candidate):
        begin = time.perf_counter()
        candidates[name] = test_accuracy(candidate, prepared)
        observing[0] += time.perf_counter() - begin

    model, outcome = train_model(build, tensors, params, Dist(torch.device("cpu")),
                                 progress=False, observe=observe)
    seconds = time.perf_counter() - start - observing[0]  # scoring the candidates excluded
    val = " ".join(f"val_{name}={c['val_acc']:.4f}" for name, c in outcome.candidates.items())
    return {"acc": test_accuracy(model, prepared), "seconds": seconds,
            "chosen": f"{outcome.chosen} {val}", "candidates": candidates}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--configs", nargs="+", default=["floor", "head_only", "full", "recipe"],
                        choices=["floor", *CONFIGS])
    parser.add_argument("-S", dest="set", action="append", default=[],
                        help="override a param of the recipe config, e.g. -S train.epochs=6")
    args = parser.parse_args()
    from finetuner.runtime import reuse_freed_memory, set_threads
    set_threads(0)
    reuse_freed_memory()  # as the finetune stage does
    configs = {**CONFIGS, "recipe": overrides(args.set)}
    for set_name in args.sets:
        data = SETS[set_name]
        if not data.is_dir():
            print(f"skipped: {data} not found (../shared is absent)")
            continue
        results: dict[str, list[dict]] = {}
        with tempfile.TemporaryDirectory() as tmp:
            cache: dict = {}
            for seed in args.seeds:
                for name in args.configs:
                    row = run(name, configs.get(name, {}), data, seed, Path(tmp), cache)
                    results.setdefault(name, []).append(row)
                    chosen = f" chosen={row['chosen']}" if "chosen" in row else ""
                    print(f"set={set_name} seed={seed} config={name} test_acc={row['acc']:.4f} "
                          f"seconds={row['seconds']:.1f}{chosen}", flush=True)
                    if name == "recipe":  # its candidates, trained on train only
                        for candidate, acc in row["candidates"].items():
                            label = "lpft" if candidate == "finetune" else candidate
                            results.setdefault(f"{label} (train only)", []).append(
                                {"acc": acc, "seconds": float("nan")})
                            print(f"set={set_name} seed={seed} config={label}_train_only "
                                  f"test_acc={acc:.4f}", flush=True)
        print(f"\n{set_name}: | config | test accuracy, mean ± sd | per seed | wall time (s) |")
        print("| --- | --- | --- | --- |")
        for name, rows in results.items():
            accs = [r["acc"] for r in rows]
            sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
            print(f"| {name} | {statistics.mean(accs):.3f} ± {sd:.3f} | "
                  f"{', '.join(f'{a:.3f}' for a in accs)} | "
                  f"{statistics.mean(r['seconds'] for r in rows):.0f} |".replace("| nan |",
                                                                                 "| (in recipe) |"))
        if "floor" in results and "recipe" in results:
            margin = 100 * (statistics.mean(r["acc"] for r in results["recipe"])
                            - statistics.mean(r["acc"] for r in results["floor"]))
            print(f"margin_{set_name}={margin:.1f}", flush=True)


if __name__ == "__main__":
    main()
