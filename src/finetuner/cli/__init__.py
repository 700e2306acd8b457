"""Command line: use a trained checkpoint without params.yaml or DVC (one module a command).

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
import sys

from ..data.images import ImageError
from ..data.scan import DatasetError
from ..evaluation.calibration import CalibrationError
from ..export import ExportError
from ..models.checkpoint import CheckpointError
from . import audit, evaluate, export, models, predict
from .common import UsageError

# each command's module: add(commands) declares its arguments, run(args) does it, and
# INTERRUPTED, where it has one, is the line a Ctrl-C prints (exit status 130)
COMMANDS = {"predict": predict, "evaluate": evaluate, "export": export, "models": models,
            "audit": audit}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="finetuner", description="Use a checkpoint written by the finetune stage "
        "(models/model.pt), or its ONNX export, or audit a labelled folder: no params.yaml or "
        "DVC needed.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS.values():
        command.add(commands)
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
                else getattr(COMMANDS[args.command], "INTERRUPTED", "interrupted"))
        print(f"finetuner {args.command}: {said}", file=sys.stderr)
        return 130
