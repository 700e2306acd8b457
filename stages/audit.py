"""Stage audit: likely wrong labels, near-duplicates (across splits too) and outliers of the
split images, from the frozen backbone's features of their evaluation views (for an ensemble
``model.arch``, its first member's: ``finetuner.audit.features.audit_arch``).

    python stages/audit.py DATA_DIR SPLIT_DIR INPUT_SPEC SUSPECTS_CSV METRICS_DIR

The stage decodes the listed images of DATA_DIR itself, as preprocess decodes val and test
(INPUT_SPEC: the input_spec stage's size and crop), instead of reading preprocess's arrays:
so it reruns when the images, the split, the input size, ``model`` or ``audit`` change, and
not for augmentation (``preprocess.*``), which changes only the training views.

Writes SUSPECTS_CSV (one row per finding, most certain first),
METRICS_DIR/audit.json (the counts) and METRICS_DIR/audit.png (the top suspects).  What to
do with them: docs/audit.md.  Nothing downstream reads them: the pipeline trains on the
folder as it is until the folder or ``data.ignore`` changes.
"""
from finetuner.stage import run_stage  # first: Ctrl-C during the imports below is one line

import time
from pathlib import Path

from finetuner.arch_params import load_arch_params
from finetuner.audit.features import audit_arch, files_features
from finetuner.audit.findings import audit
from finetuner.audit.report import labels_phrase, suspects_png, write_suspects
from finetuner.data.images import ImageError
from finetuner.data.manifest import InputError, read_manifests
from finetuner.data.views import eval_view_of, read_input_spec
from finetuner.io import write_json
from finetuner.models import build_model
from finetuner.models.spec import WeightsError
from finetuner.runtime import resolve_device, set_threads


def main(data_dir: str, split_dir: str, input_spec: str, suspects_csv: str,
         metrics_dir: str) -> None:
    params = load_arch_params()
    set_threads(params.threads)
    device = resolve_device(params.device)
    start = time.perf_counter()
    data, split = Path(data_dir), Path(split_dir)
    manifests = read_manifests(split, data)  # checked before any image is decoded
    size, crop_pct = read_input_spec(Path(input_spec))
    classes, (paths, labels, splits) = manifests.classes, manifests.listed()
    arch = audit_arch(params.model.arch)  # an ensemble's first member, at the views' size
    model = build_model(arch, params.model.weights, len(classes))
    features = files_features(model, [data / path for path in paths], size, crop_pct, device,
                              workers=params.preprocess.workers)
    feature_seconds = time.perf_counter() - start
    a = params.audit
    result = audit(features, labels, classes, paths, splits, a.near_duplicate_ratio,
                   a.outlier_fence, params.seed)
    write_suspects(suspects_csv, result)

    view = lambda path: eval_view_of(data / path, size, crop_pct)  # noqa: E731
    suspects_png(Path(metrics_dir) / "audit.png", result, view, a.gallery_size)
    summary = result.summary()
    seconds = time.perf_counter() - start
    write_json(Path(metrics_dir) / "audit.json", {
        **summary, "arch": arch,
        "seconds": round(seconds, 1), "feature_seconds": round(feature_seconds, 1)})
    print(f"audit: {summary['images']} images: {labels_phrase(summary)}, "
          f"{summary['near_duplicate']} near-duplicate pair(s) "
          f"({summary['near_duplicate_pairs_across_splits']} across splits), "
          f"{summary['outlier']} outlier(s) in {seconds:.0f} s -> {suspects_csv} "
          "(what to do: docs/audit.md)")


if __name__ == "__main__":
    run_stage("audit", main, "DATA_DIR SPLIT_DIR INPUT_SPEC SUSPECTS_CSV METRICS_DIR",
              (InputError, ImageError, WeightsError))
