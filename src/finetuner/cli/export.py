"""``finetuner export CHECKPOINT OUT``: an ONNX, TorchScript or .pt2 model and a JSON of its
classes and preprocessing (:mod:`finetuner.export`)."""
from __future__ import annotations

from pathlib import Path

from ..evaluation.calibration import file_sha256, read_calibration
from ..export import FORMATS, export_model, format_for
from ..models.checkpoint import load_checkpoint
from .common import UsageError

INTERRUPTED = ("interrupted; no file is half-written (the model and its .json are each written "
               "whole or not at all)")


def add(commands) -> None:
    """The export command's arguments."""
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
    p.set_defaults(run=run)


def run(args) -> int:
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
