"""Online augmentation: one stored canvas per photo, fresh views drawn every epoch, MixUp /
CutMix per batch; and training that reads its rows from disk learns what it learns in RAM."""
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_image_folder
from finetuner.data.augment import Augmentation, AugmentedRows, BatchMix
from finetuner.data.images import ImageError, decode_image
from finetuner.data.preprocess import SplitViews, write_views
from finetuner.data.views import canvas_side, eval_view
from finetuner.data.rows import ArrayRows, CentreRows, FileRows
from finetuner.models import build_model
from finetuner.params import ParamsError, parse_params
from finetuner.training.batches import TrainData
from finetuner.training.loop import fit
from finetuner.training.prefix import FrozenPrefix

AUGMENT = Augmentation((0.5, 1.0), True, 15.0, 0.2, "trivial")


def test_canvases_are_stored_once_and_hold_the_evaluation_view(tmp_path):
    root = make_image_folder(tmp_path / "images", {"a": 3, "b": 2}, size=30)
    paths = sorted(root.rglob("*.png"))
    job = SplitViews("train", paths, 0, tmp_path / "train.npy")
    write_views([job], 16, 0.875, AUGMENT, seed=0, workers=0)
    side = canvas_side(16, 0.875)
    canvases = FileRows(job.out_file)
    assert side == 18 and len(canvases) == 5 and canvases.row_shape == (18, 18, 3)
    views = np.stack([np.asarray(eval_view(decode_image(p), 16, 0.875)) for p in paths])
    np.testing.assert_array_equal(CentreRows(canvases, 16).take(slice(None)).numpy(), views)


def canvases(n=6, side=40):
    return ArrayRows(torch.randint(0, 256, (n, side, side, 3), dtype=torch.uint8,
                                   generator=torch.Generator().manual_seed(0)))


def test_a_view_depends_on_seed_epoch_and_row_only():
    rows = AugmentedRows(canvases(), 32, AUGMENT, seed=3)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    alone = rows.take([4])
    assert torch.rand(1) == before  # the caller's random state is left as it was
    together = rows.take([1, 4, 2])
    assert together.shape == (3, 32, 32, 3)
    assert torch.equal(together[1], alone[0])  # the same whatever else is in the batch
    rows.set_epoch(1)
    assert not torch.equal(rows.take([4]), alone)  # a fresh draw every epoch
    assert not torch.equal(rows.take([4]), AugmentedRows(canvases(), 32, AUGMENT, 4).take([4]))


def test_batch_mix_gives_soft_targets_and_float_images():
    images = canvases(8, 16).take(slice(None))
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    mix = BatchMix(Augmentation(mixup=0.4, cutmix=1.0), 3)
    mixed, targets = mix(images, labels, seed=5)
    again, _ = mix(images, labels, seed=5)
    assert mixed.shape == (8, 16, 16, 3) and mixed.dtype == torch.float32
    assert 0 <= mixed.min() and mixed.max() <= 1 and torch.equal(mixed, again)
    assert targets.shape == (8, 3)
    torch.testing.assert_close(targets.sum(1), torch.ones(8))


def test_mixup_needs_online_augmentation():
    with pytest.raises(ParamsError, match="preprocess.mixup.*train_views: 0"):
        parse_params({"preprocess": {"mixup": 0.2}})
    assert parse_params({"preprocess": {"train_views": 0, "cutmix": 1.0}}).preprocess.cutmix == 1
    with pytest.raises(ParamsError, match="auto_augment"):
        parse_params({"preprocess": {"auto_augment": "autoaugment"}})


def test_loader_workers_draw_the_same_batches_as_the_training_process():
    rows = AugmentedRows(canvases(12), 32, AUGMENT, seed=0)
    model = build_model("resnet18", "none", 3)
    prefix = FrozenPrefix(model, rows, 0, torch.device("cpu"), 1e9)
    labels = torch.arange(12) % 3
    batches = [torch.tensor([3, 1, 7, 0]), torch.tensor([11, 2, 5, 9])]
    mix = BatchMix(Augmentation(mixup=0.3), 3)
    inline = list(prefix.epoch(batches, labels, 2, 0, mix, workers=0))
    workers = list(prefix.epoch(batches, labels, 2, 0, mix, workers=2))
    for (x, y), (x2, y2) in zip(inline, workers, strict=True):
        assert torch.equal(x, x2) and torch.equal(y, y2)


def tiny(rows_of=lambda a: ArrayRows(a), online=False):
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(3).repeat_interleave(6)
    colours = torch.tensor([[220, 30, 30], [30, 220, 30], [30, 30, 220]])

    def images(lab, side):
        base = colours[lab][:, None, None, :].float()
        return (base + torch.randint(-30, 30, (len(lab), side, side, 3), generator=g)
                ).clamp(0, 255).to(torch.uint8)

    train, val = images(labels, 40 if online else 32), images(labels, 32)
    if not online:
        return TrainData(rows_of(train), labels, rows_of(val), labels.clone(), 1, 3)
    aug = Augmentation((0.5, 1.0), True, 0.0, 0.0, "none", 0.2, 0.0)
    return TrainData(AugmentedRows(rows_of(train), 32, aug, 0), labels, rows_of(val),
                     labels.clone(), 1, 3, BatchMix(aug, 3), CentreRows(rows_of(train), 32))


def run(data, **train):
    params = parse_params({"model": {"arch": "resnet18", "weights": "none"},
                           "preprocess": {"image_size": 32}, "freeze_depth": 2,
                           "train": {"epochs": 2, "batch_size": 6, **train}})
    torch.manual_seed(0)
    return fit(build_model("resnet18", "none", 3), data, params, torch.device("cpu"),
               progress=False)


def test_rows_read_from_disk_train_exactly_as_rows_in_memory(tmp_path):
    def on_disk(array):
        path = tmp_path / f"{len(list(tmp_path.iterdir()))}.npy"
        np.save(path, array.numpy())
        return FileRows(path)

    memory, disk = run(tiny()), run(tiny(on_disk))
    assert [r["train_loss"] for r in memory.history] == [r["train_loss"] for r in disk.history]
    assert [r["val_acc"] for r in memory.history] == [r["val_acc"] for r in disk.history]


def test_online_training_with_mixup_and_the_probe_head_runs():
    result = run(tiny(online=True), head_init="probe")
    assert len(result.history) == 2 and result.probe is not None
    assert all(np.isfinite(r["train_loss"]) for r in result.history)
    # the probe learnt from the canvases' centre views: three colours, cleanly separated
    assert result.probe.val_acc == 1.0


def test_draft_decoding_keeps_the_size_asked_and_still_catches_truncation(tmp_path):
    gradient = np.linspace(0, 255, 2000, dtype=np.uint8)
    big = np.stack([np.tile(gradient, (1500, 1))] * 3, axis=-1)
    path = tmp_path / "big.jpg"
    Image.fromarray(big).save(path, quality=90)
    assert decode_image(path).size == (2000, 1500)
    small = decode_image(path, min_side=300)
    assert min(small.size) >= 300 and small.size[0] < 2000  # 1/4 scale: 500 x 375
    assert small.size == (500, 375)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ImageError, match="truncated"):
        decode_image(cut, min_side=1)


def test_the_stages_run_in_online_mode_and_train_from_the_canvases_on_disk(tmp_path):
    """split -> input_spec -> preprocess (train_views 0, MixUp + CutMix, TrivialAugment) ->
    finetune -> evaluate, the stage scripts' mains (in this process); the prepared train split
    is one canvas per photo, and finetune reads it from disk."""
    import json

    import yaml

    from conftest import copy_project, demo_params, run_stage_here
    from finetuner.data.prepared import load_prepared

    repo = copy_project(tmp_path / "project")
    make_image_folder(repo / "data" / "images", {"a": 8, "b": 8, "c": 8}, size=40)
    params = yaml.safe_load(demo_params())
    params.update(threads=1, device="cpu")
    params["data"]["dir"] = "data/images"
    params["preprocess"].update(image_size=32, train_views=0, workers=0, auto_augment="trivial",
                                mixup=0.2, cutmix=1.0)
    params["model"]["weights"] = "none"
    params["train"].update(epochs=2, batch_size=8)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for stage, *args in [("split", "data/images", "data/split"),
                         ("input_spec", "data/input_spec.json"),
                         ("preprocess", "data/images", "data/split", "data/input_spec.json",
                          "data/prepared"),
                         ("finetune", "data/prepared", "models/model.pt", "metrics/h.csv"),
                         ("evaluate", "models/model.pt", "data/prepared", "metrics")]:
        run_stage_here(repo, stage, *args)
    prepared = load_prepared(repo / "data" / "prepared")
    meta = json.loads((repo / "data" / "prepared" / "meta.json").read_text())
    side = meta["canvas_side"]
    assert prepared.online and side > 32
    assert prepared.images["train"].shape[1:] == (side, side, 3)
    assert prepared.images["train"].shape[0] == len(prepared.labels["train"])  # one per photo
    assert prepared.images["val"].shape[1:] == (32, 32, 3)
    assert meta["augmentation"]["mixup"] == 0.2 and meta["augmentation"]["auto_augment"] == "trivial"
    data = TrainData.from_prepared(prepared, 0)
    assert isinstance(data.train_images, AugmentedRows) and data.mix is not None
    assert isinstance(data.train_images.source, FileRows)  # read from disk, not held in RAM
    assert isinstance(data.val_images, FileRows)
    assert json.loads((repo / "metrics" / "eval.json").read_text())["test_images"] > 0


def test_loader_workers_param():
    assert parse_params({"train": {"loader_workers": 3}}).train.loader_workers == 3
    with pytest.raises(ParamsError, match="loader_workers"):
        parse_params({"train": {"loader_workers": "many"}})
    from finetuner.training.batches import loader_workers
    assert loader_workers("auto", torch.device("cpu")) == 0
    assert 1 <= loader_workers("auto", torch.device("cuda")) <= 4


def test_dvc_links_its_cache_instead_of_copying():
    """docs/scale.md: hard links first, so large outputs are not stored twice on ext4."""
    import configparser

    from conftest import ROOT
    config = configparser.ConfigParser()
    config.read(ROOT / ".dvc" / "config")
    assert config.get("cache", "type").split(",")[0].strip() == "hardlink"


def test_the_refit_set_draws_fresh_views_of_val_too():
    data = tiny(online=True)
    both = data.with_val_in_train()
    assert len(both.train_images) == 36 and len(both.val_labels) == 0
    assert isinstance(both.train_images.parts[1], AugmentedRows)  # val rows augmented as well
    assert both.train_images.take([20]).shape == (1, 32, 32, 3)
    assert torch.equal(both.probe_rows.take([20]), data.val_images.take([2]))  # plain view
