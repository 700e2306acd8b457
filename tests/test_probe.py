"""The linear probe, LP-FT, the choice on val and the refit on train + val."""
import math

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from conftest import make_image_folder, tiny_data
from finetuner.evaluation.metrics import predict_arrays
from finetuner.models import build_model
from finetuner.params import parse_params
from finetuner.training import loop
from finetuner.training.distributed import Dist
from finetuner.training.probe_fit import fit_probe
from finetuner.training import strategy as strategy_module
from finetuner.training.strategy import train_model


def blobs(n=60, classes=3, dim=8, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 2, (classes, dim))
    labels = np.arange(n) % classes
    return centres[labels] + rng.normal(0, 1.5, (n, dim)) * rng.uniform(0.5, 3, dim), labels


@pytest.mark.parametrize("classes", [2, 3])
def test_probe_predicts_as_scikit_learns_logistic_regression(classes):
    x, y = blobs(classes=classes)
    probe = fit_probe(x, y, classes, grid=(0.3,))
    scaled = (x - x.mean(0)) / x.std(0)
    reference = LogisticRegression(C=0.3, max_iter=2000, tol=1e-5).fit(scaled, y)
    np.testing.assert_array_equal(probe.logits(x).argmax(1), reference.predict(scaled))
    ours = torch.from_numpy(probe.logits(x)).softmax(1).numpy()
    np.testing.assert_allclose(ours, reference.predict_proba(scaled), atol=1e-4)


def test_probe_chooses_its_l2_strength_on_val():
    x, y = blobs(n=150, seed=1)
    grid = (1e-4, 0.01, 1.0, 100.0)
    alone = [fit_probe(x[:90], y[:90], 3, x[90:], y[90:], grid=(c,)) for c in grid]
    chosen = fit_probe(x[:90], y[:90], 3, x[90:], y[90:], grid=grid)
    best = max(alone, key=lambda p: (p.val_acc, -p.val_loss))
    assert chosen.C == best.C and len({(p.val_acc, p.val_loss) for p in alone}) == len(grid)
    assert chosen.val_acc == pytest.approx((chosen.logits(x[90:]).argmax(1) == y[90:]).mean())


def test_a_class_missing_from_the_training_features_is_never_predicted():
    x, y = blobs(classes=2)
    probe = fit_probe(x, y, 3, grid=(1.0,))
    assert probe.weight.shape == (3, x.shape[1])
    assert (probe.logits(x).argmax(1) != 2).all()


def params_for(strategy="finetune", probe=None, model=None, **train):
    return parse_params({"model": model or {"arch": "resnet18", "weights": "none"},
                         "preprocess": {"image_size": 32}, "strategy": strategy, "lr": 0.001,
                         "train": {"epochs": 2, "batch_size": 8, **train}, "probe": probe or {}})


def test_lp_ft_first_step_starts_from_the_probe_head(monkeypatch):
    seen = {}
    real_step = torch.optim.SGD.step

    def spy(self, *args, **kwargs):
        if "head" not in seen:  # the classifier as the first optimizer step finds it
            seen["head"] = model.classifier.weight.detach().clone()
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", spy)
    torch.manual_seed(0)
    model = build_model("resnet18", "none", 3)
    data = tiny_data()
    result = loop.fit(model, data, params_for(head_init="probe"), torch.device("cpu"),
                      progress=False)
    assert result.probe is not None
    np.testing.assert_allclose(seen["head"].numpy(), result.probe.weight, rtol=1e-5, atol=1e-6)


def test_refit_learns_from_train_and_val_and_keeps_the_last_epoch():
    data = tiny_data()
    params = params_for(refit=True, head_init="probe")
    model, outcome = train_model(lambda: build_model("resnet18", "none", 3), data, params,
                                 Dist(torch.device("cpu")), progress=False)
    assert outcome.trained_on == {"train": len(data.train_labels), "val": len(data.val_labels)}
    assert outcome.refit and outcome.info()["trained_on"]["val"] == 18


def test_without_val_fit_keeps_the_last_epoch():
    data = tiny_data().with_val_in_train()
    assert len(data.val_labels) == 0 and len(data.train_labels) == 36
    assert len(data.train_images) == 36 * data.views
    torch.manual_seed(0)
    model = build_model("resnet18", "none", 3)
    result = loop.fit(model, data, params_for(), torch.device("cpu"), progress=False)
    assert result.best_epoch == 2 and math.isnan(result.history[-1]["val_acc"])
    for name, value in model.state_dict().items():
        assert torch.equal(value, result.best_state[name])


def test_auto_refits_an_lp_ft_whatever_head_init_says(monkeypatch):
    """strategy: auto's fine-tune starts from the probe (LP-FT), and so does its refit."""
    seen = []
    real_refit = strategy_module._refit

    def spy(build, data, params, *args, **kwargs):
        seen.append(params.train.head_init)
        return real_refit(build, data, params, *args, **kwargs)
    monkeypatch.setattr(strategy_module, "_refit", spy)
    params = params_for("auto", probe={"folds": 0}, head_init="random", refit=True)
    train_model(lambda: build_model("resnet18", "none", 3), tiny_data(), params,
                Dist(torch.device("cpu")), progress=False)
    assert seen == ["probe"]


@pytest.mark.parametrize("strategy", ["probe", "auto"])
def test_probe_and_auto_record_what_was_chosen_on_val(strategy):
    data = tiny_data()
    params = params_for(strategy, probe={"folds": 0})  # probe.folds 0: C chosen on val
    logged = []  # the live log's steps (the finetune stage's DVCLive, a DVC output)
    model, outcome = train_model(lambda: build_model("resnet18", "none", 3), data,
                                 params, Dist(torch.device("cpu")), progress=False,
                                 on_epoch=lambda phase, record: logged.append((phase, record)))
    assert logged and {phase for phase, _ in logged} == {"finetune"}
    assert len(logged) == (1 if strategy == "probe" else params.train.epochs)
    assert set(outcome.candidates) == ({"probe"} if strategy == "probe"
                                       else {"probe", "finetune"})
    assert outcome.probe_C is not None
    if strategy == "auto":
        expected = ("probe" if strategy_module._prefer_probe(outcome.candidates["probe"],
                                                            outcome.candidates["finetune"],
                                                            len(data.val_labels))
                    else "finetune")
        assert outcome.chosen == expected
    else:
        assert outcome.chosen == "probe"
    if outcome.chosen == "probe":  # the model is the probe: its val accuracy is reproduced
        predicted = predict_arrays(model, data.val_images.take(slice(None)).numpy(),
                                   torch.device("cpu")).argmax(1)
        acc = (predicted == data.val_labels.numpy()).mean()
        assert acc == pytest.approx(outcome.best_val_acc)


@pytest.mark.parametrize("keep_probe", [True, False])
def test_auto_records_early_stopping_of_the_model_it_kept(monkeypatch, keep_probe):
    """A kept probe ran one "epoch" and stopped nothing early, whatever the dropped fine-tune
    did (the finetune stage's `stopped_early` beside `epochs_run`)."""
    real_fit = strategy_module.fit

    def stopping(*args, **kwargs):
        result = real_fit(*args, **kwargs)
        result.stopped_early = True
        return result
    monkeypatch.setattr(strategy_module, "fit", stopping)
    monkeypatch.setattr(strategy_module, "_prefer_probe", lambda *args: keep_probe)
    params = params_for("auto", probe={"folds": 0})
    _, outcome = train_model(lambda: build_model("resnet18", "none", 3), tiny_data(), params,
                             Dist(torch.device("cpu")), progress=False)
    assert outcome.chosen == ("probe" if keep_probe else "finetune")
    assert outcome.stopped_early is not keep_probe
    assert len(outcome.history) == (1 if keep_probe else params.train.epochs)


def test_auto_keeps_the_probe_unless_the_finetune_is_better_by_one_standard_error():
    from finetuner.training.strategy import _prefer_probe
    probe = {"val_acc": 0.80, "val_loss": 0.5}
    # 100 val photos at 0.85: standard error 0.036, so 0.80 is more than one error behind
    assert not _prefer_probe(probe, {"val_acc": 0.85, "val_loss": 0.4}, 100)
    assert _prefer_probe(probe, {"val_acc": 0.83, "val_loss": 0.4}, 100)  # within one error
    assert _prefer_probe(probe, {"val_acc": 0.80, "val_loss": 0.1}, 100)  # a tie: the probe
    # a perfect fine-tune still has to win by one photo's worth
    assert _prefer_probe({"val_acc": 0.99, "val_loss": 0.1}, {"val_acc": 1.0, "val_loss": 0}, 100)
    assert not _prefer_probe({"val_acc": 0.98, "val_loss": 0.1}, {"val_acc": 1.0, "val_loss": 0},
                             100)


def test_reused_prefix_outputs_change_nothing_in_the_refit(monkeypatch):
    """The refit reuses the selection run's frozen-prefix cache: same result as computing it
    again (random weights: every build starts from the first model's initial weights)."""
    from finetuner.training import strategy
    data = tiny_data()
    params = parse_params({"model": {"arch": "resnet18", "weights": "none"},
                           "preprocess": {"image_size": 32}, "lr": 0.001, "freeze_depth": 3,
                           "train": {"epochs": 2, "batch_size": 8, "refit": True,
                                     "head_init": "probe"}})

    def trained():
        torch.manual_seed(0)
        model, outcome = train_model(lambda: build_model("resnet18", "none", 3), data, params,
                                     Dist(torch.device("cpu")), progress=False)
        assert outcome.refit and "val" in outcome.trained_on  # the refit's model was kept
        return model.state_dict()

    shared = trained()
    monkeypatch.setattr(strategy, "merged_store", lambda store, views: {})  # recompute all
    fresh = trained()
    for name, value in shared.items():
        torch.testing.assert_close(value, fresh[name], rtol=1e-4, atol=1e-5)


def test_a_diverged_refit_is_dropped_and_the_model_chosen_on_val_kept(monkeypatch):
    from finetuner.training import strategy
    data = tiny_data()
    params = params_for(refit=True, head_init="probe")
    real_fit = strategy.fit
    calls = []

    def fit(model, data, *args, **kwargs):
        result = real_fit(model, data, *args, **kwargs)
        calls.append(model)
        if len(data.val_labels) == 0:  # the refit: pretend it collapsed
            for row in result.history:
                row["train_acc"] = 0.0
        return result

    monkeypatch.setattr(strategy, "fit", fit)
    model, outcome = train_model(lambda: build_model("resnet18", "none", 3), data, params,
                                 Dist(torch.device("cpu")), progress=False)
    assert len(calls) == 2 and model is calls[0]  # the selection run's model
    assert not outcome.refit and "train accuracy 0.000" in outcome.refit_problem
    assert outcome.trained_on == {"train": len(data.train_labels)}
    assert outcome.info()["refit_problem"] == outcome.refit_problem


def test_a_refit_whose_loss_turns_nan_is_dropped_and_the_model_chosen_on_val_kept(monkeypatch):
    real = loop._train_epoch

    def diverging(run, epoch):  # the refit (no val) diverges in its second epoch
        loss, accuracy = real(run, epoch)
        return (math.nan if not run.validating and epoch == 1 else loss), accuracy

    monkeypatch.setattr(loop, "_train_epoch", diverging)
    torch.manual_seed(0)
    model, outcome = train_model(lambda: build_model("resnet18", "none", 3), tiny_data(),
                                 params_for(refit=True), Dist(torch.device("cpu")),
                                 progress=False)
    assert not outcome.refit and outcome.trained_on == {"train": len(tiny_data().train_labels)}
    assert outcome.refit_problem.startswith("the refit on train + val diverged: epoch 2 of 2: "
                                            "the training loss is nan")
    assert all(math.isfinite(v) for v in model.state_dict()["classifier.weight"].flatten())


def test_cross_validation_chooses_c_by_out_of_fold_log_likelihood():
    from finetuner.training.probe_fit import fit_probe_cv
    x, y = blobs(n=90)
    groups = np.arange(len(y))
    cv = fit_probe_cv(x, y, groups, 3, folds=5, grid=(0.001, 0.1, 10.0), seed=0)
    assert cv.folds == 5 and cv.oof.shape == (90, 3)
    assert cv.probe.val_acc == pytest.approx((cv.oof.argmax(1) == y).mean())
    assert cv.probe.val_loss == pytest.approx(-np.log(cv.oof[np.arange(90), y]).mean())
    for C in (0.001, 10.0):  # the chosen C has the best out-of-fold log-likelihood
        other = fit_probe_cv(x, y, groups, 3, folds=5, grid=(C,), seed=0)
        assert other.probe.val_loss >= cv.probe.val_loss - 1e-12
        # the path keeps every C's out-of-fold scores (curves.png draws them); warm-started
        # along the grid, not from zero: equal to the solver's tolerance
        assert dict((c, (loss, acc)) for c, loss, acc in cv.path)[C] == pytest.approx(
            (other.probe.val_loss, other.probe.val_acc), abs=1e-4)
    assert [C for C, _, _ in cv.path] == [0.001, 0.1, 10.0]
    assert min(cv.path, key=lambda p: p[1])[0] == cv.probe.C
    # fitted on every row at the chosen C: scikit-learn's own fit gives the same classes
    reference = LogisticRegression(C=cv.probe.C, max_iter=2000, tol=1e-5).fit(
        (x - x.mean(0)) / x.std(0), y)
    assert ((cv.probe.logits(x)).argmax(1) == reference.predict((x - x.mean(0)) / x.std(0))).all()


def test_cross_validation_is_deterministic_and_never_splits_an_image():
    from finetuner.training.probe_fit import fit_probe_cv
    x, y = blobs(n=60)
    # every image has 3 rows (views): nearly identical copies of one another.  Were an image's
    # rows split over folds, its held-out view would be predicted by a probe that saw its
    # twins, and the out-of-fold score of random labels would look far better than chance.
    rng = np.random.default_rng(1)
    random_labels = rng.integers(0, 3, 60)
    rows = np.repeat(x, 3, 0) + rng.normal(0, 1e-3, (180, x.shape[1]))
    groups = np.repeat(np.arange(60), 3)
    first = fit_probe_cv(rows, np.repeat(random_labels, 3), groups, 3, folds=5, seed=3)
    again = fit_probe_cv(rows, np.repeat(random_labels, 3), groups, 3, folds=5, seed=3)
    assert first.probe.C == again.probe.C and np.array_equal(first.oof, again.oof)
    assert np.array_equal(first.probe.weight, again.probe.weight)
    assert first.probe.val_acc < 0.6  # chance is 1/3; leaked twins would give ~1.0


def test_cross_validation_falls_back_when_a_class_has_one_image():
    from finetuner.training.probe_fit import CV_GRID, fit_probe_cv
    x, y = blobs(n=10)
    y[:] = 0
    y[0], y[1] = 1, 2  # classes 1 and 2 have one image each: no fold can hold them out
    cv = fit_probe_cv(x, y, np.arange(10), 3, folds=5)
    assert cv.folds == 0 and cv.probe.C == CV_GRID[len(CV_GRID) // 2]
    assert np.isnan(cv.probe.val_acc)


def test_cross_validation_reads_the_last_stage_alone_where_that_predicts_better():
    """``probe.layers: auto``: every column, or the last ones alone, by out-of-fold
    log-likelihood; a probe of the last columns weighs the others zero and predicts as a
    probe fitted on them alone."""
    from finetuner.training.probe_fit import fit_probe_cv, fit_probe_cv_columns
    x, y = blobs(n=60)
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 1, (60, 300))  # earlier stages' columns that carry nothing
    features = np.concatenate([noise, x], 1)
    cv = fit_probe_cv_columns(features, y, np.arange(60), 3, last=x.shape[1], folds=5, seed=0)
    alone = fit_probe_cv(x, y, np.arange(60), 3, folds=5, seed=0)
    every = fit_probe_cv(features, y, np.arange(60), 3, folds=5, seed=0)
    assert cv.columns == "last" and alone.probe.val_loss < every.probe.val_loss
    assert cv.probe.weight.shape == (3, 300 + x.shape[1]) and not cv.probe.weight[:, :300].any()
    assert np.allclose(cv.probe.logits(features), alone.probe.logits(x), atol=1e-4)
    assert cv.probe.C == alone.probe.C and np.array_equal(cv.oof, alone.oof)
    # the signal in the earlier columns, noise in the last: every column is kept
    swapped = np.concatenate([x, noise[:, :x.shape[1]]], 1)
    kept = fit_probe_cv_columns(swapped, y, np.arange(60), 3, last=x.shape[1], folds=5, seed=0)
    assert kept.columns == "all" and kept.probe.weight[:, :x.shape[1]].any()
    # nothing to choose between: the plain cross-validation
    assert fit_probe_cv_columns(x, y, np.arange(60), 3, last=0, seed=0).columns == "all"


def _prepared_with_test_labels(tmp_path, image_folder, test_labels=None):
    """A prepared folder of ``image_folder`` (val 0.2, test 0.3); the test labels replaced."""
    from finetuner.data.augment import Augmentation
    from finetuner.data.prepared import load_prepared
    from finetuner.data.workspace import split_and_prepare
    prepared = split_and_prepare(image_folder, tmp_path, val_fraction=0.2, test_fraction=0.3,
                                 seed=0, image_size=32, crop_pct=0.875, train_views=2,
                                 augmentation=Augmentation(), workers=0)
    if test_labels is not None:
        labels = prepared.labels["test"]
        np.save(tmp_path / "prepared" / "test_labels.npy", test_labels(labels))
    return load_prepared(tmp_path / "prepared")


@pytest.mark.parametrize("arch, layers", [("resnet18", "all"),
                                           ("resnet18+mobilenet_v3_small", "auto")])
def test_the_cross_validated_probe_never_reads_the_test_split(tmp_path, arch, layers):
    """Poisoned test labels change nothing it chooses or learns (nor which stages it reads)."""
    image_folder = make_image_folder(tmp_path / "images", {"r": 12, "g": 12, "b": 12})
    from finetuner.training.batches import TrainData

    def run(prepared):
        params = params_for("probe", model={"arch": arch, "weights": "none"},
                            probe={"layers": layers, "folds": 3})
        torch.manual_seed(0)
        logged = []  # a probe trains no epochs: one step of the live log, its CV scores
        model, outcome = train_model(lambda: build_model(arch, "none", 3, "all"),
                                     TrainData.from_prepared(prepared, 0), params,
                                     Dist(torch.device("cpu")), progress=False,
                                     on_epoch=lambda *step: logged.append(step))
        assert logged == [("finetune", outcome.history[0])]
        return model, outcome

    clean = _prepared_with_test_labels(tmp_path / "clean", image_folder)
    poisoned = _prepared_with_test_labels(tmp_path / "poisoned", image_folder,
                                          lambda labels: (labels + 1) % 3)
    assert not np.array_equal(clean.labels["test"], poisoned.labels["test"])
    model_a, outcome_a = run(clean)
    model_b, outcome_b = run(poisoned)
    assert outcome_a.cross_validation == outcome_b.cross_validation
    assert outcome_a.trained_on == {"train": len(clean.labels["train"]),
                                    "val": len(clean.labels["val"])}
    for (name, a), b in zip(model_a.state_dict().items(), model_b.state_dict().values()):
        assert torch.equal(a, b), name
    members = outcome_a.cross_validation["members"]
    assert len(members) == len(arch.split("+")) and all(m["C"] > 0 for m in members)
    for record, member in zip(members, getattr(model_a, "members", [model_a])):
        reads_last = record["layers"] == "last"  # only with auto; then the taps weigh zero
        assert record["layers"] in ({"all", "last"} if layers == "auto" else {"all"})
        head, last = member.classifier, member.pooled_width
        assert record["features"] == (last if reads_last else head.in_features)
        assert bool(head.weight[:, :head.in_features - last].any()) is not reads_last
    # the out-of-fold record covers every train and val image once
    assert len(outcome_a.out_of_fold["labels"]) == len(clean.labels["train"]) + len(
        clean.labels["val"])


def test_a_class_of_one_image_gives_no_made_up_out_of_fold_estimate(tmp_path):
    """No fold can hold out a class of one image: C is the grid's middle, and the record says
    so instead of scoring predictions that were never made (nan read as class 0 once)."""
    from finetuner.training.batches import TrainData
    image_folder = make_image_folder(tmp_path / "images", {"r": 12, "g": 12, "b": 1})
    prepared = _prepared_with_test_labels(tmp_path / "prepared", image_folder)
    params = params_for("probe", model={"arch": "resnet18", "weights": "none"},
                        probe={"folds": 3})
    torch.manual_seed(0)
    _, outcome = train_model(lambda: build_model("resnet18", "none", 3, "last"),
                             TrainData.from_prepared(prepared, 0), params,
                             Dist(torch.device("cpu")), progress=False)
    record = outcome.cross_validation
    assert record["folds"] == 0 and "fewer than 2 images" in record["selection"]
    assert record["cv_acc"] is None and record["cv_loss"] is None
    assert outcome.out_of_fold is None  # the evaluate stage fits its temperature on val
    assert math.isnan(outcome.best_val_acc)


# ---------------------------------------------------------------- an LP-FT that loses its probe

def test_a_fall_below_the_probe_is_reported_with_its_epoch_and_a_collapse_named():
    val = torch.tensor([0] * 30 + [1] * 10)  # most common class: 0.75 of val
    rows = lambda *accs: [{"epoch": i + 1, "val_acc": a} for i, a in enumerate(accs)]  # noqa
    kept = strategy_module.probe_drop(rows(0.9, 0.875, 0.95), 0.9, val)
    assert kept is None  # 0.875: one photo below, within two standard errors (0.095)
    fell = strategy_module.probe_drop(rows(0.775, 0.9), 0.9, val, freeze_bn=False)
    assert fell == {"probe_val_acc": 0.9, "epoch": 1, "val_acc": 0.775, "majority": 0.75,
                    "collapsed": True, "freeze_bn": False}
    lost = strategy_module.probe_drop(rows(0.95, 0.825, 0.9), 0.95, val)
    assert lost["epoch"] == 2 and not lost["collapsed"]
    assert ("lost what the probe knew: val acc 0.825 after epoch 2; try a lower lr or "
            "train.backbone_lr_mult") in strategy_module.drop_message(lost)
    assert ("collapsed (predicting the most common class gives 0.750): val acc 0.775 after "
            "epoch 1; try train.freeze_bn: true") in strategy_module.drop_message(fell)
    assert "the probe was kept" not in strategy_module.drop_message(fell)
    assert strategy_module.drop_message(fell, "probe").endswith(
        "; the probe was kept, so the model is not affected")
    # exactly two photos below a perfect probe is kept (floating point must not say otherwise)
    for n in range(2, 200):
        assert strategy_module.probe_drop(rows((n - 2) / n), 1.0, torch.zeros(n, dtype=int)) is None
    assert strategy_module.probe_drop(rows(0.1), math.nan, val) is None  # no probe score
    assert strategy_module.probe_drop(rows(0.1), 0.9, val[:0]) is None  # no val


@pytest.mark.parametrize("freeze_bn", [False, True])
def test_lp_ft_whose_batchnorm_statistics_drift_is_seen_to_collapse(freeze_bn):
    """At lr 1e-6 the weights do not move, but BatchNorm layers in train mode replace the
    statistics the probe's features were computed with: the fine-tune falls to chance from the
    probe's val accuracy and says so (eval.json's ``probe_drop``); with ``freeze_bn`` it keeps
    the probe's accuracy and reports nothing."""
    params = parse_params({"model": {"arch": "resnet18", "weights": "none"},
                           "preprocess": {"image_size": 32}, "strategy": "finetune",
                           "lr": 1e-6, "freeze_depth": 0,
                           "train": {"epochs": 2, "batch_size": 8, "head_init": "probe",
                                     "freeze_bn": freeze_bn}})
    torch.manual_seed(0)
    _, outcome = train_model(lambda: build_model("resnet18", "none", 3), tiny_data(), params,
                             Dist(torch.device("cpu")), progress=False)
    drop = outcome.info()["probe_drop"]
    if freeze_bn:
        assert drop is None and outcome.candidates["finetune"]["val_acc"] == 1.0
    else:
        assert drop["collapsed"] and drop["probe_val_acc"] == 1.0 and drop["epoch"] == 1
        assert "try train.freeze_bn: true" in strategy_module.drop_message(drop)


def test_the_finetune_stage_prints_a_fall_below_the_probe_and_records_it(
        tmp_path, monkeypatch, capsys):
    import runpy
    import sys
    import yaml
    from conftest import ROOT, noise_prepared
    from finetuner.models.checkpoint import load_checkpoint
    noise_prepared(tmp_path / "prepared", {"train": 12, "val": 4, "test": 3})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({
        "device": "cpu", "threads": 1, "model": {"arch": "resnet18", "weights": "none"},
        "preprocess": {"image_size": 32},
        "train": {"epochs": 1, "batch_size": 8, "head_init": "probe", "resume": False}}))
    drop = {"probe_val_acc": 1.0, "epoch": 1, "val_acc": 0.25, "majority": 0.25,
            "collapsed": True, "freeze_bn": False}
    monkeypatch.setattr(strategy_module, "probe_drop", lambda *args: drop)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["finetune.py", "prepared", "model.pt", "live"])
    runpy.run_path(str(ROOT / "stages" / "finetune.py"), run_name="__main__")
    assert ("finetune: warning: the fine-tune started from the linear probe (val acc 1.000) and "
            "collapsed (predicting the most common class gives 0.250): val acc 0.250 after "
            "epoch 1") in capsys.readouterr().out
    assert load_checkpoint(tmp_path / "model.pt", "cpu").info["strategy"]["probe_drop"] == drop


def test_the_training_code_imports_scikit_learn_only_where_a_probe_is_fitted():
    """A finetune stage that fits no probe (the demo) starts without scikit-learn's import
    (about 1.6 s of every stage start: the suite runs dozens)."""
    import subprocess
    import sys
    code = ("import sys, finetuner.training.strategy, finetuner.training.loop; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'sklearn'))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("folds", [0, 5])
def test_a_probe_logs_its_fit_on_the_training_rows_so_every_plot_has_its_files(folds):
    """dvc.yaml's loss and accuracy plots read train/*.tsv beside val/*.tsv: a probe logged no
    train values, and `dvc plots diff` against a photos-preset run said its plots failed to
    load.  Its one step now holds its fit on the rows it was fitted on."""
    import yaml
    from conftest import ROOT
    from finetuner.live import NAMES
    data = tiny_data()
    logged = []
    model, outcome = train_model(lambda: build_model("resnet18", "none", 3), data,
                                 params_for("probe", probe={"folds": folds}),
                                 Dist(torch.device("cpu")), progress=False,
                                 on_epoch=lambda phase, record: logged.append(record))
    plots = yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]
    files = {path for plot in plots if isinstance(plot, dict) for spec in plot.values()
             if isinstance(spec, dict) for path in spec.get("y", {})
             if path.startswith("dvclive/plots/metrics/")}
    assert files, plots
    written = {f"dvclive/plots/metrics/{NAMES[key]}.tsv" for key, value in logged[0].items()
               if key in NAMES and math.isfinite(value)}
    assert files <= written, files - written
    if folds:  # the model is the probe fitted on train + val (folds 0: refit after the log)
        rows = data.probe_rows.take(torch.arange(len(data.view_labels))).numpy()
        images = np.concatenate([rows, data.val_images.take(slice(None)).numpy()])
        labels = np.concatenate([data.view_labels.numpy(), data.val_labels.numpy()])
        log_p = np.log(predict_arrays(model, images, torch.device("cpu")).astype(np.float64))
        assert logged[0]["train_acc"] == pytest.approx((log_p.argmax(1) == labels).mean())
        assert logged[0]["train_loss"] == pytest.approx(
            -log_p[np.arange(len(labels)), labels].mean(), rel=1e-3, abs=1e-5)
