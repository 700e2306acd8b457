"""The three shared image sets the benchmarks read (../shared/datasets, see ../shared/README.md):
one table, so that every benchmark names and finds them the same way."""
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"

# name -> its class folders' parent, relative to the datasets folder
FOLDERS = {"hymenoptera": "hymenoptera/train",   # ants / bees, near ImageNet
           "trashnet": "trashnet",                # 6 kinds of rubbish, near ImageNet
           "chest_xray": "chest_xray"}            # NORMAL / PNEUMONIA, far from ImageNet


def shared_sets(root: Path = SHARED) -> dict[str, Path]:
    """name -> the folder of class folders, under ``root`` (a copy of the datasets folder)."""
    return {name: Path(root) / folder for name, folder in FOLDERS.items()}
