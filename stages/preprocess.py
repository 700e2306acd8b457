"""Stage preprocess: decode each listed image once, resize, augment, store uint8 arrays.

    python stages/preprocess.py DATA_DIR SPLIT_DIR OUT_DIR
"""
import sys
from pathlib import Path

from finetuner.data.prepared import prepare
from finetuner.data.preprocess import Augmentation
from finetuner.io import atomic_path
from finetuner.models import get_arch
from finetuner.params import load_params


def main(data_dir: str, split_dir: str, out_dir: str) -> None:
    params = load_params()
    p = params.preprocess
    augmentation = Augmentation(p.crop_scale, p.hflip, p.rotation, p.color_jitter)
    with atomic_path(out_dir, directory=True) as tmp:
        meta = prepare(Path(split_dir), Path(data_dir), tmp, params.image_size,
                       get_arch(params.model.arch).crop_pct, p.train_views, augmentation,
                       params.seed, p.workers)
    print(f"preprocess: {meta['counts']} images at {meta['image_size']} px, "
          f"{meta['train_views']} view(s) per training image -> {out_dir}")


if __name__ == "__main__":
    main(*sys.argv[1:])
