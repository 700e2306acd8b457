"""Scan an ImageFolder, verify every file, and split it stratified into train/val/test.

Rules (also in docs/pipeline.md):

* a class is a sub-folder of the data folder; files in deeper folders belong to it; hidden
  files and folders (``.DS_Store``, ``.git``), files outside a class folder, links to folders
  (not followed), names that are not valid UTF-8 and files that do not decode are skipped and
  reported with the reason;
* identical files (same sha256) inside one class are one *group* and always land in the same
  split, so nothing leaks from train to test; identical files under two classes are a label
  conflict: every copy is skipped and reported;
* per class, groups are shuffled with the seed and dealt out: ``round(n * test_fraction)`` to
  test and ``round(n * val_fraction)`` to val, each at least one when the class has three
  groups or more (none to test when ``test_fraction`` is 0), the rest (at least one) to train;
  a class with fewer than three groups goes wholly to train, with a warning;
* a class with no usable image, or fewer than two classes, is an error.
"""
from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from .images import ImageError, decode_image, file_hash

SPLITS = ("train", "val", "test")


class DatasetError(ValueError):
    """The image folder cannot be used as a whole (missing, one class, an empty class)."""


@dataclass(frozen=True)
class Item:
    path: str  # relative to the data folder, with forward slashes
    label: str
    sha256: str


@dataclass
class SplitResult:
    classes: list[str]
    splits: dict[str, list[Item]]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    warnings: list[str] = field(default_factory=list)


def is_hidden(relative: Path) -> bool:
    """True for hidden files and anything inside a hidden folder (.DS_Store, .git/...)."""
    return any(part.startswith(".") for part in relative.parts)


def _printable(name: str) -> str:
    """``name`` as valid UTF-8 text: bytes that are not UTF-8 become ``\\xNN``."""
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:  # undecodable bytes in a POSIX file name (surrogate escapes)
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def scan_folder(root: str | Path, progress: bool = True) -> tuple[list[Item], list[tuple[str, str]]]:
    """Every usable image under ``root``'s class folders, and the skipped files with reasons."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"data folder {root} does not exist or is not a folder "
                           "(set data.dir in params.yaml to a folder with one sub-folder per class)")
    items, skipped = [], []
    files = sorted((p for p in root.rglob("*") if p.is_file() or p.is_symlink()),
                   key=lambda p: p.relative_to(root).parts)
    for path in tqdm(files, desc="verify images", unit="file", disable=not progress, leave=False,
                     mininterval=1.0):
        relative = path.relative_to(root)
        name = _printable(relative.as_posix())
        if is_hidden(relative):
            skipped.append((name, "hidden file"))
        elif path.is_symlink() and path.is_dir():
            skipped.append((name, "link to a folder (not followed; copy or move its files in)"))
        elif len(relative.parts) < 2:
            skipped.append((name, "not inside a class folder"))
        elif name != relative.as_posix():
            skipped.append((name, "file or folder name is not valid UTF-8 (rename it)"))
        elif not path.is_file():
            skipped.append((name, "broken link"))
        else:
            try:
                decode_image(path, min_side=1)  # smallest DCT scale: validity only
            except ImageError as error:
                skipped.append((name, str(error)))
                continue
            items.append(Item(name, relative.parts[0], file_hash(path)))
    return items, skipped


def _drop_label_conflicts(items: list[Item], skipped: list) -> list[Item]:
    labels_of = defaultdict(set)
    for item in items:
        labels_of[item.sha256].add(item.label)
    kept = []
    for item in items:
        labels = labels_of[item.sha256]
        if len(labels) > 1:
            skipped.append((item.path, "label conflict: the same image is under classes "
                            + ", ".join(sorted(labels))))
        else:
            kept.append(item)
    return kept


def split_items(items: list[Item], val_fraction: float, test_fraction: float, seed: int,
                class_names: list[str]) -> tuple[dict[str, list[Item]], list[str]]:
    """Stratified, duplicate-aware, seeded split; returns the splits and warnings."""
    groups_by_class: dict[str, dict[str, list[Item]]] = defaultdict(dict)
    for item in items:
        groups_by_class[item.label].setdefault(item.sha256, []).append(item)
    splits = {name: [] for name in SPLITS}
    warnings = []
    for label in class_names:
        groups = [groups_by_class[label][h] for h in sorted(groups_by_class[label])]
        random.Random(f"{seed}:{label}").shuffle(groups)
        n = len(groups)
        if n < 3:
            warnings.append(f"class '{label}' has only {n} distinct image(s): all go to train, "
                            "none to val or test (a three-way split needs at least 3)")
            n_test = n_val = 0
        else:
            # at least one group each in test, val and train, whatever the fractions
            n_test = min(max(1, round(n * test_fraction)), n - 2) if test_fraction > 0 else 0
            n_val = min(max(1, round(n * val_fraction)), n - 1 - n_test)
        for index, group in enumerate(groups):
            split = "test" if index < n_test else "val" if index < n_test + n_val else "train"
            splits[split].extend(group)
    for name in SPLITS:
        splits[name].sort(key=lambda item: item.path)
    return splits, warnings


def split_folder(root: str | Path, val_fraction: float, test_fraction: float, seed: int,
                 progress: bool = True) -> SplitResult:
    """Scan, verify and split ``root``; raises :class:`DatasetError` if it cannot be used."""
    root = Path(root)
    if root.is_dir():  # checked before verifying any file: that can take a while
        class_dirs = sorted(_printable(p.name) for p in root.iterdir()
                            if p.is_dir() and not p.name.startswith("."))
        if len(class_dirs) < 2:
            raise DatasetError(f"{root}: found {len(class_dirs)} class folder(s) "
                               f"({', '.join(class_dirs) or 'none'}); a classifier needs at "
                               "least 2 (one sub-folder per class)")
    items, skipped = scan_folder(root, progress)
    items = _drop_label_conflicts(items, skipped)
    usable = {item.label for item in items}
    empty = [name for name in class_dirs if name not in usable]
    if empty:
        raise DatasetError(f"{root}: class folder(s) with no usable image: "
                           f"{', '.join(empty)} (see the reasons below, or remove the folder)\n"
                           + "\n".join(f"  {p}: {r}" for p, r in sorted(skipped)
                                       if p.split('/')[0] in empty))
    splits, warnings = split_items(items, val_fraction, test_fraction, seed, class_dirs)
    skipped.sort()
    return SplitResult(class_dirs, splits, skipped, warnings)
