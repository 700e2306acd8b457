"""One way to write an output file: to a temp file in the same folder, then an atomic rename.

A crash, Ctrl-C or SIGKILL mid-write leaves the previous file (or none) at the output path,
never a half-written one.  Temp files are hidden siblings named ``.NAME.tmp-PID-XXXX`` (ignored
by ``.dvcignore``); one left behind by a killed process is removed by the next write of the
same output.  Files get the usual permissions (``0666 & ~umask``), not ``mkstemp``'s 0600.
"""
from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):  # someone else's process, or no way to tell
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def remove_stale_temps(path: str | Path) -> list[Path]:
    """Remove temp files of ``path`` left by processes that no longer run; return them."""
    path = Path(path)
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(?:tmp|old)-(\d+)-")
    removed = []
    with contextlib.suppress(FileNotFoundError):
        for entry in path.parent.iterdir():
            match = pattern.match(entry.name)
            if match and int(match.group(1)) != os.getpid() and not _alive(int(match.group(1))):
                _remove(entry)
                removed.append(entry)
    return removed


def _fsync(path: Path) -> None:
    """Flush a file or folder entry to disk; best effort (not every system allows it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    for file in ([p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]):
        _fsync(file)


@contextlib.contextmanager
def atomic_path(path: str | Path, directory: bool = False) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success it replaces ``path``, on error it is removed.

    With ``directory`` the temp path is a folder that replaces the folder ``path`` as a whole.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    prefix = f".{path.name}.tmp-{os.getpid()}-"
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=path.parent))
        os.chmod(tmp, 0o777 & ~_umask())
    else:
        fd, name = tempfile.mkstemp(prefix=prefix, dir=path.parent)
        os.close(fd)
        tmp = Path(name)
        os.chmod(tmp, 0o666 & ~_umask())
    try:
        yield tmp
        _fsync_tree(tmp)  # the content is on disk before the name points at it
        if directory and (path.exists() or path.is_symlink()):
            # move the old folder aside in one rename, so no half-deleted folder is ever at path
            old = path.parent / f".{path.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            os.replace(path, old)
            os.replace(tmp, path)
            _remove(old)
        else:
            os.replace(tmp, path)
        _fsync(path.parent)
    finally:
        if tmp.exists() or tmp.is_symlink():
            _remove(tmp)


def write_json(path: str | Path, data) -> None:
    """``data`` as strict JSON: a float that is not finite (a score never computed) is null,
    since json.dumps would write ``NaN``, which JSON has not and strict readers refuse."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_finite(data), indent=2, sort_keys=False, allow_nan=False)
                       + "\n", encoding="utf-8")


def _finite(data):
    """``data`` with every nan or infinite float replaced by None."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {key: _finite(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite(value) for value in data]
    return data


def write_csv(path: str | Path, header: list[str], rows) -> None:
    with atomic_path(path) as tmp:
        with tmp.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(header)
            writer.writerows(rows)


def read_csv(path: str | Path) -> list[dict[str, str]]:
    with Path(path).open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))
