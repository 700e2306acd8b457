"""Split the verified images of an ImageFolder (:mod:`finetuner.data.scan`) stratified into
train/val/test.

Rules (also in docs/pipeline.md):

* identical files (same sha256) inside one class are one *group* and always land in the same
  split, so nothing leaks from train to test; identical files under two classes are a label
  conflict: every copy is skipped and reported;
* with ``group_near_duplicates``, files of one class whose perceptual hashes nearly match
  (:mod:`finetuner.data.near_duplicates`: a resized or re-encoded copy) join one group too;
  without it the pairs are still found and counted, so the summary says how many groups the
  split put apart;
* per class, groups are shuffled with the seed and dealt out: ``round(n * test_fraction)`` to
  test and ``round(n * val_fraction)`` to val, each at least one when the class has three
  groups or more (none to test when ``test_fraction`` is 0), the rest (at least one) to train;
  a class with fewer than three groups goes wholly to train, with a warning.
"""
from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from .manifest import SPLITS
from .near_duplicates import groups, hash_pairs
from .scan import Item, classes_of, nested_warnings, refuse_empty_classes, scan_folder


@dataclass
class SplitResult:
    classes: list[str]
    splits: dict[str, list[Item]]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    warnings: list[str] = field(default_factory=list)
    # near-duplicate pairs of one class by perceptual hash: (path, other path, differing bits)
    near_duplicates: list[tuple[str, str, int]] = field(default_factory=list)
    grouped: bool = False  # whether those pairs were kept in one split

    def near_duplicate_summary(self) -> dict:
        """How many groups of distinct files the hash pairs form, and how many of them the
        split kept whole (all of them when ``grouped``) or put apart."""
        split_of = {item.path: name for name, items in self.splits.items() for item in items}
        paths = sorted({p for pair in self.near_duplicates for p in pair[:2]})
        number = {path: i for i, path in enumerate(paths)}
        group = groups(len(paths), [(number[a], number[b]) for a, b, _ in self.near_duplicates])
        splits_of = defaultdict(set)
        for path in paths:
            splits_of[group[number[path]]].add(split_of[path])
        apart = sum(len(s) > 1 for s in splits_of.values())
        return {"grouping": "perceptual hash" if self.grouped else "off",
                "pairs": len(self.near_duplicates), "groups": len(splits_of),
                "images": len(paths), "groups_kept_together": len(splits_of) - apart,
                "groups_split_apart": apart}


def near_duplicate_pairs(items: list[Item]) -> list[tuple[int, int, int]]:
    """(i, j, differing bits) of the items of one class whose perceptual hashes nearly match
    (:func:`finetuner.data.near_duplicates.hash_pairs`), identical files left out."""
    by_class = defaultdict(list)
    for index, item in enumerate(items):
        by_class[item.label].append(index)
    pairs = []
    for members in by_class.values():
        found = hash_pairs([items[i].phash for i in members])
        pairs += [(members[a], members[b], bits) for a, b, bits in found
                  if items[members[a]].sha256 != items[members[b]].sha256]
    return sorted(pairs)


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
                class_names: list[str], pairs: list[tuple[int, int, int]] = ()
                ) -> tuple[dict[str, list[Item]], list[str]]:
    """Stratified, duplicate-aware, seeded split; returns the splits and warnings.  Identical
    files and the items of each of ``pairs`` (indices into ``items``, one class) stay together.
    """
    number = {}  # sha256 -> its number; identical files share it
    for item in items:
        number.setdefault(item.sha256, len(number))
    joined = groups(len(number), [(number[items[a].sha256], number[items[b].sha256])
                                  for a, b, _ in pairs])
    group_name = {}  # a group is named by its smallest sha256: the same whatever the pairs
    for sha, n in number.items():
        group_name[joined[n]] = min(sha, group_name.get(joined[n], sha))
    groups_by_class: dict[str, dict[str, list[Item]]] = defaultdict(dict)
    for item in items:
        key = group_name[joined[number[item.sha256]]]
        groups_by_class[item.label].setdefault(key, []).append(item)
    splits = {name: [] for name in SPLITS}
    warnings = []
    for label in class_names:
        dealt = [groups_by_class[label][h] for h in sorted(groups_by_class[label])]
        random.Random(f"{seed}:{label}").shuffle(dealt)
        n = len(dealt)
        if n < 3:
            warnings.append(f"class '{label}' has only {n} distinct image(s): all go to train, "
                            "none to val or test (a three-way split needs at least 3)")
            n_test = n_val = 0
        else:
            # at least one group each in test, val and train, whatever the fractions
            n_test = min(max(1, round(n * test_fraction)), n - 2) if test_fraction > 0 else 0
            n_val = min(max(1, round(n * val_fraction)), n - 1 - n_test)
        for index, group in enumerate(dealt):
            split = "test" if index < n_test else "val" if index < n_test + n_val else "train"
            splits[split].extend(group)
    for name in SPLITS:
        splits[name].sort(key=lambda item: item.path)
    return splits, warnings


def split_folder(root: str | Path, val_fraction: float, test_fraction: float, seed: int,
                 progress: bool = True, group_near_duplicates: bool = False,
                 ignore: dict[str, str] | None = None) -> SplitResult:
    """Scan, verify and split ``root``; raises :class:`~finetuner.data.scan.DatasetError`
    if it cannot be used."""
    root = Path(root)
    # checked before verifying any file, which can take a while (scan_folder: a missing root)
    class_dirs = classes_of(root) if root.is_dir() else []
    items, skipped = scan_folder(root, progress, ignore)
    items = _drop_label_conflicts(items, skipped)
    refuse_empty_classes(root, class_dirs, items, skipped)
    pairs = near_duplicate_pairs(items)
    splits, split_warnings = split_items(items, val_fraction, test_fraction, seed, class_dirs,
                                         pairs if group_near_duplicates else [])
    found = {path for path, _ in skipped}
    warnings = nested_warnings(root, items) + split_warnings + [
        f"data.ignore lists {path!r}, which is not in {root} (already removed?)"
        for path in sorted(ignore or {}) if path not in found]
    skipped.sort()
    return SplitResult(class_dirs, splits, skipped, warnings,
                       [(items[a].path, items[b].path, bits) for a, b, bits in pairs],
                       group_near_duplicates)
