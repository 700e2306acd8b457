import pytest

from finetuner.params import ParamsError, load_params, parse_params, to_dict


def test_project_params_are_valid():
    from conftest import ROOT
    params = load_params(ROOT / "params.yaml")
    assert params.lr > 0
    assert to_dict(params)["train"]["optimizer"] in ("sgd", "adamw")


def test_defaults():
    params = parse_params({})
    assert params.lr == 0.01 and params.freeze_depth == 0
    assert params.data.val_fraction == 0.1 and params.data.test_fraction == 0.1
    assert params.train.optimizer == "sgd" and params.train.momentum == 0.9


@pytest.mark.parametrize("raw, closest", [
    ({"learning_rate": 0.1}, None),
    ({"frezee_depth": 2}, "freeze_depth"),
    ({"train": {"epoch": 3}}, "train.epochs"),
])
def test_unknown_keys_name_the_closest(raw, closest):
    with pytest.raises(ParamsError) as error:
        parse_params(raw)
    assert "unknown key" in str(error.value)
    if closest:
        assert f"did you mean '{closest}'" in str(error.value)
    assert "Valid keys" in str(error.value)


@pytest.mark.parametrize("raw, words", [
    ({"lr": 0}, ["'lr'", "> 0"]),
    ({"lr": -1e-3}, ["'lr'", "> 0"]),
    ({"lr": "fast"}, ["'lr'", "expected a number"]),
    ({"train": {"epochs": 2.5}}, ["train.epochs", "integer"]),
    ({"train": {"optimizer": "adam"}}, ["train.optimizer", "sgd, adamw"]),
    ({"data": {"val_fraction": 0.5, "test_fraction": 0.5}}, ["train fraction"]),
    ({"freeze_depth": 10}, ["freeze_depth", "9 freezable stages", "'all'"]),
    ({"freeze_depth": "most"}, ["freeze_depth", "all"]),
    ({"preprocess": {"image_size": 8}}, ["preprocess.image_size"]),
    ({"model": {"arch": "resnet19"}}, ["resnet18"]),
    ({"device": "gpu"}, ["device", "cuda:N"]),
])
def test_bad_values_say_what_is_allowed(raw, words):
    with pytest.raises(ValueError) as error:
        parse_params(raw)
    for word in words:
        assert word in str(error.value)


def test_freeze_depth_all_is_every_stage():
    params = parse_params({"freeze_depth": "all", "model": {"arch": "resnet18"}})
    assert params.resolved_freeze_depth == 5


def test_image_size_follows_the_architecture():
    assert parse_params({"model": {"arch": "tf_efficientnet_lite2"}}).image_size == 260
    assert parse_params({"preprocess": {"image_size": 96}}).image_size == 96


def test_yaml_is_read_safely(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("lr: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(path)
