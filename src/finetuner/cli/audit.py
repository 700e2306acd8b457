"""``finetuner audit DIR``: the audit stage's suspects (likely wrong labels, near-duplicates,
outliers) for any labelled folder, as CSV or JSON; no checkpoint or project needed."""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np

from ..data.scan import DatasetError, class_folders, scan_folder
from ..models import ArchError, build_model, check_arch, input_spec
from ..models.spec import WeightsError
from ..params import PHOTOS_ARCH, AuditParams
from .common import (BATCH_HELP, DEVICE_CHOICES, UsageError, bounded, device_for, device_name,
                     positive_int, probability)


def add(commands) -> None:
    """The audit command's arguments."""
    defaults = AuditParams()
    p = commands.add_parser("audit", help="likely wrong labels, near-duplicates and outliers of "
                            "a labelled folder, as CSV or JSON (no checkpoint needed)")
    p.add_argument("dir", type=Path, metavar="DIR", help="one sub-folder per class")
    p.add_argument("--arch", default=PHOTOS_ARCH,
                   help="the backbone whose ImageNet features are compared, at its native size; "
                        "for an ensemble a+b, a's at the ensemble's size, as the audit stage "
                        "(default: the photos preset's, %(default)s)")
    p.add_argument("--image-size", type=bounded(int, 16, 1024), metavar="PX",
                   help="as preprocess.image_size, to read what the audit stage reads (the "
                        "photos preset: 300; default: --arch's native size)")
    p.add_argument("--weights", default="DEFAULT", help="as model.weights (default: DEFAULT)")
    p.add_argument("--near-duplicate-ratio", type=probability,
                   default=defaults.near_duplicate_ratio,
                   help="as audit.near_duplicate_ratio (default %(default)s)")
    p.add_argument("--outlier-fence", type=bounded(float, 0), default=defaults.outlier_fence,
                   help="as audit.outlier_fence (default %(default)s)")
    p.add_argument("--seed", type=bounded(int, 0, 2**31 - 1), default=0,
                   help="of the probe's folds, as seed (default 0)")
    p.add_argument("--device", type=device_name, default="auto",
                   help=f"where torch runs the backbone: {DEVICE_CHOICES}")
    p.add_argument("--batch-size", type=positive_int, default=32, help=BATCH_HELP)
    p.add_argument("--json", action="store_true", help="a JSON list instead of CSV")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..audit.features import audit_arch, files_features
    from ..audit.findings import COLUMNS, audit
    from ..audit.report import labels_phrase
    device = device_for(args, "torch")  # a device that is not here: before any file is read
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
