"""Reading prepared arrays batch by batch (finetuner.data.rows) and the frozen-prefix cache that
spills to a file: the same bytes as an array in memory, in the asked order."""
from pathlib import Path

import numpy as np
import pytest
import torch

from finetuner.data.rows import ArrayRows, CentreRows, ConcatRows, FileRows, RangeRows
from finetuner.models import build_model
from finetuner.training.prefix import FrozenPrefix, PrefixStore, SpilledCache, prefix_for


@pytest.fixture
def stored(tmp_path):
    array = np.random.default_rng(0).integers(0, 256, (23, 6, 5, 3), dtype=np.uint8)
    np.save(tmp_path / "rows.npy", array)
    return array, FileRows(tmp_path / "rows.npy")


def test_file_rows_return_the_asked_rows_in_the_asked_order(stored):
    array, rows = stored
    index = torch.tensor([5, 3, 4, 22, 0, 3, 6, 7, 8])  # out of order, repeated, runs
    assert len(rows) == 23 and rows.row_shape == (6, 5, 3)
    np.testing.assert_array_equal(rows.take(index).numpy(), array[index.numpy()])
    np.testing.assert_array_equal(rows.take(slice(20, None)).numpy(), array[20:])
    assert rows.take([]).shape == (0, 6, 5, 3)
    with pytest.raises(IndexError, match="out of range"):
        rows.take([23])


def test_file_rows_do_not_map_the_file(stored, tmp_path):
    """Nothing of the file stays mapped in the process (a map's pages count in its RSS)."""
    _, rows = stored
    rows.take(torch.arange(23))
    maps = Path("/proc/self/maps")
    assert str(tmp_path / "rows.npy") not in (maps.read_text() if maps.exists() else "")


def test_a_truncated_file_is_an_error_naming_it(stored, tmp_path):
    array, _ = stored
    path = tmp_path / "short.npy"
    np.save(path, array)
    path.write_bytes(path.read_bytes()[:-50])
    with pytest.raises((OSError, ValueError), match="short.npy"):
        FileRows(path).take([22])


def test_concat_repeats_and_ranges_index_like_the_arrays(stored):
    array, rows = stored
    val = ArrayRows(array[:4])
    both = ConcatRows([rows, val], [1, 3])
    expected = np.concatenate([array, np.repeat(array[:4], 3, axis=0)])
    assert len(both) == len(expected)
    index = torch.tensor([30, 0, 34, 22, 23, 24])
    np.testing.assert_array_equal(both.take(index).numpy(), expected[index.numpy()])
    np.testing.assert_array_equal(RangeRows(rows, 5, 9).take([0, 3]).numpy(), array[[5, 8]])
    with pytest.raises(ValueError, match="different shapes"):
        ConcatRows([rows, ArrayRows(array[:, :2])], [1, 1])


def test_centre_rows_crop_the_middle(stored):
    array, rows = stored
    np.testing.assert_array_equal(CentreRows(rows, 4).take([2]).numpy(), array[[2], 1:5, 0:4])


def test_a_spilled_cache_holds_what_the_memory_cache_holds(tmp_path):
    torch.manual_seed(0)
    model = build_model("resnet18", "none", 3).eval()
    images = ArrayRows(torch.randint(0, 256, (10, 32, 32, 3), dtype=torch.uint8))
    memory = FrozenPrefix(model, images, 2, torch.device("cpu"), 1e9, batch_size=4)
    spilled = FrozenPrefix(model, images, 2, torch.device("cpu"), 1.0, batch_size=4,
                           spill_dir=tmp_path)
    recomputed = FrozenPrefix(model, images, 2, torch.device("cpu"), 1.0, batch_size=4)
    assert isinstance(memory.cache, torch.Tensor) and isinstance(spilled.cache, SpilledCache)
    assert recomputed.cache is None  # no folder to spill to: computed per batch
    index = torch.tensor([9, 0, 4, 4])
    torch.testing.assert_close(spilled(index), memory(index), rtol=0, atol=0)
    torch.testing.assert_close(recomputed(index), memory(index), rtol=0, atol=0)
    store = PrefixStore(tmp_path)
    prefix_for(store, "train", model, images, 2, torch.device("cpu"), 1.0)
    assert isinstance(store[2, "train"], SpilledCache)
