"""finetuner.data.in_git: the split stage's warning when `dvc exp run` would commit the photos
of data.dir into git (a folder inside the project that neither DVC nor .gitignore keeps out)."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from conftest import demo_params, load_stage, make_image_folder
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
    assert "3 new file(s)" in message and "dvc add 'my photos' && git add 'my photos.dvc'" in message


def test_no_warning_once_dvc_or_gitignore_keeps_the_folder_out(repo):
    (repo / ".gitignore").write_text("/my photos\n")  # what dvc add writes
    assert in_git.files_git_would_commit("my photos") == 0 and in_git.warning("my photos") is None


def test_no_warning_outside_the_project_or_outside_a_repository(repo, tmp_path_factory):
    outside = tmp_path_factory.mktemp("elsewhere")
    (outside / "a").mkdir()
    (outside / "a" / "1.jpg").write_bytes(b"x")
    assert in_git.warning(outside) is None  # DVC hashes it in place; git never sees it
    assert in_git.files_git_would_commit(outside / "a", project=outside) == 0  # no repository


def test_a_link_a_name_git_would_read_as_magic_and_a_folder_git_tracks(repo):
    (repo / "link").symlink_to(repo / "my photos", target_is_directory=True)
    assert in_git.files_git_would_commit("link") == 0  # git and DVC keep the link itself
    (repo / ":odd").mkdir()
    (repo / ":odd" / "1.jpg").write_bytes(b"x")
    assert in_git.files_git_would_commit(":odd") == 1  # a literal name, not a pathspec keyword
    subprocess.run(["git", "add", "my photos/ants/1.jpg"], cwd=repo, check=True)
    message = in_git.warning("my photos")
    assert "2 new file(s)" in message  # dvc add refuses a folder git tracks: out of git first
    assert "git rm -r -q --cached 'my photos' && dvc add 'my photos'" in message


def test_no_git_on_the_path_is_no_warning(repo, monkeypatch):
    monkeypatch.setenv("PATH", os.devnull)
    assert in_git.files_git_would_commit("my photos") == 0 and in_git.warning("my photos") is None


def test_the_split_stage_warns_and_stops_warning_once_dvc_keeps_the_folder(tmp_path, monkeypatch,
                                                                         capsys):
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "params.yaml").write_text(demo_params())
    make_image_folder(tmp_path / "photos", {"red": 5, "blue": 5})
    monkeypatch.chdir(tmp_path)
    split = load_stage("split")
    split.main("photos", "split_a")
    assert "warning: data.dir photos is inside the project" in capsys.readouterr().err
    (tmp_path / ".gitignore").write_text("/photos\n")  # what dvc add photos writes
    split.main("photos", "split_b")
    assert "inside the project" not in capsys.readouterr().err
