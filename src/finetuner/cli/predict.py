"""``finetuner predict MODEL PATH...``: the top-k classes of images, as CSV or JSON."""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np

from ..data.folders import find_files
from .common import UsageError, positive_int, probability
from .predictions import MODEL_HELP, Skipped, add_runtime_options, load_model, predict_files

UNKNOWN = "unknown"  # predict's answer when the top probability is not above --min-confidence
INTERRUPTED = ("interrupted; the rows printed so far are whole, the files after them were not "
               "predicted")


def add(commands) -> None:
    """The predict command's arguments."""
    p = commands.add_parser("predict", help="top-k classes of images, as CSV or JSON")
    p.add_argument("model", type=Path, metavar="MODEL", help=MODEL_HELP)
    p.add_argument("paths", type=Path, nargs="+", metavar="PATH",
                   help="an image, or a folder searched recursively (hidden files skipped)")
    p.add_argument("--top-k", type=positive_int, default=3,
                   help="classes per image (at most the model's class count; default 3)")
    p.add_argument("--min-confidence", type=probability, metavar="P",
                   help=f"label {UNKNOWN!r} a photo whose top probability is not above P "
                        "(adds a 'predicted' column); pick P from metrics/coverage.csv, "
                        "computed with the temperature the evaluate stage fitted (none when "
                        "every val prediction was right): give the same --calibration (an "
                        ".onnx export carries its temperature)")
    p.add_argument("--calibration", type=Path, metavar="FILE",
                   help="metrics/calibration.json: divide the logits by its temperature")
    add_runtime_options(p)
    p.add_argument("--json", action="store_true", help="a JSON list instead of CSV")
    p.set_defaults(run=run)


def run(args) -> int:
    predictor = load_model(args)
    names = predictor.class_names
    threshold = args.min_confidence
    if threshold is not None and UNKNOWN in names:
        raise UsageError(f"{args.model}: the model has a class named {UNKNOWN!r}, so "
                         "--min-confidence could not be told apart from it")
    skipped, results = Skipped(), []
    files = [f for path in args.paths for f in find_files(path, skipped)]
    if not files and not skipped:
        raise UsageError(f"no files in {', '.join(map(str, args.paths))}")
    k = min(args.top_k, len(names))
    writer = csv.writer(sys.stdout, lineterminator="\n")
    decided = [] if threshold is None else ["predicted"]
    if not args.json:
        writer.writerow(["path"] + decided
                        + [f"{c}_{i}" for i in range(1, k + 1) for c in ("class", "prob")])
    for paths, probabilities in predict_files(predictor, files, args.batch_size, skipped):
        for path, probs in zip(paths, probabilities):
            top = np.argsort(-probs, kind="stable")[:k]
            # kept when the top probability is above the threshold: 1 rejects every photo
            predicted = ([] if threshold is None else
                         [names[top[0]] if probs[top[0]] > threshold else UNKNOWN])
            if args.json:
                results.append({"path": str(path),
                                **({"predicted": predicted[0]} if predicted else {}),
                                "top": [{"class": names[i], "prob": float(probs[i])} for i in top]})
            else:
                writer.writerow([path] + predicted
                                + [v for i in top for v in (names[i], f"{probs[i]:.6f}")])
    if args.json:
        print(json.dumps(results, indent=2))
    return 1 if skipped else 0
