"""The one reader of the image files a user points at after training: a labelled folder (one
sub-folder per class, for ``evaluate.test_dir`` and ``finetuner evaluate``) or any files and
folders (``finetuner predict``).  Class folders are checked and images decoded here, once, for
the stage and the command line alike.

Rules:

* hidden files and anything in a hidden folder are left out silently (``.DS_Store``, ``.git``);
* what is not a regular file is never opened (a FIFO would block the reader forever): FIFOs,
  sockets, devices, broken links and links to folders (not followed) are reported as skipped,
  with what they are; so are files that do not decode, and in a labelled folder files outside
  any class folder;
* a labelled folder's sub-folders must all be classes of the model (an unknown name is an
  error naming it and the model's classes); names are compared in Unicode NFC form, so a
  macOS copy whose folder "café" is written NFD matches the model's "café"; files in deeper
  folders belong to their class;
* an image is given the evaluation view of :func:`finetuner.data.views.eval_view_of`,
  decoded as the pipeline's val and test images are (the same pixels).

:func:`scored_images` chooses what the evaluate stage scores: ``evaluate.test_dir`` read here,
else the prepared test split, else the val split, marked as no honest estimate.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .images import ImageError, entry_problem
from .views import eval_view_of
from .names import DatasetError, class_name_key, is_hidden

Skip = Callable[[Path, str], None]  # called with a skipped path and the reason

def find_files(path: Path, skip: Skip) -> list[Path]:
    """``path`` itself if a regular file, else the regular files below the folder, sorted
    (hidden ones left out); every other entry below it goes to ``skip`` with what it is.
    Raises :class:`DatasetError` when ``path`` is neither a file nor a folder, saying what
    it is."""
    if path.is_dir():  # a folder, or a link to one named by the user: followed
        return _walk(path, skip)
    problem = entry_problem(path)
    if problem is not None:
        raise DatasetError(f"{path}: {problem}")
    return [path]


def _walk(folder: Path, skip: Skip) -> list[Path]:
    files = []
    for path in sorted(folder.rglob("*")):
        if is_hidden(path.relative_to(folder)):
            continue
        problem = entry_problem(path)
        if problem is None:
            files.append(path)
        elif problem != "a folder":
            skip(path, problem)
    return files


def labelled_files(folder: Path, class_names: list[str], skip: Skip) -> list[tuple[Path, int]]:
    """(file, class index in ``class_names``) of every regular file in ``folder``'s class
    folders, sorted; entries outside a class folder and entries that are not regular files go
    to ``skip``.  Raises :class:`DatasetError` for a missing folder, no class folder, or a
    folder name that is not a class."""
    folder = Path(folder)
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "does not exist"
        raise DatasetError(f"{folder}: {what} (expected a folder with one sub-folder per class)")
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    classes = [p for p in entries if p.is_dir()]  # a link to a class folder is followed
    index = {class_name_key(name): i for i, name in enumerate(class_names)}
    unknown = [p.name for p in classes if class_name_key(p.name) not in index]
    if unknown:
        raise DatasetError(f"{folder}: class folder(s) {', '.join(map(repr, unknown))} are not "
                           f"classes of the model; its classes are: {', '.join(class_names)}")
    if not classes:
        raise DatasetError(f"{folder}: no class folders; expected one sub-folder per class, "
                           f"named as the model's classes: {', '.join(class_names)}")
    for path in entries:
        if path not in classes:
            problem = entry_problem(path)
            skip(path, "not inside a class folder" if problem is None else problem)
    return [(path, index[class_name_key(class_dir.name)])
            for class_dir in classes for path in _walk(class_dir, skip)]


def eval_views(files: list[Path], size: int, crop_pct: float, batch_size: int,
               skip: Skip) -> Iterator[tuple[list[Path], np.ndarray]]:
    """(paths, uint8 evaluation views (B, size, size, 3)) per batch of the ``files`` that
    decode; the others go to ``skip`` with the reason.  Never a batch of none."""
    paths, views = [], []
    for index, path in enumerate(files):
        try:
            views.append(eval_view_of(path, size, crop_pct))
            paths.append(path)
        except ImageError as error:
            skip(path, str(error))
        if paths and (len(paths) == batch_size or index == len(files) - 1):
            yield paths, np.stack(views)
            paths, views = [], []


def labelled_views(folder: Path, class_names: list[str], size: int, crop_pct: float,
                   batch_size: int = 64
                   ) -> tuple[np.ndarray, np.ndarray, list[str], list[tuple[str, str]]]:
    """The evaluation views (N, size, size, 3) uint8, class indices and files of a labelled
    folder, and the entries skipped, with the reason.  No usable image is an error."""
    skipped: list[tuple[str, str]] = []
    record = lambda path, reason: skipped.append((str(path), reason))  # noqa: E731
    label_of = dict(labelled_files(folder, class_names, record))
    parts, labels, files = [], [], []
    for paths, views in eval_views(list(label_of), size, crop_pct, batch_size, record):
        parts.append(views)
        labels += [label_of[p] for p in paths]
        files += [str(p) for p in paths]
    if not parts:
        raise DatasetError(f"{folder}: no usable image in its class folders")
    return np.concatenate(parts), np.array(labels, dtype=np.int64), files, skipped


VAL_SOURCE = "val split (it chose the model: not an honest estimate)"


@dataclass(frozen=True)
class ScoredImages:
    """What the evaluate stage scores: uint8 views (N, H, W, 3), their class indices, where
    they come from (``source``, as eval.json's ``evaluated_on`` says it), whether they chose
    the model (the val split: then no honest estimate), and each one's file (relative to
    ``data.dir``, or under ``evaluate.test_dir``; None: arrays prepared before paths were
    kept)."""
    images: np.ndarray
    labels: np.ndarray
    source: str
    chose_model: bool = False
    paths: list[str] | None = None


def scored_images(test_dir: str, data, checkpoint) -> ScoredImages:
    """``test_dir`` when set (a labelled folder, read as :func:`labelled_views` reads it), else
    the prepared test split, else (``data.test_fraction: 0``) the val split, marked as no
    honest estimate."""
    if test_dir:
        images, labels, paths, skipped = labelled_views(
            Path(test_dir), checkpoint.class_names, checkpoint.image_size, checkpoint.crop_pct)
        for path, reason in skipped:
            print(f"evaluate: skipped {path}: {reason}", file=sys.stderr)
        return ScoredImages(images, labels, f"folder {test_dir}", paths=paths)
    paths = data.paths or {}
    if len(data.labels["test"]) == 0:
        print("evaluate: warning: the test split is empty (data.test_fraction: 0) and "
              "evaluate.test_dir is not set; scoring the val split, which chose the model "
              "(and trained it, with train.refit): NOT an honest estimate")
        return ScoredImages(np.asarray(data.images["val"]), data.labels["val"], VAL_SOURCE,
                            chose_model=True, paths=paths.get("val"))
    return ScoredImages(np.asarray(data.images["test"]), data.labels["test"], "test split",
                        paths=paths.get("test"))
