"""Scan an ImageFolder, verify every file, and split it stratified into train/val/test.

Rules (also in docs/pipeline.md):

* a class is a sub-folder of the data folder; files in deeper folders belong to it; hidden
  files and folders (``.DS_Store``, ``.git``), files outside a class folder, links to folders
  (not followed), FIFOs, sockets and devices (never opened), names that are not valid UTF-8
  and files that do not decode are skipped and reported with the reason;
* identical files (same sha256) inside one class are one *group* and always land in the same
  split, so nothing leaks from train to test; identical files under two classes are a label
  conflict: every copy is skipped and reported;
* with ``group_near_duplicates``, files of one class whose perceptual hashes nearly match
  (:mod:`finetuner.data.near_duplicates`: a resized or re-encoded copy) join one group too;
  without it the pairs are still found and counted, so the summary says how many groups the
  split put apart;
* files listed in ``ignore`` (relative path -> reason) are skipped with that reason;
* per class, groups are shuffled with the seed and dealt out: ``round(n * test_fraction)`` to
  test and ``round(n * val_fraction)`` to val, each at least one when the class has three
  groups or more (none to test when ``test_fraction`` is 0), the rest (at least one) to train;
  a class with fewer than three groups goes wholly to train, with a warning;
* a class with no usable image (an empty folder, or every file skipped), or fewer than two
  classes, is an error;
* class folder names are matched in Unicode NFC form (macOS may write "café" as NFD, ``e`` +
  combining accent): two class folders that are one name in two forms are an error, as they
  would be one class; a class keeps the name as its folder spells it;
* two class folders whose names differ only in case (``Cat``, ``cat``) are an error: on macOS
  and Windows they are one folder, so a checkout of the data there would silently merge them;
* class folders that are all named like splits (``train``, ``val``, ``test``, ...) are an
  error: the folder holds a split already made, and its classes are one level down;
* a class folder with images only in sub-folders is a warning: those sub-folders are not
  classes (point ``data.dir`` at the class folder if they are meant to be).
"""
from __future__ import annotations

import random
import unicodedata
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from .images import ImageError, decode_image, entry_problem, file_hash
from .near_duplicates import HASH_SIDE, groups, hash_pairs, perceptual_hash

SPLITS = ("train", "val", "test")
# folder names that say a split was made already (compared case-insensitively)
SPLIT_FOLDER_NAMES = frozenset({"train", "training", "val", "valid", "validation", "dev",
                                "test", "testing", "eval"})


class DatasetError(ValueError):
    """The image folder cannot be used as a whole (missing, one class, an empty class)."""


@dataclass(frozen=True)
class Item:
    path: str  # relative to the data folder, with forward slashes
    label: str
    sha256: str
    phash: int = 0  # perceptual hash (near_duplicates.perceptual_hash)


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


def class_name_key(name: str) -> str:
    """The form in which class names are compared: NFC, so that macOS's NFD "café" (``e`` +
    combining accent) is the same class as "café" written in one code point."""
    return unicodedata.normalize("NFC", name)


def class_folders(root: Path) -> list[str]:
    """The class folder names of ``root`` (printable), sorted; raises :class:`DatasetError`
    when two of them are one name in two Unicode forms or in two cases (they would be one
    class, or one folder on macOS and Windows), or when they are all named like splits."""
    names = sorted(_printable(p.name) for p in root.iterdir()
                   if p.is_dir() and not p.name.startswith("."))
    _refuse_one_name_twice(root, names)
    _refuse_split_folders(root, names)
    return names


def _refuse_split_folders(root: Path, names: list[str]) -> None:
    """A :class:`DatasetError` when every class folder is named like a split (train/, val/,
    test/): the classes are one level down, and the folder meant is most likely train's."""
    if not names or not all(name.casefold() in SPLIT_FOLDER_NAMES for name in names):
        return
    meant = next((n for n in names if n.casefold() in ("train", "training")), names[0])
    raise DatasetError(f"{root}: its sub-folders ({', '.join(names)}) look like a split "
                       "already made, not like classes; use the folder whose sub-folders are "
                       f"the classes, e.g. {root / meant} (finetuner makes its own "
                       "train/val/test split from it; to use all of them, move their class "
                       "folders together)")


def _case_key(name: str) -> str:
    """``name`` in NFC with each character case-folded where folding keeps it one character:
    the names a case-insensitive file system (macOS, Windows) takes for one ("Cat", "cat"),
    and not "Straße" and "STRASSE", which it keeps apart."""
    return "".join(c.casefold() if len(c.casefold()) == 1 else c for c in class_name_key(name))


def _refuse_one_name_twice(root: Path, names: list[str]) -> None:
    """A :class:`DatasetError` for class folder names that are one name in two Unicode forms,
    or that differ only in case."""
    forms = defaultdict(list)
    for name in names:
        forms[_case_key(name)].append(name)
    for same in forms.values():
        if len(same) < 2:
            continue
        if len({class_name_key(name) for name in same}) < len(same):
            raise DatasetError(f"{root}: class folders {' and '.join(map(repr, same))} are one "
                               f"name in two Unicode forms ({', '.join(map(ascii, same))}): "
                               "they would be one class; move their files into one folder")
        also = "" if all(class_name_key(n) == n for n in same) else " (and Unicode form)"
        raise DatasetError(f"{root}: class folders {' and '.join(map(repr, same))} differ only "
                           f"in case{also}: on macOS and Windows they are one folder, so a copy "
                           "of the data there would merge them; rename one, or move their "
                           "files into one folder")


def scan_folder(root: str | Path, progress: bool = True, ignore: dict[str, str] | None = None,
                hint: str = "the pipeline reads params.yaml's data.dir"
                ) -> tuple[list[Item], list[tuple[str, str]]]:
    """Every usable image under ``root``'s class folders, and the skipped files with reasons
    (``ignore``: relative path -> why the user left it out).  ``hint`` ends the message for a
    missing folder (the command line sets it to "")."""
    root = Path(root)
    ignore = ignore or {}
    if not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "does not exist"
        raise DatasetError(f"{root}: {what} (expected a folder with one sub-folder per class"
                           f"{'; ' + hint if hint else ''})")
    class_folders(root)  # names that clash, or split folders: an error before reading a file
    items, skipped = [], []
    files = sorted((p for p in root.rglob("*") if p.is_symlink() or not p.is_dir()),
                   key=lambda p: p.relative_to(root).parts)  # FIFOs, sockets, ... reported
    for path in tqdm(files, desc="verify images", unit="file", disable=not progress, leave=False,
                     mininterval=1.0):
        relative = path.relative_to(root)
        name = _printable(relative.as_posix())
        problem = entry_problem(path)  # lstat/stat only: a FIFO, even via a link, stays shut
        if name in ignore:
            skipped.append((name, f"ignored (data.ignore): {ignore[name]}"))
        elif is_hidden(relative):
            skipped.append((name, "hidden file"))
        elif path.is_symlink() and path.is_dir():  # a link to a folder, even at the top level
            skipped.append((name, problem))
        elif len(relative.parts) < 2:
            skipped.append((name, "not inside a class folder"))
        elif name != relative.as_posix():
            skipped.append((name, "file or folder name is not valid UTF-8 (rename it)"))
        elif problem:
            skipped.append((name, problem))
        else:
            try:
                image = decode_image(path, min_side=HASH_SIDE)  # a small DCT scale suffices
            except ImageError as error:
                skipped.append((name, str(error)))
                continue
            items.append(Item(name, relative.parts[0], file_hash(path), perceptual_hash(image)))
    return items, skipped


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


def _unusable(root: Path, empty: list[str], skipped: list[tuple[str, str]]) -> DatasetError:
    """The error for class folders with no usable image: under the summary, each skipped file's
    reason, or "empty folder" for a folder with no file at all."""
    lines, any_reason = [], False
    for name in empty:
        reasons = [f"  {p}: {r}" for p, r in sorted(skipped) if p.split("/")[0] == name]
        any_reason = any_reason or bool(reasons)
        lines += reasons or [f"  {name}: empty folder"]
    advice = ("see the reasons below, or remove the folder" if any_reason
              else "remove the folder, or add images")
    return DatasetError(f"{root}: class folder(s) with no usable image: {', '.join(empty)} "
                        f"({advice})\n" + "\n".join(lines))


def _loose_files(root: Path) -> str:
    """"; N file(s) are directly in it ..." when ``root`` holds files outside any class
    folder (images not sorted into classes yet, or a README), else ""."""
    loose = sum(1 for p in root.iterdir() if not p.name.startswith(".") and p.is_file())
    return (f"; {loose} file(s) are directly in it, outside any class folder: images go in "
            "the sub-folder named after their class") if loose else ""


def _nested_warnings(root: Path, items: list[Item], shown: int = 5) -> list[str]:
    """A warning for each class folder whose images are all in sub-folders: those sub-folders
    are one class here, which is not what a folder of class folders one level down means.
    Names the sub-folders that hold the images (the first ``shown``)."""
    subfolders = defaultdict(set)  # label -> sub-folders holding its images ("" for none)
    for item in items:
        parts = item.path.split("/")
        subfolders[item.label].add(parts[1] if len(parts) > 2 else "")
    warnings = []
    for label in sorted(label for label, subs in subfolders.items() if "" not in subs):
        subs = sorted(subfolders[label])
        more = f" and {len(subs) - shown} more" if len(subs) > shown else ""
        warnings.append(f"class folder '{label}' has images only in sub-folders "
                        f"({', '.join(subs[:shown])}{more}): they all count as class "
                        f"'{label}'; if those sub-folders are the classes, point data.dir at "
                        f"{root / label}")
    return warnings


def split_folder(root: str | Path, val_fraction: float, test_fraction: float, seed: int,
                 progress: bool = True, group_near_duplicates: bool = False,
                 ignore: dict[str, str] | None = None) -> SplitResult:
    """Scan, verify and split ``root``; raises :class:`DatasetError` if it cannot be used."""
    root = Path(root)
    if root.is_dir():  # checked before verifying any file: that can take a while
        class_dirs = class_folders(root)
        if len(class_dirs) < 2:
            raise DatasetError(f"{root}: found {len(class_dirs)} class folder(s) "
                               f"({', '.join(class_dirs) or 'none'}); a classifier needs at "
                               f"least 2 (one sub-folder per class){_loose_files(root)}")
    items, skipped = scan_folder(root, progress, ignore)
    items = _drop_label_conflicts(items, skipped)
    usable = {item.label for item in items}
    empty = [name for name in class_dirs if name not in usable]
    if empty:
        raise _unusable(root, empty, skipped)
    pairs = near_duplicate_pairs(items)
    splits, split_warnings = split_items(items, val_fraction, test_fraction, seed, class_dirs,
                                         pairs if group_near_duplicates else [])
    found = {path for path, _ in skipped}
    warnings = _nested_warnings(root, items) + split_warnings + [
        f"data.ignore lists {path!r}, which is not in {root} (already removed?)"
        for path in sorted(ignore or {}) if path not in found]
    skipped.sort()
    return SplitResult(class_dirs, splits, skipped, warnings,
                       [(items[a].path, items[b].path, bits) for a, b, bits in pairs],
                       group_near_duplicates)
