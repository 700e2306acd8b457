"""``finetuner evaluate MODEL DIR``: accuracy, macro-F1 and a per-class report on a labelled
folder."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..data.folders import labelled_files
from ..evaluation.metrics import classification_metrics
from .common import UsageError
from .predictions import MODEL_HELP, Skipped, add_runtime_options, load_model, predict_files


def add(commands) -> None:
    """The evaluate command's arguments."""
    p = commands.add_parser("evaluate", help="accuracy, macro-F1, per-class report on a folder")
    p.add_argument("model", type=Path, metavar="MODEL", help=MODEL_HELP)
    p.add_argument("dir", type=Path, metavar="DIR",
                   help="one sub-folder per class, named as the model's classes")
    add_runtime_options(p)
    p.add_argument("--json", action="store_true", help="one JSON object instead of text")
    p.set_defaults(run=run, calibration=None)


def run(args) -> int:
    predictor = load_model(args)
    names = predictor.class_names
    skipped = Skipped()
    label_of = dict(labelled_files(args.dir, names, skipped))
    labels, predicted = [], []
    for paths, probabilities in predict_files(predictor, list(label_of), args.batch_size, skipped):
        labels += [label_of[p] for p in paths]
        predicted += probabilities.argmax(1).tolist()
    if not labels:
        raise UsageError(f"{args.dir}: no images in its class folders")
    # Metrics over the classes that have images here; predicting any other class is a mistake.
    present = sorted(set(labels))
    position = {c: i for i, c in enumerate(present)}
    metrics = classification_metrics(np.array([position[c] for c in labels]),
                                      np.array([position.get(c, len(present)) for c in predicted]),
                                      [names[c] for c in present])
    result = {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"],
              "images": len(labels), "skipped": len(skipped), "per_class": metrics["per_class"]}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"accuracy  {result['accuracy']:.4f}  ({len(labels)} images, {len(present)} of "
              f"the model's {len(names)} classes)")
        print(f"macro-F1  {result['macro_f1']:.4f}")
        width = max(5, *(len(names[c]) for c in present))
        print(f"\n{'class':<{width}}  precision  recall      f1  support")
        for name, row in result["per_class"].items():
            print(f"{name:<{width}}  {row['precision']:>9.4f}  {row['recall']:>6.4f}  "
                  f"{row['f1']:>6.4f}  {row['support']:>7d}")
    return 1 if skipped else 0
