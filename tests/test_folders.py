"""The reader of the folders a user points at (finetuner.data.folders): labelled folders for
evaluate, any files for predict; entries that are not regular files are reported, never opened."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from conftest import make_image_folder
from finetuner.data.folders import (entry_problem, find_files, labelled_files, labelled_views,
                                    scored_images)
from finetuner.data.scan import DatasetError


def odd_entries(folder: Path) -> None:
    """A FIFO and a dangling link among ``folder``'s files (a reader that opened the FIFO would
    block: the tests would hang, not fail)."""
    os.mkfifo(folder / "pipe.jpg")
    (folder / "gone.png").symlink_to(folder / "deleted.png")


def test_labelled_views_of_a_test_folder(tmp_path):
    """evaluate.test_dir: the evaluation view of every image, labelled by its folder in the
    model's class order; a file that is not an image is skipped with its reason."""
    folder = make_image_folder(tmp_path / "test", {"b": 2, "a": 3}, size=20)
    (folder / "a" / "notes.txt").write_text("not an image")
    (folder / "a" / ".hidden.png").write_bytes(b"")
    images, labels, paths, skipped = labelled_views(folder, ["b", "a", "c"], 16, 0.875,
                                                    batch_size=2)
    assert images.shape == (5, 16, 16, 3) and images.dtype == np.uint8
    assert labels.tolist() == [1, 1, 1, 0, 0]  # a's files, then b's (folders sorted)
    assert [Path(p).relative_to(folder).as_posix() for p in paths] == [
        "a/img_000.png", "a/img_001.png", "a/img_002.png", "b/img_000.png", "b/img_001.png"]
    assert [Path(p).name for p, _ in skipped] == ["notes.txt"]
    (folder / "d").mkdir()
    with pytest.raises(DatasetError, match="'d' are not classes of the model.*b, a, c"):
        labelled_views(folder, ["b", "a", "c"], 16, 0.875)


@pytest.mark.parametrize("model_name, folder_name", [("caf\u00e9", "cafe\u0301"),
                                                     ("cafe\u0301", "caf\u00e9")])
def test_a_class_folder_matches_the_model_class_in_another_unicode_form(tmp_path, model_name,
                                                                        folder_name):
    """A macOS copy writes "café" in NFD (e + combining accent); it is the model's "café"."""
    folder = make_image_folder(tmp_path / "test", {folder_name: 2, "tea": 1}, size=20)
    files = labelled_files(folder, ["tea", model_name], lambda path, reason: None)
    assert [label for _, label in files] == [1, 1, 0]


def test_a_fifo_and_a_dangling_link_are_reported_with_what_they_are(tmp_path):
    folder = make_image_folder(tmp_path / "test", {"a": 2, "b": 1}, size=20)
    odd_entries(folder / "a")
    (folder / "b" / "elsewhere").symlink_to(tmp_path, target_is_directory=True)
    (folder / "loose.png").write_bytes(b"")
    skipped = []
    files = labelled_files(folder, ["a", "b"], lambda path, reason: skipped.append((path, reason)))
    assert [p.name for p, _ in files] == ["img_000.png", "img_001.png", "img_000.png"]
    reasons = {path.name: reason for path, reason in skipped}
    assert reasons["pipe.jpg"].startswith("a FIFO (named pipe), not an image file")
    assert reasons["gone.png"].startswith("a broken symbolic link")
    assert reasons["elsewhere"].startswith("a link to a folder (not followed")
    assert reasons["loose.png"] == "not inside a class folder"
    images, labels, _, listed = labelled_views(folder, ["a", "b"], 16, 0.875)
    assert len(images) == 3 and labels.tolist() == [0, 0, 1]
    assert {Path(p).name for p, _ in listed} == set(reasons)


def test_find_files_names_what_a_path_is_when_it_is_not_a_file_or_folder(tmp_path):
    os.mkfifo(tmp_path / "pipe.jpg")
    (tmp_path / "gone.png").symlink_to(tmp_path / "deleted.png")
    never = lambda path, reason: pytest.fail(f"{path} skipped: {reason}")  # noqa: E731
    with pytest.raises(DatasetError, match=r"pipe\.jpg: a FIFO \(named pipe\), not an image"):
        find_files(tmp_path / "pipe.jpg", never)
    with pytest.raises(DatasetError, match=r"gone\.png: a broken symbolic link"):
        find_files(tmp_path / "gone.png", never)
    with pytest.raises(DatasetError, match=r"absent\.png: no such file or folder"):
        find_files(tmp_path / "absent.png", never)
    (tmp_path / "photo.png").write_bytes(b"x")
    assert find_files(tmp_path / "photo.png", never) == [tmp_path / "photo.png"]
    assert entry_problem(tmp_path / "photo.png") is None


def test_the_evaluate_stage_reads_test_dir_through_it_and_reports_skips_on_stderr(tmp_path,
                                                                                   capsys):
    from types import SimpleNamespace
    folder = make_image_folder(tmp_path / "holdout", {"a": 2, "b": 1}, size=20)
    odd_entries(folder / "b")
    model = SimpleNamespace(class_names=["a", "b"], image_size=16, crop_pct=0.875)
    scored = scored_images(str(folder), None, model)
    assert scored.images.shape == (3, 16, 16, 3) and scored.labels.tolist() == [0, 0, 1]
    assert scored.source == f"folder {folder}" and not scored.chose_model
    err = capsys.readouterr().err
    assert f"evaluate: skipped {folder / 'b' / 'pipe.jpg'}: a FIFO (named pipe)" in err
    assert f"evaluate: skipped {folder / 'b' / 'gone.png'}: a broken symbolic link" in err


def test_what_evaluate_scores_names_its_files_the_val_split_too(tmp_path):
    """With data.test_fraction 0 the val split is scored (no honest estimate): its files are
    named all the same."""
    from conftest import noise_prepared
    from finetuner.data.folders import VAL_SOURCE, scored_images
    from finetuner.data.prepared import load_prepared
    data = load_prepared(noise_prepared(tmp_path / "p", {"train": 4, "val": 3, "test": 0}))
    scored = scored_images("", data, None)
    assert scored.source == VAL_SOURCE and scored.chose_model
    assert scored.paths == ["a/val_0.png", "b/val_1.png", "c/val_2.png"]
    data = load_prepared(noise_prepared(tmp_path / "q", {"train": 4, "val": 3, "test": 2}))
    assert scored_images("", data, None).paths == ["a/test_0.png", "b/test_1.png"]
