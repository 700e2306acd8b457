"""Scan an ImageFolder and verify every file: which sub-folders are classes, which files are
usable images, and why each other file is skipped.  What the split stage, the audit command and
the folder readers (:mod:`finetuner.data.folders`) share; the split itself is
:mod:`finetuner.data.split`.

Rules (also in docs/pipeline.md):

* a class is a sub-folder of the data folder; files in deeper folders belong to it; hidden
  files and folders (``.DS_Store``, ``.git``), files outside a class folder, links to folders
  (not followed), FIFOs, sockets and devices (never opened), names that are not valid UTF-8
  and files that do not decode are skipped and reported with the reason;
* files listed in ``ignore`` (relative path -> reason) are skipped with that reason;
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

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from .images import ImageError, decode_image, entry_problem, file_hash
from .names import DatasetError, class_name_key, is_hidden
from .near_duplicates import HASH_SIDE, perceptual_hash

# folder names that say a split was made already (compared case-insensitively)
SPLIT_FOLDER_NAMES = frozenset({"train", "training", "val", "valid", "validation", "dev",
                                "test", "testing", "eval"})


@dataclass(frozen=True)
class Item:
    path: str  # relative to the data folder, with forward slashes
    label: str
    sha256: str
    phash: int = 0  # perceptual hash (near_duplicates.perceptual_hash)


def _printable(name: str) -> str:
    """``name`` as valid UTF-8 text: bytes that are not UTF-8 become ``\\xNN``."""
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:  # undecodable bytes in a POSIX file name (surrogate escapes)
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


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


def nested_warnings(root: Path, items: list[Item], shown: int = 5) -> list[str]:
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


def classes_of(root: Path) -> list[str]:
    """:func:`class_folders` of ``root``, at least two of them, else a :class:`DatasetError`
    (counting the files directly in ``root``: images not sorted into classes yet)."""
    names = class_folders(root)
    if len(names) < 2:
        raise DatasetError(f"{root}: found {len(names)} class folder(s) "
                           f"({', '.join(names) or 'none'}); a classifier needs at "
                           f"least 2 (one sub-folder per class){_loose_files(root)}")
    return names


def refuse_empty_classes(root: Path, class_dirs: list[str], items: list[Item],
                         skipped: list[tuple[str, str]]) -> None:
    """A :class:`DatasetError` naming the class folders left with no usable image among
    ``items``, with each skipped file's reason ("empty folder" for a folder of no file)."""
    usable = {item.label for item in items}
    empty = [name for name in class_dirs if name not in usable]
    if empty:
        raise _unusable(root, empty, skipped)
