import math

import pytest
import torch

from conftest import fit_tiny
from finetuner.models import build_model
from finetuner.training.freeze import depth_at_epoch
from finetuner.training.optim import lr_multiplier, make_optimizer


@pytest.mark.parametrize("freeze_depth", ["all", 3])
def test_cached_frozen_prefix_learns_the_same_as_recomputing_it(freeze_depth):
    _, cached = fit_tiny({"freeze_depth": freeze_depth})
    _, uncached = fit_tiny({"freeze_depth": freeze_depth}, use_cache=False)
    for a, b in zip(cached.history, uncached.history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4, abs=1e-5)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4, abs=1e-5)


def test_same_seed_same_result_other_seed_other_result():
    _, a = fit_tiny({"seed": 3})
    _, b = fit_tiny({"seed": 3})
    _, c = fit_tiny({"seed": 4})
    assert [h["train_loss"] for h in a.history] == [h["train_loss"] for h in b.history]
    assert [h["train_loss"] for h in a.history] != [h["train_loss"] for h in c.history]


def test_lr_reaches_the_optimizer():
    _, result = fit_tiny({"lr": 0.0123, "train": {"schedule": "constant"}})
    assert all(h["lr"] == pytest.approx(0.0123) for h in result.history)


def test_training_learns_and_keeps_the_best_epoch():
    model, result = fit_tiny({"lr": 0.05, "freeze_depth": "all", "train": {"epochs": 4}})
    best = max(h["val_acc"] for h in result.history)
    assert result.history[result.best_epoch - 1]["val_acc"] == best
    assert best > 0.9  # three colours are easy
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in result.best_state.items())


def test_frozen_stages_do_not_change():
    model, _ = fit_tiny({"freeze_depth": 2})
    torch.manual_seed(0)
    fresh = build_model("resnet18", "none", 3)
    for index in range(2):
        for (name, a), b in zip(model.stages[index].state_dict().items(),
                                fresh.stages[index].state_dict().values()):
            assert torch.equal(a, b), name
    assert not torch.equal(model.stages[4][0].conv1.weight, fresh.stages[4][0].conv1.weight)


def test_optimizer_is_sgd_with_momentum_or_adamw():
    model = build_model("resnet18", "none", 3)
    sgd = make_optimizer(model, 0, "sgd", 0.001, 0.9, 0.0, 1.0, 1.0)
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == 0.9
    assert {g["lr"] for g in sgd.param_groups} == {0.001}
    assert isinstance(make_optimizer(model, 0, "adamw", 0.001, 0.9, 0.0, 1.0, 1.0), torch.optim.AdamW)


def test_schedules_follow_their_formulas():
    total, per_epoch = 100, 10
    assert lr_multiplier("constant", 57, total, per_epoch, 0, 7, 0.1) == 1.0
    assert lr_multiplier("step", 69, total, per_epoch, 0, 7, 0.1) == pytest.approx(1.0)
    assert lr_multiplier("step", 70, total, per_epoch, 0, 7, 0.1) == pytest.approx(0.1)
    assert lr_multiplier("cosine", 50, total, per_epoch, 0, 7, 0.1) == pytest.approx(0.5)
    assert lr_multiplier("cosine", 0, total, per_epoch, 10, 7, 0.1) == pytest.approx(1 / 11)
    assert lr_multiplier("cosine", 10, total, per_epoch, 10, 7, 0.1) == pytest.approx(1.0)
    assert lr_multiplier("cosine", 55, total, per_epoch, 10, 7, 0.1) == pytest.approx(
        (1 + math.cos(math.pi * 0.5)) / 2)
    assert lr_multiplier("onecycle", 0, total, per_epoch, 0, 7, 0.1) == pytest.approx(1 / 25)
    assert lr_multiplier("onecycle", 30, total, per_epoch, 0, 7, 0.1) == pytest.approx(1.0)
    assert lr_multiplier("onecycle", 100, total, per_epoch, 0, 7, 0.1) < 1e-5


def test_depth_schedule():
    assert [depth_at_epoch(e, 5, 5, 0, 0, 0) for e in range(3)] == [5, 5, 5]
    assert [depth_at_epoch(e, 4, 5, 0, 2, 1) for e in range(8)] == [4, 4, 3, 3, 2, 2, 1, 1]
    assert [depth_at_epoch(e, 0, 5, 2, 0, 0) for e in range(4)] == [5, 5, 0, 0]
