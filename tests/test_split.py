import csv
import json
import os
import shutil
import signal

import pytest
import yaml
from PIL import Image

from conftest import jpeg_copy, load_stage, make_image_folder, make_shapes_folder
from finetuner.data.scan import DatasetError, scan_folder
from finetuner.data.split import split_folder


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


def test_a_fifo_in_a_class_folder_is_reported_never_opened(image_folder):
    os.mkfifo(image_folder / "red" / "pipe.jpg")  # opened, it would block
    os.symlink(image_folder / "red" / "pipe.jpg", image_folder / "blue" / "via_link.jpg")
    signal.alarm(60)  # a regression that opens it fails here instead of hanging the suite
    try:
        result = split_folder(image_folder, 0.1, 0.1, seed=0, progress=False)
    finally:
        signal.alarm(0)
    reasons = dict(result.skipped)
    assert reasons["red/pipe.jpg"] == reasons["blue/via_link.jpg"] == (
        "a FIFO (named pipe), not an image file; nothing was read from it")
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


def test_an_empty_class_folder_is_called_empty_with_no_reasons_promised(tmp_path):
    make_image_folder(tmp_path, {"a": 4, "b": 4})
    (tmp_path / "c" / "nested").mkdir(parents=True)  # no file at all, even deeper down
    with pytest.raises(DatasetError) as error:
        split_folder(tmp_path, 0.1, 0.1, 0, progress=False)
    message = str(error.value)
    assert "no usable image: c (remove the folder, or add images)" in message
    assert message.splitlines()[1:] == ["  c: empty folder"]
    assert "see the reasons below" not in message


NFC, NFD = "caf\u00e9", "cafe\u0301"  # one name: macOS writes folder names in NFD


def test_class_folders_that_are_one_name_in_two_unicode_forms_are_an_error(tmp_path):
    make_image_folder(tmp_path, {NFC: 4, NFD: 4, "tea": 4})
    with pytest.raises(DatasetError, match="two Unicode forms") as error:
        split_folder(tmp_path, 0.1, 0.1, 0, progress=False)
    assert "'caf\\xe9'" in str(error.value) and "'cafe\\u0301'" in str(error.value)


def test_a_class_keeps_the_unicode_form_its_folder_has(tmp_path):
    make_image_folder(tmp_path, {NFD: 4, "tea": 4})
    result = split_folder(tmp_path, 0.1, 0.1, 0, progress=False)
    assert result.classes == [NFD, "tea"]


def test_the_missing_folder_hint_names_params_yaml_only_for_the_pipeline(tmp_path):
    (tmp_path / "some_file.txt").write_text("x")
    with pytest.raises(DatasetError, match="params.yaml's data.dir"):
        scan_folder(tmp_path / "some_file.txt", progress=False)
    with pytest.raises(DatasetError) as error:
        scan_folder(tmp_path / "some_file.txt", progress=False, hint="")
    assert str(error.value) == (f"{tmp_path / 'some_file.txt'}: is a file, not a folder "
                                "(expected a folder with one sub-folder per class)")
    with pytest.raises(DatasetError, match="absent: does not exist"):
        scan_folder(tmp_path / "absent", progress=False, hint="")


def test_class_folders_that_differ_only_in_case_are_an_error(tmp_path):
    """On Linux "Cat" and "cat" are two folders; a copy of the data on macOS or Windows would
    merge them into one, and the same pipeline would then see other classes."""
    make_image_folder(tmp_path, {"Cat": 4, "cat": 4, "dog": 4})
    with pytest.raises(DatasetError, match="'Cat' and 'cat' differ only in case"):
        split_folder(tmp_path, 0.1, 0.1, 0, progress=False)
    with pytest.raises(DatasetError, match="differ only in case"):
        scan_folder(tmp_path, progress=False)  # the audit command's way in


def test_names_a_case_insensitive_file_system_keeps_apart_are_two_classes(tmp_path):
    """"Straße" and "STRASSE" are one name to str.casefold, but two folders on macOS and
    Windows (they fold case one character at a time): not refused."""
    make_image_folder(tmp_path, {"Straße": 4, "STRASSE": 4})
    assert split_folder(tmp_path, 0.1, 0.1, 0, progress=False).classes == ["STRASSE", "Straße"]


@pytest.mark.parametrize("folders", [("test", "train", "val"), ("Train",), ("training", "valid")])
def test_a_folder_of_split_folders_is_refused_with_the_folder_meant(tmp_path, folders):
    """data.dir at a data set's top (train/, val/, test/ with the classes inside) would train a
    classifier of the split names: refused, naming the train folder as the likely meaning."""
    for folder in folders:
        make_image_folder(tmp_path / folder, {"cats": 4, "dogs": 4})
    with pytest.raises(DatasetError, match="look like a split already made") as error:
        split_folder(tmp_path, 0.1, 0.1, 0, progress=False)
    meant = next((f for f in folders if f.lower().startswith("train")), folders[0])
    assert f"e.g. {tmp_path / meant} " in str(error.value)


def test_a_class_named_like_a_split_beside_others_is_a_class(tmp_path):
    make_image_folder(tmp_path, {"test": 4, "cats": 4})
    assert split_folder(tmp_path, 0.1, 0.1, 0, progress=False).classes == ["cats", "test"]


def test_a_class_folder_with_images_only_in_sub_folders_is_a_warning(tmp_path):
    make_image_folder(tmp_path / "animals", {"cats": 3, "dogs": 3})
    make_image_folder(tmp_path / "plants", {"rose": 3}, seed=1)  # other images than the cats'
    make_image_folder(tmp_path, {"rocks": 4}, seed=2)
    (tmp_path / "rocks" / "more").mkdir()  # images directly in it too: no warning
    (tmp_path / "animals" / ".thumbs").mkdir()  # folders holding no image it uses: not named
    (tmp_path / "animals" / "notes").mkdir()
    make_image_folder(tmp_path / "days", {f"2026-01-0{d}": 1 for d in range(1, 8)}, seed=4)
    result = split_folder(tmp_path, 0.1, 0.1, 0, progress=False)
    assert result.classes == ["animals", "days", "plants", "rocks"]
    nested = [w for w in result.warnings if "only in sub-folders" in w]
    assert nested == [
        f"class folder 'animals' has images only in sub-folders (cats, dogs): they all count as "
        f"class 'animals'; if those sub-folders are the classes, point data.dir at "
        f"{tmp_path / 'animals'}",
        f"class folder 'days' has images only in sub-folders (2026-01-01, 2026-01-02, 2026-01-03, "
        f"2026-01-04, 2026-01-05 and 2 more): they all count as class 'days'; if those "
        f"sub-folders are the classes, point data.dir at {tmp_path / 'days'}",
        f"class folder 'plants' has images only in sub-folders (rose): they all count as class "
        f"'plants'; if those sub-folders are the classes, point data.dir at "
        f"{tmp_path / 'plants'}"]


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


# --- near-duplicates and data.ignore ----------------------------------------------------------

@pytest.fixture
def with_copies(tmp_path):
    """Twelve distinct images per class, and a resized, re-encoded copy of four circles:
    (folder, the (original, copy) pairs)."""
    root = make_shapes_folder(tmp_path / "set", 12)
    pairs = set()
    for i in range(4):
        original = f"circles/img_{i:03d}.jpg"
        jpeg_copy(Image.open(root / original)).save(root / "circles" / f"copy_{i}.jpg")
        pairs.add((original, f"circles/copy_{i}.jpg"))
    return root, pairs


def test_near_duplicates_stay_in_one_split_when_grouped(with_copies):
    root, pairs = with_copies
    apart_without = 0
    for seed in range(4):
        for grouped in (True, False):
            result = split_folder(root, 0.2, 0.2, seed, progress=False,
                                  group_near_duplicates=grouped)
            where = {i.path: name for name, items in result.splits.items() for i in items}
            apart = sum(where[a] != where[b] for a, b in pairs)
            found = {frozenset(pair[:2]) for pair in result.near_duplicates}
            assert found == {frozenset(pair) for pair in pairs}  # found either way
            summary = result.near_duplicate_summary()
            assert summary["groups"] == 4 and summary["groups_split_apart"] == apart
            if grouped:
                assert apart == 0 and summary["grouping"] == "perceptual hash"
            apart_without += apart
    assert apart_without > 0  # without grouping some pair lands in two splits


def test_files_listed_in_ignore_are_skipped_with_their_reason(with_copies):
    root, _ = with_copies
    ignore = {"circles/copy_0.jpg": "a copy of img_000 (audit)", "circles/gone.jpg": "deleted"}
    result = split_folder(root, 0.2, 0.2, 0, progress=False, ignore=ignore)
    reason = "ignored (data.ignore): a copy of img_000 (audit)"
    assert ("circles/copy_0.jpg", reason) in result.skipped
    assert "circles/copy_0.jpg" not in {i.path for items in result.splits.values() for i in items}
    assert any("'circles/gone.jpg'" in w and "not in" in w for w in result.warnings)


def test_the_split_stage_writes_the_pairs_and_the_reasons(with_copies, tmp_path, monkeypatch):
    root, pairs = with_copies
    params = {"preset": "photos", "data": {"dir": str(root), "group_near_duplicates": True,
                                           "ignore": {"squares/img_000.jpg": "a circle"}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    load_stage("split").main(str(root), "split")
    with open(tmp_path / "split" / "near_duplicates.csv") as f:
        found = {frozenset((r["path"], r["other"])) for r in csv.DictReader(f)}
    assert found == {frozenset(pair) for pair in pairs}
    with open(tmp_path / "split" / "skipped.csv") as f:
        assert list(csv.DictReader(f)) == [{"path": "squares/img_000.jpg",
                                            "reason": "ignored (data.ignore): a circle"}]
    summary = json.loads((tmp_path / "split" / "summary.json").read_text())
    assert summary["near_duplicates"]["groups_kept_together"] == 4
