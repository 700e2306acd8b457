"""Stage split: verify the image folder and write stratified train/val/test manifests, the
skipped files with reasons, and the near-duplicate pairs its perceptual hash found.

    python stages/split.py DATA_DIR OUT_DIR
"""
from finetuner.stage import run_stage  # first: Ctrl-C during the imports below is one line

import sys

from finetuner.data import in_git
from finetuner.data.manifest import SPLITS, write_manifests
from finetuner.data.scan import DatasetError
from finetuner.data.split import split_folder
from finetuner.io import atomic_path, write_csv
from finetuner.params import load_params


def main(data_dir: str, out_dir: str) -> None:
    params = load_params()  # no model code in this stage
    data = params.data
    result = split_folder(data_dir, data.val_fraction, data.test_fraction, params.seed,
                          group_near_duplicates=data.group_near_duplicates, ignore=data.ignore)
    near = result.near_duplicate_summary()
    with atomic_path(out_dir, directory=True) as tmp:
        write_manifests(tmp, result.classes, result.splits,
                        counts={name: len(result.splits[name]) for name in SPLITS},
                        skipped=len(result.skipped), near_duplicates=near,
                        warnings=result.warnings)
        write_csv(tmp / "skipped.csv", ["path", "reason"], result.skipped)
        write_csv(tmp / "near_duplicates.csv", ["path", "other", "differing_bits"],
                  result.near_duplicates)
    counts = ", ".join(f"{name} {len(result.splits[name])}" for name in SPLITS)
    print(f"split: {len(result.classes)} classes; {counts}; skipped {len(result.skipped)} "
          f"(listed in {out_dir}/skipped.csv)")
    kept = ("kept in one split" if result.grouped else
            f"{near['groups_split_apart']} of them across splits (data.group_near_duplicates "
            "is off)")
    print(f"split: {near['groups']} group(s) of near-duplicate files by perceptual hash, "
          f"{kept} (listed in {out_dir}/near_duplicates.csv)")
    git_warning = in_git.warning(data_dir)  # about the workspace: not in the manifests
    for warning in result.warnings + ([git_warning] if git_warning else []):
        print(f"warning: {warning}", file=sys.stderr)


if __name__ == "__main__":
    run_stage("split", main, "DATA_DIR OUT_DIR", (DatasetError,))
