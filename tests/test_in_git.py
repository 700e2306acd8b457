"""finetuner.data.in_git: the split stage's warning when `dvc exp run` would commit the photos
of data.dir into git (a folder inside the project that neither DVC nor .gitignore keeps out)."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from finetuner.data import in_git

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


@pytest.fixture
def repo(tmp_path, monkeypatch):
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    for name in ("ants/1.jpg", "ants/2.jpg", "bees/3.jpg"):
        (tmp_path / "my photos" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "my photos" / name).write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_a_folder_git_would_take_into_experiments_is_named_with_the_dvc_add_to_run(repo):
    assert in_git.files_git_would_commit("my photos") == 3
    message = in_git.warning("my photos")
    assert message.startswith("data.dir my photos is inside the project")
    assert "3 file(s)" in message and "dvc add 'my photos' && git add 'my photos.dvc'" in message


def test_no_warning_once_dvc_or_gitignore_keeps_the_folder_out(repo):
    (repo / ".gitignore").write_text("/my photos\n")  # what dvc add writes
    assert in_git.files_git_would_commit("my photos") == 0 and in_git.warning("my photos") is None


def test_no_warning_outside_the_project_or_outside_a_repository(repo, tmp_path_factory):
    outside = tmp_path_factory.mktemp("elsewhere")
    (outside / "a").mkdir()
    (outside / "a" / "1.jpg").write_bytes(b"x")
    assert in_git.warning(outside) is None  # DVC hashes it in place; git never sees it
    assert in_git.files_git_would_commit(outside / "a", project=outside) == 0  # no repository
