"""Where a frozen-prefix cache over ``train.feature_cache_gb`` spills: a temporary folder per
finetune run, under one root in the system's temporary directory.

A run removes its folder when it ends, Ctrl-C included; a run killed outright (SIGKILL, the
out-of-memory killer) cannot, and a spilled cache can be gigabytes.  So each run holds an
exclusive ``flock`` on a lock file in its folder while it lives (the kernel drops it when the
process dies, however it dies), and every run first removes the folders whose lock nobody
holds: the leftovers of killed runs.  Folders younger than a minute are left alone (one may be
between its creation and its lock).
"""
from __future__ import annotations

import contextlib
import fcntl
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterator

SPILL_ROOT = Path(tempfile.gettempdir()) / "finetuner-spill"
LOCK = ".lock"
GRACE_SECONDS = 60.0


@contextlib.contextmanager
def spill_folder(root: Path = SPILL_ROOT,
                 grace_seconds: float = GRACE_SECONDS) -> Iterator[Path]:
    """A fresh folder under ``root``, locked while the block runs and removed after it; the
    orphans of killed runs are removed first (:func:`remove_orphans`)."""
    root.mkdir(parents=True, exist_ok=True)
    remove_orphans(root, grace_seconds)
    folder = Path(tempfile.mkdtemp(dir=root))
    lock = open(folder / LOCK, "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield folder
    finally:
        lock.close()
        shutil.rmtree(folder, ignore_errors=True)


def remove_orphans(root: Path, grace_seconds: float = GRACE_SECONDS) -> list[Path]:
    """Remove the folders under ``root`` whose lock no living process holds (older than
    ``grace_seconds``); returns them."""
    removed = []
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        try:
            if not folder.is_dir() or time.time() - folder.stat().st_mtime < grace_seconds:
                continue
            with open(folder / LOCK, "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held: a live run's folder
        except OSError:  # held (BlockingIOError), another user's, or gone meanwhile
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed
