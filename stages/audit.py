"""Stage audit: likely wrong labels, near-duplicates (across splits too) and outliers of the
split images, from the frozen backbone's features of their prepared evaluation views (for an
ensemble ``model.arch``, its first member's: ``finetuner.audit.features.audit_arch``).

    python stages/audit.py SPLIT_DIR PREPARED_DIR SUSPECTS_CSV METRICS_DIR

Writes SUSPECTS_CSV (one row per finding, most certain first),
METRICS_DIR/audit.json (the counts) and METRICS_DIR/audit.png (the top suspects).  What to
do with them: docs/audit.md.  Nothing downstream reads them: the pipeline trains on the
folder as it is until the folder or ``data.ignore`` changes.
"""
import time
from pathlib import Path

import numpy as np

from finetuner.audit.features import Features, audit_arch, eval_rows, split_features
from finetuner.audit.findings import audit
from finetuner.audit.report import suspects_png, write_suspects
from finetuner.data.prepared import InputError, load_prepared
from finetuner.data.split import SPLITS
from finetuner.io import read_csv, write_json
from finetuner.models import build_model
from finetuner.models.spec import WeightsError
from finetuner.params import load_params
from finetuner.runtime import resolve_device, set_threads
from finetuner.stage import run_stage


def main(split_dir: str, prepared_dir: str, suspects_csv: str, metrics_dir: str) -> None:
    params = load_params()
    set_threads(params.threads)
    device = resolve_device(params.device)
    start = time.perf_counter()
    prepared = load_prepared(prepared_dir)
    paths, splits = manifest(Path(split_dir), prepared)
    arch = audit_arch(params.model.arch)  # an ensemble's first member, at the views' size
    model = build_model(arch, params.model.weights, len(prepared.class_names))
    features = Features.concatenate([split_features(model, prepared, split, device=device)
                                     for split in SPLITS])
    feature_seconds = time.perf_counter() - start
    labels = np.concatenate([prepared.labels[split] for split in SPLITS])
    a = params.audit
    result = audit(features, labels, prepared.class_names, paths, splits,
                   a.near_duplicate_ratio, a.outlier_fence, params.seed)
    write_suspects(suspects_csv, result)
    where = {path: (split, n) for split in SPLITS
             for n, path in enumerate(p for p, s in zip(paths, splits) if s == split)}

    def view(path: str) -> np.ndarray:
        split, n = where[path]
        rows, index = eval_rows(prepared, split)
        return rows.take(index[n:n + 1])[0].numpy()

    suspects_png(Path(metrics_dir) / "audit.png", result, view, a.gallery_size)
    summary = result.summary()
    seconds = time.perf_counter() - start
    write_json(Path(metrics_dir) / "audit.json", {
        **summary, "arch": arch,
        "seconds": round(seconds, 1), "feature_seconds": round(feature_seconds, 1)})
    print(f"audit: {summary['images']} images: {summary['label']} likely wrong label(s), "
          f"{summary['near_duplicate']} near-duplicate pair(s) "
          f"({summary['near_duplicate_pairs_across_splits']} across splits), "
          f"{summary['outlier']} outlier(s) in {seconds:.0f} s -> {suspects_csv} "
          "(what to do: docs/audit.md)")


def manifest(split_dir: Path, prepared) -> tuple[list[str], list[str]]:
    """(path, split) of every prepared image, in the prepared arrays' order."""
    paths, splits = [], []
    for split in SPLITS:
        file = split_dir / f"{split}.csv"
        if not file.is_file():
            raise InputError(f"{file} is missing: run the split stage first (dvc repro split)")
        rows = read_csv(file)
        if len(rows) != len(prepared.labels[split]):
            raise InputError(f"{file} lists {len(rows)} images but {prepared.directory} holds "
                             f"{len(prepared.labels[split])}: rerun the preprocess stage")
        paths += [row["path"] for row in rows]
        splits += [split] * len(rows)
    return paths, splits


if __name__ == "__main__":
    run_stage("audit", main, "SPLIT_DIR PREPARED_DIR SUSPECTS_CSV METRICS_DIR",
              (InputError, WeightsError))
