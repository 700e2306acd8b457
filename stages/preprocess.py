"""Stage preprocess: decode each listed image once, resize, augment, store uint8 arrays.

    python stages/preprocess.py DATA_DIR SPLIT_DIR INPUT_SPEC OUT_DIR

INPUT_SPEC is the input_spec stage's JSON (image size and crop of the architecture).  Inputs
are checked before any image is decoded; errors are one line naming the file and what to do.
"""
from finetuner.stage import run_stage  # first: Ctrl-C during the imports below is one line

from pathlib import Path

from finetuner.data.images import ImageError
from finetuner.data.manifest import InputError
from finetuner.data.preprocess import prepare
from finetuner.data.views import read_input_spec
from finetuner.data.augment import Augmentation
from finetuner.io import atomic_path
from finetuner.params import load_params


def main(data_dir: str, split_dir: str, input_spec: str, out_dir: str) -> None:
    params = load_params()  # no model code in this stage
    image_size, crop_pct = read_input_spec(Path(input_spec))
    p = params.preprocess
    augmentation = Augmentation.from_params(p)
    with atomic_path(out_dir, directory=True) as tmp:
        meta = prepare(Path(split_dir), Path(data_dir), tmp, image_size, crop_pct,
                       p.train_views, augmentation, params.seed, p.workers)
    kept = (f"{meta['train_views']} view(s) per training image" if meta["train_views"] else
            f"one {meta['canvas_side']} px canvas per training image (online augmentation)")
    print(f"preprocess: {meta['counts']} images at {meta['image_size']} px, {kept} -> {out_dir}")


if __name__ == "__main__":
    run_stage("preprocess", main, "DATA_DIR SPLIT_DIR INPUT_SPEC OUT_DIR", (InputError, ImageError))
