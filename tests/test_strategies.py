"""Fine-tuning strategies: each option must visibly change what the optimizer and model do."""
import pytest
import torch

from conftest import fit_tiny, tiny_data
from finetuner.models import build_model
from finetuner.training import batches, loop
from finetuner.training.optim import make_optimizer, stage_lr, unfreeze


def test_discriminative_lrs_in_the_optimizer_groups():
    model = build_model("resnet18", "none", 3)
    optimizer = make_optimizer(model, 2, "sgd", 0.1, 0.9, 1e-4, backbone_lr_mult=0.1,
                               stage_lr_decay=0.5)
    lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert lrs["head"] == pytest.approx(0.1)
    assert lrs["stage 4"] == pytest.approx(0.01)       # top stage: lr * mult
    assert lrs["stage 3"] == pytest.approx(0.005)      # one below: * decay
    assert lrs["stage 2"] == pytest.approx(0.0025)
    assert not any(name.startswith(("stage 0", "stage 1")) for name in lrs)  # frozen: absent


def test_weight_decay_skips_norm_and_bias():
    model = build_model("resnet18", "none", 3)
    optimizer = make_optimizer(model, 0, "sgd", 0.1, 0.9, 1e-4, 1.0, 1.0)
    for group in optimizer.param_groups:
        if all(p.ndim <= 1 for p in group["params"]):
            assert group["weight_decay"] == 0.0
        else:
            assert group["weight_decay"] == 1e-4 and all(p.ndim > 1 for p in group["params"])


def test_unfrozen_stages_join_with_their_own_lr():
    model = build_model("resnet18", "none", 3)
    optimizer = make_optimizer(model, 5, "sgd", 0.1, 0.9, 0.0, 0.1, 1.0)
    assert {g["name"] for g in optimizer.param_groups} == {"head", "head (norm/bias)"}
    unfreeze(optimizer, model, 5, 4, 0.1, 0.0, 0.1, 1.0)
    names = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert names["stage 4"] == pytest.approx(stage_lr(0.1, 4, 5, 0.1, 1.0)) == pytest.approx(0.01)
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert all(id(p) in in_optimizer for p in model.stages[4].parameters())
    assert not any(id(p) in in_optimizer for p in model.stages[3].parameters())


def _record_trainable(monkeypatch):
    seen = []
    real = loop.train_mode

    def recording(model, depth, freeze_bn=False):
        real(model, depth, freeze_bn)
        seen.append([all(p.requires_grad for p in stage.parameters()) for stage in model.stages])
        seen[-1].append([m.training for m in model.stages[0].modules()
                         if isinstance(m, torch.nn.BatchNorm2d)][0])

    monkeypatch.setattr(loop, "train_mode", recording)
    return seen


def test_gradual_unfreezing_trains_exactly_the_promised_stages(monkeypatch):
    seen = _record_trainable(monkeypatch)
    _, result = fit_tiny({"freeze_depth": "all", "lr": 0.01,
                          "train": {"epochs": 6, "unfreeze_every": 2, "unfreeze_floor": 3,
                                    "schedule": "constant", "backbone_lr_mult": 0.5}})
    # 5 stages: epochs 0-1 head only, 2-3 stage 4, 4-5 stages 3-4 (floor 3)
    expected = [5, 5, 4, 4, 3, 3]
    assert [h["frozen_stages"] for h in result.history] == expected
    for trainable, depth in zip(seen, expected):
        assert trainable[:5] == [i >= depth for i in range(5)]
    assert [len(lrs) for lrs in result.lrs][0] < [len(lrs) for lrs in result.lrs][-1]
    assert sorted({round(lr, 9) for lr in result.lrs[-1]}) == [0.005, 0.01]


def test_two_phase_head_then_all(monkeypatch):
    seen = _record_trainable(monkeypatch)
    _, result = fit_tiny({"freeze_depth": 0, "train": {"epochs": 3, "head_epochs": 1}})
    assert [h["frozen_stages"] for h in result.history] == [5, 0, 0]
    assert seen[0][:5] == [False] * 5 and seen[1][:5] == [True] * 5
    assert seen[0][5] is False and seen[1][5] is True  # stem BatchNorm leaves eval mode


def test_early_stopping_stops_and_restores_the_best_epoch(monkeypatch):
    scripted = iter([0.5, 0.9, 0.6, 0.7, 0.95, 0.99])
    states = []
    real = loop.evaluate_split

    def scripted_eval(model, prefix, labels, batch_size, device):
        loss, _ = real(model, prefix, labels, batch_size, device)
        states.append({k: v.clone() for k, v in model.state_dict().items()})
        return loss, next(scripted)

    monkeypatch.setattr(loop, "evaluate_split", scripted_eval)
    model, result = fit_tiny({"train": {"epochs": 6, "early_stopping_patience": 2}})
    assert result.stopped_early and len(result.history) == 4
    assert result.best_epoch == 2
    for key, value in model.state_dict().items():
        assert torch.equal(value, states[1][key]), key
    assert not all(torch.equal(states[3][k], v) for k, v in model.state_dict().items())


def test_monitor_val_loss_picks_the_lowest_loss(monkeypatch):
    losses = iter([1.0, 0.4, 0.7])
    monkeypatch.setattr(loop, "evaluate_split", lambda *a: (next(losses), 0.5))
    _, result = fit_tiny({"train": {"epochs": 3, "monitor": "val_loss"}})
    assert result.best_epoch == 2


def test_class_balance_changes_what_is_seen():
    data = tiny_data()
    data.train_labels = torch.tensor([0] * 14 + [1] * 2 + [2] * 2)
    counts = {}
    for balance in (False, True):
        order = batches.epoch_order(data.train_labels, data.views, 0, 0, balance)
        counts[balance] = torch.bincount(data.train_labels[order // data.views], minlength=3)
    assert counts[False].tolist() == [14, 2, 2]
    assert counts[True][1:].sum() > counts[False][1:].sum()
    weights = batches.class_weights(data.train_labels, 3)
    assert weights[1] == pytest.approx(7 * weights[0])


def test_weighted_loss_and_label_smoothing_change_training():
    _, plain = fit_tiny({"train": {"epochs": 1}})
    _, smooth = fit_tiny({"train": {"epochs": 1, "label_smoothing": 0.2}})
    _, weighted = fit_tiny({"train": {"epochs": 1, "class_balance": "weighted_loss"}},
                           data=_imbalanced())
    _, unweighted = fit_tiny({"train": {"epochs": 1}}, data=_imbalanced())
    assert plain.history[0]["train_loss"] != smooth.history[0]["train_loss"]
    assert weighted.history[0]["train_loss"] != unweighted.history[0]["train_loss"]


def _imbalanced():
    data = tiny_data()
    data.train_labels = torch.tensor([0] * 12 + [1] * 3 + [2] * 3)
    return data


def test_freeze_bn_keeps_every_batchnorm_in_eval_mode_while_the_rest_trains():
    from finetuner.models import build_model
    from finetuner.training.freeze import train_mode
    model = build_model("resnet18", "none", 3)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    train_mode(model, 0, freeze_bn=True)
    assert norms and not any(m.training for m in norms)
    assert model.stages[-1].training and model.classifier.training
    train_mode(model, 0)
    assert all(m.training for m in norms)


def test_every_strategy_is_an_entry_of_the_table_and_an_outcome_is_a_value():
    """strategy.py dispatches on a table (no if-chain to forget a new strategy in), and each
    step returns a new Outcome (frozen: none is changed in place)."""
    import dataclasses

    import yaml
    from conftest import demo_params
    from finetuner.params import STRATEGIES, parse_params
    from finetuner.training.strategy import REFITTED, SELECTIONS, Outcome, selection_of
    assert set(SELECTIONS) == set(STRATEGIES) | {"probe_cv"}
    assert set(REFITTED) == set(STRATEGIES)  # the cross-validated probe alone is not refitted
    raw = yaml.safe_load(demo_params())
    for strategy in STRATEGIES:
        for folds in (0, 5):
            params = parse_params({**raw, "strategy": strategy, "probe": {"folds": folds}})
            cv = strategy == "probe" and folds
            assert selection_of(params) == ("probe_cv" if cv else strategy)
    outcome = Outcome("probe", {}, [], 1, 0.0, "fp32", 1, None, False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        outcome.refit = True
