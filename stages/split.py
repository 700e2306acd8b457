"""Stage split: verify the image folder and write stratified train/val/test manifests.

    python stages/split.py DATA_DIR OUT_DIR
"""
import sys

from finetuner.data.split import SPLITS, DatasetError, split_folder
from finetuner.io import atomic_path, write_csv, write_json
from finetuner.params import load_params
from finetuner.stage import run_stage


def main(data_dir: str, out_dir: str) -> None:
    params = load_params(models=False)  # no model code in this stage
    result = split_folder(data_dir, params.data.val_fraction, params.data.test_fraction,
                          params.seed)
    with atomic_path(out_dir, directory=True) as tmp:
        for name in SPLITS:
            write_csv(tmp / f"{name}.csv", ["path", "label", "sha256"],
                      [(i.path, i.label, i.sha256) for i in result.splits[name]])
        write_csv(tmp / "skipped.csv", ["path", "reason"], result.skipped)
        write_json(tmp / "summary.json", {
            "classes": result.classes,
            "counts": {name: len(result.splits[name]) for name in SPLITS},
            "skipped": len(result.skipped), "warnings": result.warnings})
    counts = ", ".join(f"{name} {len(result.splits[name])}" for name in SPLITS)
    print(f"split: {len(result.classes)} classes; {counts}; skipped {len(result.skipped)} "
          f"(listed in {out_dir}/skipped.csv)")
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)


if __name__ == "__main__":
    run_stage("split", main, "DATA_DIR OUT_DIR", (DatasetError,))
