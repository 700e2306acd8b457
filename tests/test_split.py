import shutil

import pytest

from conftest import make_image_folder
from finetuner.data.split import DatasetError, split_folder


def test_stratified_fractions_and_manifest_fields(image_folder):
    result = split_folder(image_folder, 0.1, 0.2, seed=0, progress=False)
    assert result.classes == ["blue", "green", "red"]
    for label in result.classes:
        counts = {s: sum(i.label == label for i in result.splits[s]) for s in result.splits}
        assert counts == {"train": 7, "val": 1, "test": 2}
    item = result.splits["train"][0]
    assert item.path.startswith(item.label + "/") and len(item.sha256) == 64
    all_paths = [i.path for s in result.splits.values() for i in s]
    assert len(all_paths) == len(set(all_paths)) == 30


def test_same_seed_same_split_other_seed_other_split(image_folder):
    a = split_folder(image_folder, 0.2, 0.2, seed=1, progress=False)
    b = split_folder(image_folder, 0.2, 0.2, seed=1, progress=False)
    c = split_folder(image_folder, 0.2, 0.2, seed=2, progress=False)
    assert a.splits == b.splits
    assert a.splits != c.splits


def test_bad_files_are_skipped_and_reported(image_folder):
    (image_folder / "red" / "broken.jpg").write_bytes(b"not a jpeg at all")
    (image_folder / "red" / "empty.png").write_bytes(b"")
    (image_folder / "red" / ".DS_Store").write_bytes(b"\0\0")
    result = split_folder(image_folder, 0.1, 0.1, seed=0, progress=False)
    reasons = dict(result.skipped)
    assert "not an image" in reasons["red/broken.jpg"]
    assert "empty" in reasons["red/empty.png"]
    assert reasons["red/.DS_Store"] == "hidden file"
    assert sum(len(s) for s in result.splits.values()) == 30


def test_duplicates_stay_in_one_split_and_conflicts_are_reported(image_folder):
    for i in range(3):
        shutil.copy(image_folder / "red" / "img_000.png", image_folder / "red" / f"copy_{i}.png")
    shutil.copy(image_folder / "blue" / "img_001.png", image_folder / "green" / "stray.png")
    result = split_folder(image_folder, 0.2, 0.2, seed=3, progress=False)
    homes = {s for s, items in result.splits.items() for i in items
             if i.path in {"red/img_000.png", "red/copy_0.png", "red/copy_1.png", "red/copy_2.png"}}
    assert len(homes) == 1
    reasons = dict(result.skipped)
    assert "label conflict" in reasons["green/stray.png"]
    assert "label conflict" in reasons["blue/img_001.png"]


def test_one_class_is_an_error(tmp_path):
    make_image_folder(tmp_path, {"only": 5})
    with pytest.raises(DatasetError, match="at least 2"):
        split_folder(tmp_path, 0.1, 0.1, 0, progress=False)


def test_class_without_usable_image_is_named(image_folder):
    (image_folder / "void").mkdir()
    (image_folder / "void" / "x.jpg").write_text("hello")
    with pytest.raises(DatasetError, match="void"):
        split_folder(image_folder, 0.1, 0.1, 0, progress=False)


def test_tiny_class_goes_to_train_with_a_warning(tmp_path):
    make_image_folder(tmp_path, {"big": 10, "tiny": 2})
    result = split_folder(tmp_path, 0.1, 0.1, 0, progress=False)
    assert sum(i.label == "tiny" for i in result.splits["train"]) == 2
    assert any("tiny" in w for w in result.warnings)


@pytest.mark.parametrize("n, val, test, expected", [
    (3, 0.1, 0.1, {"train": 1, "val": 1, "test": 1}),
    (3, 0.1, 0.8, {"train": 1, "val": 1, "test": 1}),  # big fractions still leave one for train
    (4, 0.3, 0.6, {"train": 1, "val": 1, "test": 2}),
    (10, 0.2, 0.3, {"train": 5, "val": 2, "test": 3}),
    (2, 0.1, 0.1, {"train": 2, "val": 0, "test": 0}),
])
def test_the_documented_per_class_rule(tmp_path, n, val, test, expected):
    make_image_folder(tmp_path, {"x": n, "y": 10})
    result = split_folder(tmp_path, val, test, 0, progress=False)
    counts = {s: sum(i.label == "x" for i in result.splits[s]) for s in result.splits}
    assert counts == expected
    assert any("'x'" in w for w in result.warnings) == (n < 3)


def test_test_fraction_zero_puts_nothing_in_test(image_folder):
    result = split_folder(image_folder, 0.2, 0.0, seed=0, progress=False)
    assert result.splits["test"] == []
    for label in result.classes:
        counts = {s: sum(i.label == label for i in result.splits[s]) for s in result.splits}
        assert counts == {"train": 8, "val": 2, "test": 0}
