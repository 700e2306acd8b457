"""The preprocess module without DVC: arrays, views and parallel decoding."""

import numpy as np
import pytest
from PIL import Image

import finetuner.data.preprocess as preprocess
from conftest import make_image_folder
from finetuner.data.images import decode_image
from finetuner.data.views import eval_view
from finetuner.data.preprocess import (Augmentation, SplitViews, split_batches,
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


def test_augmentation_defaults_are_the_params_defaults():
    from finetuner.params import PreprocessParams
    assert Augmentation() == Augmentation.from_params(PreprocessParams())
    assert Augmentation().to_dict() == Augmentation.from_params(PreprocessParams().__dict__).to_dict()


def test_split_and_prepare_makes_what_the_two_stages_make(tmp_path):
    """The benchmarks' helper: manifests as the split stage writes them, arrays as preprocess."""
    from finetuner.data.workspace import split_and_prepare
    from finetuner.data.split import split_folder
    root = make_image_folder(tmp_path / "images", {"a": 6, "b": 5}, size=20)
    prepared = split_and_prepare(root, tmp_path / "work", val_fraction=0.2, test_fraction=0.2,
                                 seed=1, image_size=16, crop_pct=0.875, train_views=2,
                                 augmentation=AUGMENT, workers=0)
    splits = split_folder(root, 0.2, 0.2, 1, progress=False).splits
    assert prepared.class_names == ["a", "b"] and prepared.train_views == 2
    for name, items in splits.items():
        assert prepared.labels[name].tolist() == [int(i.label == "b") for i in items]
        if name != "train":  # evaluate names them; nothing reads train's
            assert prepared.paths[name] == [i.path for i in items]
        assert prepared.images[name].shape == (len(items) * (2 if name == "train" else 1),
                                               16, 16, 3)
    assert set(prepared.paths) == {"val", "test"}
    assert (tmp_path / "work" / "split" / "train.csv").read_text().count("\n") == 1 + len(
        splits["train"])


@pytest.mark.parametrize("workers", [0, 2])
def test_a_file_gone_after_the_split_is_one_line_naming_it_from_a_worker_too(splits, tmp_path,
                                                                            workers):
    """A worker's exception reaches the caller wrapped in PyTorch's traceback (14 lines); the
    reason is handed back from the worker instead and raised here, one line."""
    from finetuner.data.images import ImageError
    gone = tmp_path / "a" / "gone.png"
    jobs = [SplitViews("val", [splits[1][0], gone, splits[1][1]], 1, tmp_path / "val.npy")]
    with pytest.raises(ImageError) as error:
        write_views(jobs, 16, 0.875, AUGMENT, seed=4, workers=workers)
    assert str(error.value).startswith(f"{gone}: cannot read")
    assert "did the data change after split?" in str(error.value)
    assert len(str(error.value).splitlines()) == 1
