"""What every reader of a user's folder agrees on, without scanning it: the error for a folder
that cannot be used, which entries are hidden, and the form in which class names compare.
Shared by the split's scan (:mod:`finetuner.data.scan`) and the folder readers
(:mod:`finetuner.data.folders`), so that the evaluate stage depends on these rules and not on
the scan's."""
from __future__ import annotations

import unicodedata
from pathlib import Path


class DatasetError(ValueError):
    """The image folder cannot be used as a whole (missing, one class, an empty class)."""


def is_hidden(relative: Path) -> bool:
    """True for hidden files and anything inside a hidden folder (.DS_Store, .git/...)."""
    return any(part.startswith(".") for part in relative.parts)


def class_name_key(name: str) -> str:
    """The form in which class names are compared: NFC, so that macOS's NFD "café" (``e`` +
    combining accent) is the same class as "café" written in one code point."""
    return unicodedata.normalize("NFC", name)
