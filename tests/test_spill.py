"""The spill folder of frozen-prefix caches: removed when the run ends, and after a kill by
the next run (a lock nobody holds)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from filelock import FileLock

from finetuner.training.spill import LOCK, remove_orphans, spill_folder, user_root


def test_the_folder_is_locked_while_used_and_removed_after_an_error_too(tmp_path):
    with pytest.raises(RuntimeError):
        with spill_folder(tmp_path) as folder:
            (folder / "prefix-1.npy").write_bytes(b"x" * 100)
            assert remove_orphans(tmp_path, grace_seconds=0) == []  # held: kept
            raise RuntimeError("a failing fit")
    assert not folder.exists()


def test_only_unlocked_folders_older_than_the_grace_are_removed(tmp_path):
    held, orphan, young = (tmp_path / name for name in ("held", "orphan", "young"))
    for folder in (held, orphan, young):
        folder.mkdir()
        (folder / "prefix-1.npy").write_bytes(b"x")
    old = os.stat(held).st_mtime - 3600
    for folder in (held, orphan):
        os.utime(folder, (old, old))
    with FileLock(held / LOCK):  # another open file: as another process holds it
        assert remove_orphans(tmp_path) == [orphan]
    assert held.exists() and young.exists() and not orphan.exists()


def test_the_folder_of_a_killed_run_is_removed_by_the_next(tmp_path):
    code = ("import sys, time\nfrom pathlib import Path\n"
            "from finetuner.training.spill import spill_folder\n"
            "with spill_folder(Path(sys.argv[1])) as folder:\n"
            "    (folder / 'prefix-1.npy').write_bytes(b'x' * 1000)\n"
            "    print(folder, flush=True)\n    time.sleep(60)\n")
    run = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE,
                           text=True)
    try:
        folder = Path(run.stdout.readline().strip())
        assert folder.is_dir() and remove_orphans(tmp_path, grace_seconds=0) == []  # alive
    finally:
        run.send_signal(signal.SIGKILL)
        run.wait()
    assert folder.is_dir()  # a SIGKILL skips every cleanup
    with spill_folder(tmp_path, grace_seconds=0) as mine:  # the next run
        assert not folder.exists() and mine.is_dir()
    assert not mine.exists() and list(tmp_path.iterdir()) == []


def test_each_user_has_a_private_root_and_one_not_theirs_is_not_used(tmp_path):
    """/tmp is shared: a root another user made first (or a link planted there) would make
    every other user's run fail, or spill into a folder they control."""
    assert user_root().name == f"finetuner-spill-{os.getuid()}"
    with spill_folder(tmp_path / "mine") as folder:
        assert folder.parent == tmp_path / "mine"
    assert (tmp_path / "mine").stat().st_mode & 0o777 == 0o700
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    with spill_folder(tmp_path / "link") as folder:  # not this user's own folder: not used
        assert folder.parent != tmp_path / "link" and folder.is_dir()
    assert list((tmp_path / "elsewhere").iterdir()) == [] and not folder.exists()
