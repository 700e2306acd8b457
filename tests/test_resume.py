"""A killed fine-tune resumes where it stopped (src/finetuner/training/resume.py), in process:
the "kill" is an exception right after an epoch's state is saved, as SIGKILL would find it.
The SIGKILL through the stage script and `dvc repro` is in tests/test_robustness_faults.py."""
import json

import pytest
import torch

from conftest import tiny_data
from finetuner.models import build_model
from finetuner.params import parse_params
from finetuner.training import loop
from finetuner.training.loop import fit
from finetuner.training.resume import DoneState, EpochState, ResumeStore, input_key


class Killed(Exception):
    pass


def _fit(overrides: dict, slot=None, kill_after: int | None = None, arch="resnet18"):
    """fit() a fresh ``arch`` (same seed, same data) with ``slot``; returns (model, result,
    epochs this call trained)."""
    raw = {"lr": 0.01, "model": {"arch": arch, "weights": "none"},
           "preprocess": {"image_size": 32},
           "train": {"epochs": 4, "batch_size": 8, "schedule": "cosine"}}
    for key, value in overrides.items():
        raw.setdefault(key, {}).update(value) if isinstance(value, dict) else raw.update({key: value})
    params = parse_params(raw)
    torch.manual_seed(params.seed)
    model = build_model(arch, "none", 3)
    trained = []

    def on_epoch(record):
        trained.append(record["epoch"])
        if kill_after is not None and record["epoch"] == kill_after:
            raise Killed

    torch.manual_seed(1234)  # what comes before fit() differs between a first run and a rerun
    result = fit(model, tiny_data(), params, torch.device("cpu"), progress=False, resume=slot,
                 on_epoch=on_epoch)
    return model, result, trained


CONFIGS = {
    "partial freeze, cosine": {"freeze_depth": 2},
    # dropout and drop-path draw from torch's generator; LP-FT's probe is skipped on resume
    "lite0, LP-FT, dropout": ({"freeze_depth": 3, "train": {"head_init": "probe"}},
                              "tf_efficientnet_lite0"),
    # the optimizer gains groups as stages thaw: the resumed one must have the same
    "gradual unfreezing": {"freeze_depth": "all", "train": {"unfreeze_every": 1,
                                                            "backbone_lr_mult": 0.3}},
}


@pytest.mark.parametrize("name", CONFIGS)
def test_a_resumed_fit_ends_with_the_weights_of_a_run_never_stopped(name, tmp_path, capsys):
    config = CONFIGS[name]
    overrides, arch = config if isinstance(config, tuple) else (config, "resnet18")
    whole, whole_result, _ = _fit(overrides, arch=arch)

    slot = ResumeStore("key", tmp_path).slot("finetune")
    with pytest.raises(Killed):
        _fit(overrides, slot, kill_after=2, arch=arch)
    assert torch.load(slot.path, weights_only=True)["epochs_done"] == 2
    resumed, result, logged = _fit(overrides, slot, arch=arch)

    assert logged == [1, 2, 3, 4]  # the saved epochs replayed to the log, then 3 and 4 trained
    assert "resuming 'finetune' after epoch 2 of 4" in capsys.readouterr().out
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4]
    assert [h["train_loss"] for h in result.history] == [h["train_loss"] for h in whole_result.history]
    assert result.best_epoch == whole_result.best_epoch and result.lrs == whole_result.lrs
    # the seconds count the killed run's epochs too (eval.json's train_seconds)
    assert result.earlier_seconds > 0 and result.seconds > result.earlier_seconds
    for key, value in whole.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key


def test_a_finished_fit_is_not_trained_again(tmp_path, monkeypatch):
    slot = ResumeStore("key", tmp_path).slot("finetune")
    first, result, _ = _fit({"freeze_depth": 3}, slot)
    assert torch.load(slot.path, weights_only=True)["done"]

    def no_training(*args, **kwargs):
        raise AssertionError("a finished fit trained again")

    monkeypatch.setattr(loop, "_train_epoch", no_training)
    again, again_result, logged = _fit({"freeze_depth": 3}, slot)
    assert logged == [1, 2, 3, 4] and again_result.best_epoch == result.best_epoch
    assert again_result.seconds == again_result.earlier_seconds == result.seconds
    assert all(torch.equal(again.state_dict()[k], v) for k, v in first.state_dict().items())


def test_an_early_stop_that_was_saved_stays_stopped(tmp_path):
    overrides = {"lr": 1e-9, "train": {"early_stopping_patience": 1, "epochs": 6}}  # no progress
    slot = ResumeStore("key", tmp_path).slot("finetune")
    _, whole, _ = _fit(overrides)
    assert whole.stopped_early and len(whole.history) == 2
    with pytest.raises(Killed):
        _fit(overrides, slot, kill_after=2)
    _, result, logged = _fit(overrides, slot)
    assert logged == [1, 2] and result.stopped_early and len(result.history) == 2


def _prepared(folder):
    folder.mkdir()
    (folder / "meta.json").write_text(json.dumps({"classes": ["a", "b"]}))
    (folder / "train_images.npy").write_bytes(b"\0" * 100)
    return folder


def test_the_key_changes_with_params_and_prepared_data_only(tmp_path):
    prepared = _prepared(tmp_path / "prepared")
    params = {"lr": 0.01, "train": {"epochs": 4}}
    key = input_key(params, prepared)
    assert input_key(dict(params), prepared) == key
    assert input_key({"lr": 0.02, "train": {"epochs": 4}}, prepared) != key
    (prepared / "train_images.npy").write_bytes(b"\0" * 101)
    assert input_key(params, prepared) != key


def test_the_key_changes_with_the_stage_script(tmp_path):
    """The stage script builds the model and its rows: a state trained by the old script is
    not resumed after it changed."""
    prepared = _prepared(tmp_path / "prepared")
    script = tmp_path / "finetune.py"
    script.write_text("build = 1\n")
    key = input_key({"lr": 0.01}, prepared, (script,))
    assert input_key({"lr": 0.01}, prepared, (script,)) == key != input_key({"lr": 0.01}, prepared)
    script.write_text("build = 2\n")
    assert input_key({"lr": 0.01}, prepared, (script,)) != key


def test_other_keys_states_are_dropped_and_a_finished_run_clears_its_own(tmp_path):
    old = ResumeStore("old", tmp_path)
    old.slot("finetune").save({"done": False})
    new = ResumeStore("new", tmp_path)
    new.slot("finetune").save({"done": False})
    new.drop_others()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new"]
    new.clear()
    assert not tmp_path.exists()


def test_only_the_writer_writes(tmp_path):
    reader = ResumeStore("key", tmp_path, writer=False)
    reader.slot("finetune").save({"done": False})
    assert not (tmp_path / "key").exists()


def _nan_from_epoch(monkeypatch, bad: int) -> None:
    """Epoch ``bad`` (0-based) trains, and its mean loss comes back NaN (as a diverged one)."""
    real = loop._train_epoch

    def diverging(run, epoch):
        loss, accuracy = real(run, epoch)
        return (float("nan") if epoch >= bad else loss), accuracy
    monkeypatch.setattr(loop, "_train_epoch", diverging)


def test_a_nan_loss_stops_fit_naming_the_epoch_and_the_resume_state_keeps_the_one_before(
        tmp_path, monkeypatch):
    slot = ResumeStore("key", tmp_path).slot("finetune")
    saved = []
    real_save = slot.save
    monkeypatch.setattr(slot, "save", lambda state: (saved.append(state["epochs_done"]),
                                                      real_save(state)))
    _nan_from_epoch(monkeypatch, 2)
    with pytest.raises(loop.DivergedError) as error:
        _fit({}, slot)
    message = str(error.value)
    assert message.startswith("epoch 3 of 4: the training loss is nan") and "\n" not in message
    assert "the state after epoch 2 is kept" in message and "lower lr" in message
    assert "diverged at lr 0.01 (the schedule's 0.00" in message
    assert "at the epoch's start" in message
    assert saved == [1, 2]  # nothing saved for epoch 3
    assert torch.load(slot.path, weights_only=True)["epochs_done"] == 2


def test_a_nan_loss_stops_the_finetune_stage_with_one_line_and_writes_no_model(
        tmp_path, monkeypatch):
    import runpy
    import sys
    import yaml
    from conftest import ROOT, noise_prepared
    noise_prepared(tmp_path / "prepared", {"train": 12, "val": 3, "test": 3})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({
        "device": "cpu", "threads": 1, "lr": 0.02, "model": {"arch": "resnet18", "weights": "none"},
        "preprocess": {"image_size": 32}, "train": {"epochs": 3, "batch_size": 8}}))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["finetune.py", "prepared", "model.pt", "live"])
    _nan_from_epoch(monkeypatch, 1)
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(str(ROOT / "stages" / "finetune.py"), run_name="__main__")
    assert str(stop.value.code).startswith("finetune: error: epoch 2 of 3: the training loss "
                                           "is nan: training diverged at lr 0.02")
    assert not (tmp_path / "model.pt").exists()
    state, = (tmp_path / ".finetuner" / "resume").glob("*/finetune.pt")
    assert torch.load(state, weights_only=True)["epochs_done"] == 1


def test_a_rerun_that_finds_every_fit_done_reports_their_seconds_not_the_replay(tmp_path):
    """The finetune stage's train_seconds (eval.json, dvc exp show) after a resume: the fine-tune
    and the refit trained in an earlier process count, as they would in a run never stopped."""
    from finetuner.training.distributed import Dist
    from finetuner.training.strategy import train_model
    params = parse_params({"lr": 0.01, "model": {"arch": "resnet18", "weights": "none"},
                           "preprocess": {"image_size": 32},
                           "train": {"epochs": 2, "batch_size": 8, "refit": True}})
    store = ResumeStore("key", tmp_path)

    def run():
        torch.manual_seed(0)
        return train_model(lambda: build_model("resnet18", "none", 3), tiny_data(), params,
                           Dist(torch.device("cpu")), progress=False, resume=store)[1]
    first = run()
    assert first.refit and {p.stem for p in store.folder.iterdir()} == {"finetune", "refit"}
    saved = sum(torch.load(store.folder / f"{slot}.pt", weights_only=True)["seconds"]
                for slot in ("finetune", "refit"))
    again = run()
    assert again.earlier_seconds == saved and again.seconds >= saved > 0


def test_a_resumed_refit_that_diverges_still_counts_its_first_process_seconds(tmp_path,
                                                                              monkeypatch):
    """Killed in the refit's second epoch, then rerun: the refit resumes and diverges there (the
    model chosen on val is kept); train_seconds still holds what the first process trained."""
    import math

    from finetuner.training import loop
    from finetuner.training.distributed import Dist
    from finetuner.training.strategy import train_model
    params = parse_params({"lr": 0.01, "model": {"arch": "resnet18", "weights": "none"},
                           "preprocess": {"image_size": 32},
                           "train": {"epochs": 2, "batch_size": 8, "refit": True}})
    store, real = ResumeStore("key", tmp_path), loop._train_epoch

    class Killed(Exception):
        pass

    def killed(run, epoch):  # the refit trains without val
        if not run.validating and epoch == 1:
            raise Killed
        return real(run, epoch)

    def diverging(run, epoch):
        loss, accuracy = real(run, epoch)
        return (math.nan if not run.validating and epoch == 1 else loss), accuracy

    def run():
        torch.manual_seed(0)
        return train_model(lambda: build_model("resnet18", "none", 3), tiny_data(), params,
                           Dist(torch.device("cpu")), progress=False, resume=store)[1]
    monkeypatch.setattr(loop, "_train_epoch", killed)
    with pytest.raises(Killed):
        run()
    states = {slot: torch.load(store.folder / f"{slot}.pt", weights_only=True)
              for slot in ("finetune", "refit")}
    assert states["finetune"]["done"] and states["refit"]["epochs_done"] == 1
    # the slots hold the keys resume.py documents: a done fit's, then an epoch's
    assert set(states["finetune"]) == set(DoneState.__annotations__)
    assert set(states["refit"]) == set(EpochState.__annotations__)
    saved = sum(state["seconds"] for state in states.values())
    monkeypatch.setattr(loop, "_train_epoch", diverging)
    again = run()
    assert again.refit_problem.startswith("the refit on train + val diverged: epoch 2 of 2")
    assert again.earlier_seconds == pytest.approx(saved) and again.seconds >= saved > 0


@pytest.mark.parametrize("content", [b"not a torch file", b"PK\x03\x04 truncated zip"])
def test_a_state_that_cannot_be_read_is_said_removed_and_the_run_starts_fresh(tmp_path, capsys,
                                                                             content):
    """Damaged on disk, or written by another torch: the stage starts from epoch 1 (and says
    why) instead of stopping on a traceback; the run ends as a run never stopped does."""
    slot = ResumeStore("key", tmp_path).slot("finetune")
    slot.path.parent.mkdir(parents=True)
    slot.path.write_bytes(content)
    model, result, logged = _fit({"freeze_depth": 3, "train": {"epochs": 2}}, slot)
    err = capsys.readouterr().err
    assert f"the saved state {slot.path} cannot be read" in err and "starting from epoch 1" in err
    assert logged == [1, 2] and result.earlier_seconds == 0
    whole, _, _ = _fit({"freeze_depth": 3, "train": {"epochs": 2}})
    assert all(torch.equal(model.state_dict()[k], v) for k, v in whole.state_dict().items())


def test_the_finetune_stage_keys_its_state_by_its_own_script_too(tmp_path, monkeypatch):
    """The stage script builds the model and its rows: its text is part of the key."""
    from conftest import ROOT, demo_params, load_stage, noise_prepared
    noise_prepared(tmp_path / "prepared", {"train": 6, "val": 3, "test": 3})
    (tmp_path / "params.yaml").write_text(demo_params())
    monkeypatch.chdir(tmp_path)
    stage = load_stage("finetune")
    seen = []

    class Stop(Exception):
        pass

    def key(params, prepared_dir, scripts=()):
        seen.append(scripts)
        raise Stop

    monkeypatch.setattr(stage, "input_key", key)
    with pytest.raises(Stop):
        stage.main("prepared", "model.pt", "live")
    assert seen == [(ROOT / "stages" / "finetune.py",)]
