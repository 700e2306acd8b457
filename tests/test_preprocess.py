"""The preprocess module without DVC: arrays, views and parallel decoding."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import finetuner.data.preprocess as preprocess
from conftest import make_image_folder
from finetuner.data.images import decode_image
from finetuner.data.preprocess import (Augmentation, SplitViews, eval_view, split_batches,
                                       write_views)

AUGMENT = Augmentation((0.5, 1.0), True, 15.0, 0.2)


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    root = make_image_folder(tmp_path_factory.mktemp("images"), {"a": 7, "b": 6}, size=30)
    paths = sorted(root.rglob("*.png"))
    return [paths[:9], paths[9:11], paths[11:]]  # 9 train, 2 val, 2 test


def written(splits, out_dir, workers):
    jobs = [SplitViews(name, paths, 3 if name == "train" else 1, out_dir / f"{name}.npy")
            for name, paths in zip(("train", "val", "test"), splits)]
    write_views(jobs, 16, 0.875, AUGMENT, seed=4, workers=workers)
    return [np.load(job.out_file) for job in jobs]


def test_batches_never_mix_splits():
    assert split_batches([9, 2, 0, 3], 4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8], [9, 10],
                                              [11, 12, 13]]


def test_two_workers_write_the_same_arrays_as_one_process(splits, tmp_path):
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    one = written(splits, tmp_path / "one", workers=0)
    two = written(splits, tmp_path / "two", workers=2)
    assert [a.shape for a in one] == [(27, 16, 16, 3), (2, 16, 16, 3), (2, 16, 16, 3)]
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a, b)


def test_view_zero_is_the_eval_view_and_the_others_are_augmented(splits, tmp_path):
    train, val, _ = written(splits, tmp_path, workers=0)
    for i, path in enumerate(splits[0]):
        expected = np.asarray(eval_view(decode_image(path), 16, 0.875))
        np.testing.assert_array_equal(train[3 * i], expected)
        assert not np.array_equal(train[3 * i + 1], expected)
    np.testing.assert_array_equal(val[1], np.asarray(eval_view(decode_image(splits[1][1]), 16,
                                                               0.875)))


def test_batches_finished_out_of_order_land_in_their_place(splits, tmp_path, monkeypatch):
    slow = [list(s) for s in splits]
    big = tmp_path / "big.png"  # takes far longer to decode and resize than the 30 px images
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (2500, 2500, 3), dtype=np.uint8)).save(big)
    slow[0][0] = big  # in the first batch: the second worker finishes its batches first
    arrivals = []
    def recording_tqdm(loader, **_):
        for split, index, batch in loader:
            arrivals.append((split, index))
            yield split, index, batch
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    one = written(slow, tmp_path / "one", workers=0)
    monkeypatch.setattr(preprocess, "tqdm", recording_tqdm)
    two = written(slow, tmp_path / "two", workers=2)
    assert arrivals[0] != (0, 0) and sorted(arrivals) == [(0, 0), (0, 8), (1, 0), (2, 0)]
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a, b)


def test_labelled_views_of_a_test_folder(tmp_path):
    """evaluate.test_dir: the evaluation view of every image, labelled by its folder in the
    model's class order; a file that is not an image is skipped with its reason."""
    from finetuner.data.images import ImageError
    from finetuner.data.preprocess import labelled_views
    folder = make_image_folder(tmp_path / "test", {"b": 2, "a": 3}, size=20)
    (folder / "a" / "notes.txt").write_text("not an image")
    (folder / "a" / ".hidden.png").write_bytes(b"")
    images, labels, skipped = labelled_views(folder, ["b", "a", "c"], 16, 0.875)
    assert images.shape == (5, 16, 16, 3) and images.dtype == np.uint8
    assert sorted(labels.tolist()) == [0, 0, 1, 1, 1]
    assert [Path(p).name for p, _ in skipped] == ["notes.txt"]
    (folder / "d").mkdir()
    with pytest.raises(ImageError, match="'d' are not classes of the model.*b, a, c"):
        labelled_views(folder, ["b", "a", "c"], 16, 0.875)
