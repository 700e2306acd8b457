"""Where a frozen-prefix cache over ``train.feature_cache_gb`` spills: a temporary folder per
finetune run, under one folder of this user's in the system's temporary directory.

A run removes its folder when it ends, Ctrl-C included; a run killed outright (SIGKILL, the
out-of-memory killer) cannot, and a spilled cache can be gigabytes.  So each run holds a lock
on a file in its folder while it lives (``filelock``: the operating system drops it when the
process dies, however it dies), and every run first removes the folders whose lock nobody holds:
the leftovers of killed runs.  Folders younger than a minute are left alone (one may be between
its creation and its lock).  The user's folder is made private (0700); when it is not this
user's own (another user made it first, or it is a link), a plain temporary folder is used,
without the clean-up.
"""
from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import stat
import tempfile
import time
from pathlib import Path
from typing import Iterator

from filelock import FileLock, Timeout

LOCK = ".lock"
GRACE_SECONDS = 60.0


def user_root() -> Path:
    """``$TMPDIR/finetuner-spill-<uid>`` (``-<user name>`` where there are no uids)."""
    owner = os.getuid() if hasattr(os, "getuid") else getpass.getuser()
    return Path(tempfile.gettempdir()) / f"finetuner-spill-{owner}"


def _private(root: Path) -> bool:
    """Make ``root`` (0700) if missing; whether it is a folder of this user's, not a link."""
    try:
        root.mkdir(mode=0o700, exist_ok=True)
        info = root.lstat()
    except OSError:
        return False
    mine = not hasattr(os, "getuid") or info.st_uid == os.getuid()
    return stat.S_ISDIR(info.st_mode) and mine


@contextlib.contextmanager
def spill_folder(root: Path | None = None,
                 grace_seconds: float = GRACE_SECONDS) -> Iterator[Path]:
    """A fresh folder under ``root`` (default :func:`user_root`), locked while the block runs
    and removed after it; the orphans of killed runs are removed first
    (:func:`remove_orphans`)."""
    root = root or user_root()
    if not _private(root):
        with tempfile.TemporaryDirectory(prefix="finetuner-spill-") as folder:
            yield Path(folder)
        return
    remove_orphans(root, grace_seconds)
    folder = Path(tempfile.mkdtemp(dir=root))
    lock = FileLock(folder / LOCK)
    try:
        lock.acquire()
        yield folder
    finally:
        lock.release()
        shutil.rmtree(folder, ignore_errors=True)


def remove_orphans(root: Path, grace_seconds: float = GRACE_SECONDS) -> list[Path]:
    """Remove the folders under ``root`` whose lock no living process holds (older than
    ``grace_seconds``); returns them."""
    removed = []
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        try:
            if not folder.is_dir() or time.time() - folder.stat().st_mtime < grace_seconds:
                continue
            with FileLock(folder / LOCK, timeout=0):  # Timeout: held, a live run's folder
                pass
        except (Timeout, OSError):  # held, or gone meanwhile
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed
