import pytest

from finetuner.arch_params import check_arch_params, freeze_depth, image_size
from finetuner.params import Params, ParamsError, load_params, parse_params, to_dict
from conftest import flat


def checked(raw: dict) -> Params:
    """What a model stage loads: the params checks, then those against the registry."""
    return check_arch_params(parse_params(raw))


def test_project_params_are_valid(tmp_path):
    from conftest import demo_params
    (tmp_path / "params.yaml").write_text(demo_params())
    params = load_params(tmp_path / "params.yaml")
    assert params.lr > 0
    assert to_dict(params)["train"]["optimizer"] in ("sgd", "adamw")


def test_the_defaults_are_what_the_project_params_yaml_runs_with():
    """One rule: a key params.yaml leaves out takes the value the committed params.yaml (conf/'s
    demo, tests/test_presets.py) gives it, and params.yaml lists every key."""
    import yaml
    from conftest import demo_params
    raw = yaml.safe_load(demo_params())
    assert sorted(flat(raw)) == sorted(flat(to_dict(Params())))
    project = flat(to_dict(parse_params(raw)))
    disagree = {key: {"default": value, "params.yaml": project[key]}
                for key, value in flat(to_dict(Params())).items() if value != project[key]}
    assert not disagree, f"dataclass defaults that params.yaml overrides: {disagree}"
    assert parse_params({}) == Params()  # the defaults are valid, also for the registry


@pytest.mark.parametrize("raw, closest", [
    ({"learning_rate": 0.1}, "lr"),
    ({"frezee_depth": 2}, "freeze_depth"),
    ({"train": {"epoch": 3}}, "train.epochs"),
    ({"epochs": 3}, "train.epochs"),  # right name, wrong level
    ({"train": {"lr": 0.1}}, "lr"),
    ({"batch_size": 8}, "train.batch_size"),
    ({"train": {"optimiser": "sgd"}}, "train.optimizer"),
    ({"arch": "resnet18"}, "model.arch"),
    ({"modle": {}}, "model"),
    ({"xyzzy": 1}, None),
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
    ({"lr": "fast"}, ["'lr'", "expected a number", "docs/params.md"]),
    ({"train": {"epochs": 2.5}}, ["train.epochs", "integer"]),
    ({"train": {"optimizer": "adam"}}, ["train.optimizer", "sgd, adamw"]),
    ({"data": {"val_fraction": 0.5, "test_fraction": 0.5}}, ["train fraction"]),
    ({"freeze_depth": 10}, ["freeze_depth", "5 freezable stages", "'all'"]),
    ({"freeze_depth": "most"}, ["freeze_depth", "all"]),
    ({"preprocess": {"image_size": 8}}, ["preprocess.image_size"]),
    ({"model": {"arch": "resnet19"}}, ["resnet18"]),
    ({"device": "gpu"}, ["device", "cuda:N"]),
    # wrong types
    ({"train": {"epochs": True}}, ["train.epochs", "integer"]),
    ({"lr": [0.1]}, ["'lr'", "expected a number"]),
    ({"lr": ".nan"}, ["'lr'", "expected a number"]),
    ({"preprocess": {"hflip": "yes"}}, ["preprocess.hflip", "true or false"]),
    ({"preprocess": {"crop_scale": [0.5]}}, ["preprocess.crop_scale", "list of 2"]),
    ({"model": "resnet18"}, ["'model'", "mapping"]),
    ({"model": {"weights": None}}, ["model.weights", "expected a string"]),
    # out of range
    ({"lr": 11}, ["'lr'", "<= 10"]),
    ({"data": {"val_fraction": 0}}, ["data.val_fraction", "> 0"]),
    ({"data": {"test_fraction": -0.1}}, ["data.test_fraction", ">= 0"]),
    ({"data": {"val_fraction": 0.7, "test_fraction": 0.4}}, ["train fraction", "1.1"]),
    ({"data": {"dir": " "}}, ["data.dir", "empty"]),
    ({"data": {"dir": "photos of $HOME"}}, ["data.dir", "double quotes", "ln -s"]),
    ({"data": {"dir": 'my "best" photos'}}, ["data.dir", "double quotes", "rename the folder"]),
    ({"freeze_depth": 6, "model": {"arch": "resnet18"}}, ["resnet18 has 5 freezable", "0..5"]),
    ({"freeze_depth": -1}, ["freeze_depth", ">= 0"]),
    ({"preprocess": {"image_size": 20}}, ["tf_efficientnet_lite0 needs at least 32 px"]),
    ({"preprocess": {"image_size": 4096}}, ["preprocess.image_size", "<= 1024"]),
    ({"preprocess": {"image_size": "big"}}, ["preprocess.image_size", "auto"]),
    # the words that describe a number are not themselves a value
    ({"preprocess": {"image_size": "an integer from 16 to 1024"}},
     ["preprocess.image_size", "allowed: auto, or an integer"]),
    ({"train": {"loader_workers": "an integer from 0 to 64"}},
     ["train.loader_workers", "auto, or"]),
    ({"freeze_depth": "an integer >= 0"}, ["freeze_depth", "allowed: all, or an integer >= 0"]),
    ({"probe": {"folds": 1}}, ["probe.folds", "must be 0 (C chosen on val) or from 2 to 20"]),
    ({"train": {"epochs": 0}}, ["train.epochs", ">= 1"]),
    ({"train": {"warmup_epochs": 20}}, ["train.warmup_epochs", "<= 10"]),
    ({"train": {"unfreeze_floor": 2}}, ["train.unfreeze_floor", "freeze_depth (0)"]),
    ({"seed": -1}, ["seed", ">= 0"]),
    # names: close matches listed
    ({"model": {"arch": "tf_efficientnet_lite9"}}, ["Did you mean: tf_efficientnet_lite"]),
    ({"model": {"arch": "ResNet18"}}, ["Did you mean: resnet18"]),
    ({"model": {"arch": "transformer"}}, ["not a known architecture", "finetuner models"]),
])
def test_bad_values_say_what_is_allowed(raw, words):
    with pytest.raises(ValueError) as error:
        checked(raw)
    for word in words:
        assert word in str(error.value)


def test_freeze_depth_all_is_every_stage():
    assert freeze_depth("all", 5) == 5 and freeze_depth(3, 5) == 3
    assert checked({"freeze_depth": "all", "model": {"arch": "resnet18"}}).freeze_depth == "all"


def test_image_size_follows_the_architecture():
    assert image_size(parse_params({"model": {"arch": "tf_efficientnet_lite2"},
                                    "preprocess": {"image_size": "auto"}})) == 260
    assert image_size(parse_params({"preprocess": {"image_size": 96}})) == 96


def test_yaml_is_read_safely(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("lr: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(path)


@pytest.mark.parametrize("arch, weights, words", [
    ("resnet18", "IMAGENET_V9", ["'model.weights'", "Did you mean: IMAGENET1K_V1"]),
    ("resnet18", "imagenet1k_v1", ["Did you mean: IMAGENET1K_V1"]),
    ("resnet50", "IMAGENET1K_V3", ["IMAGENET1K_V1, IMAGENET1K_V2", "Did you mean:"]),
    ("tf_efficientnet_lite0", "default", ["Did you mean: DEFAULT"]),
    ("tf_efficientnet_lite0", "pretrained", ["DEFAULT, in1k, or none", "nor an existing file"]),
    ("tf_efficientnet_lite0", "weights/r18.pt", ["no file at", "r18.pt"]),
])
def test_weights_are_checked_at_params_time_with_close_matches(arch, weights, words):
    with pytest.raises(ParamsError) as error:
        checked({"model": {"arch": arch, "weights": weights}})
    for word in words:
        assert word in str(error.value)


def test_valid_weights_values_pass(tmp_path):
    state = tmp_path / "r18.pt"
    state.write_bytes(b"checked when loaded, not here")
    for weights in ("DEFAULT", "IMAGENET1K_V1", "none", "None", str(state)):
        assert parse_params({"model": {"arch": "resnet18", "weights": weights}})


def test_floats_written_like_1e_3_are_numbers():
    # YAML 1.1 (PyYAML) reads `lr: 1e-3` as the string '1e-3'
    assert parse_params({"lr": "1e-3"}).lr == 0.001
    assert parse_params({"train": {"weight_decay": "5E-4"}}).train.weight_decay == 0.0005


def test_a_key_given_twice_is_an_error_with_both_lines(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("lr: 0.1\nseed: 1\nlr: 0.001\n")
    with pytest.raises(ParamsError, match=r"'lr' appears twice \(first on line 1\)") as error:
        load_params(path)
    assert "line 3" in str(error.value)


@pytest.mark.parametrize("text, words", [
    ("- lr\n- seed\n", ["top level must be a mapping"]),
    ("lr: [0.1\n", ["not valid YAML"]),
    (b"lr: 0.1 # caf\xe9\n", ["not UTF-8"]),
])
def test_unreadable_params_files(tmp_path, text, words):
    path = tmp_path / "params.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ParamsError) as error:
        load_params(path)
    for word in words:
        assert word in str(error.value)
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "missing.yaml")
    with pytest.raises(ParamsError, match="cannot be read: Is a directory"):
        load_params(tmp_path)


def test_yaml_merge_keys_are_read_and_keys_below_them_win(tmp_path):
    """`<<: *anchor` is valid YAML (safe_load reads it); the duplicate-key check once refused it
    as "not valid YAML"."""
    path = tmp_path / "params.yaml"
    path.write_text("lr: 0.05\ntrain:\n  <<: {epochs: 2, batch_size: 16}\n  epochs: 3\n")
    params = load_params(path)
    assert (params.lr, params.train.epochs, params.train.batch_size) == (0.05, 3, 16)


def test_every_stage_checks_params_before_any_work(tmp_path, monkeypatch):
    """Each params-reading stage of dvc.yaml, run with a typo in params.yaml and none of its
    inputs, fails on the params (a stage that started work first would fail on its inputs).
    The scripts run as ``__main__`` in this process (conftest.stage_exit)."""
    import shlex

    import yaml

    from conftest import ROOT, stage_exit
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    commands = {name: stage["cmd"].replace("${data.dir}", "data/images")
                for name, stage in stages.items() if stage.get("params")}
    assert {"split", "preprocess", "finetune", "evaluate"} <= set(commands)
    (tmp_path / "params.yaml").write_text("learning_rate: 0.1\n")
    for name, command in commands.items():
        argv = shlex.split(command)  # as a shell reads it: "${data.dir}" is quoted
        assert argv[0] == "python" and argv[1].startswith("stages/"), command
        code = stage_exit(tmp_path, ROOT / argv[1], argv[2:], monkeypatch)
        assert isinstance(code, str), (name, code)  # a message: exit status 1
        assert "unknown key 'learning_rate'; did you mean 'lr'?" in code, (name, code)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"], name


def test_auto_keeps_its_own_meaning():
    params = parse_params({"strategy": "auto", "preprocess": {"image_size": "auto"}})
    assert params.strategy == "auto" and image_size(params) == 224  # demo's Lite0, native


@pytest.mark.parametrize("raw, key", [
    ({"preset": "demo", "lr": "preset"}, "'lr'"),
    ({"preset": "photos", "train": {"epochs": "preset"}}, "'train.epochs'"),
    ({"freeze_depth": "preset"}, "'freeze_depth'"),  # int | str: not taken for a name
])
def test_a_params_yaml_of_before_conf_says_how_to_write_it_again(raw, key):
    with pytest.raises(ParamsError) as error:
        parse_params(raw)
    assert key in str(error.value) and "python -m finetuner.presets" in str(error.value)


def test_a_key_no_preset_set_names_conf():
    with pytest.raises(ParamsError, match=r"'lr' is \?\?\? \(missing\).*conf/preset/"):
        parse_params({"lr": "???"})
    with pytest.raises(ParamsError, match="'preset' is empty"):
        parse_params({"preset": " "})
    # a record of where the values came from: it changes no other value
    assert parse_params({"preset": "photos"}) == Params(preset="photos")


def test_test_fraction_zero_is_allowed_and_strategy_is_checked():
    assert parse_params({"data": {"test_fraction": 0}}).data.test_fraction == 0
    with pytest.raises(ParamsError, match="'strategy' is 'lp'; allowed: finetune, probe, auto"):
        parse_params({"strategy": "lp"})
    with pytest.raises(ParamsError, match="'train.head_init'"):
        parse_params({"train": {"head_init": "zeros"}})


def test_split_and_preprocess_params_import_no_model_code(tmp_path):
    """load_params(), as the split and preprocess stages call it, with those stages' imports:
    neither the registry nor torch is loaded (they peaked at ~835 MB when it was)."""
    import subprocess
    import sys

    from conftest import demo_params
    (tmp_path / "params.yaml").write_text(demo_params())
    code = ("import sys\n"
            "import finetuner.data.split, finetuner.data.scan, finetuner.data.manifest\n"
            "import finetuner.data.images, finetuner.io, finetuner.stage\n"
            "from finetuner.params import load_params\n"
            "load_params()\n"
            "bad = [m for m in sys.modules if m.startswith('finetuner.models') or m in "
            "('torch', 'timm', 'torchvision')]\n"
            "assert not bad, bad\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("module", ["params.py", "typed_config.py"])
def test_params_py_imports_no_model_code_not_even_inside_a_function(module):
    """The checks against the model registry live in finetuner/arch_params.py; typed_config.py
    (YAML into the dataclasses) imports nothing of the project at all."""
    import ast

    from conftest import ROOT
    tree = ast.parse((ROOT / "src" / "finetuner" / module).read_text())
    names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
             for alias in node.names}
    names |= {("." * node.level) + (node.module or "") for node in ast.walk(tree)
              if isinstance(node, ast.ImportFrom)}
    assert not [n for n in names if "models" in n or n.split(".")[0] in ("torch", "timm",
                                                                          "torchvision")], names
    if module == "typed_config.py":
        assert not [n for n in names if n.startswith(".") or "finetuner" in n], names


def test_the_registry_error_becomes_a_params_error_naming_the_key():
    from finetuner.models import ArchError, check_arch
    with pytest.raises(ArchError) as raised:
        check_arch("resnet19")
    assert "params.yaml" not in str(raised.value) and "resnet18" in raised.value.close
    with pytest.raises(ParamsError, match=r"params.yaml: 'model.arch': 'resnet19' is not a known"):
        checked({"model": {"arch": "resnet19"}})
    assert parse_params({"model": {"arch": "resnet19"}}).model.arch == "resnet19"  # no registry


def test_an_ensemble_or_every_layer_needs_the_probe_and_cross_validation():
    base = {"model": {"arch": "resnet18+mobilenet_v3_small", "weights": "none"},
            "preprocess": {"image_size": 64}}
    assert parse_params({**base, "strategy": "probe"}).model.arch == "resnet18+mobilenet_v3_small"
    with pytest.raises(ParamsError, match="'model.arch' is 'resnet18\\+mobilenet_v3_small', an "
                                          "ensemble.*only strategy: probe"):
        parse_params({**base, "strategy": "finetune"})
    with pytest.raises(ParamsError, match="'probe.folds' is 0"):
        parse_params({**base, "strategy": "probe", "probe": {"folds": 0}})
    with pytest.raises(ParamsError, match="'probe.layers' is 'all', which only strategy: probe"):
        parse_params({"strategy": "auto", "probe": {"layers": "all"}})
    with pytest.raises(ParamsError, match="'probe.layers' is 'auto', which only strategy: probe"):
        parse_params({"strategy": "finetune", "probe": {"layers": "auto"}})
    with pytest.raises(ParamsError, match="'probe.layers' is 'auto'.*probe.folds is 0"):
        parse_params({"strategy": "probe", "probe": {"layers": "auto", "folds": 0}})
    assert [parse_params({"strategy": "probe", "probe": {"layers": layers}}).probe.model_layers
            for layers in ("last", "all", "auto")] == ["last", "all", "all"]
    with pytest.raises(ParamsError, match="'model.arch'.*'resnet19' is not a known architecture"):
        checked({**base, "model": {"arch": "resnet18+resnet19"}, "strategy": "probe"})
    with pytest.raises(ParamsError, match="'model.weights'.*ensemble"):
        checked({**base, "model": {"arch": "resnet18+mobilenet_v3_small",
                                   "weights": "my.pt"}, "strategy": "probe"})


def test_data_ignore_takes_relative_paths_each_with_a_reason():
    ignore = {"ants/1.jpg": "a bee (audit)"}
    assert parse_params({"data": {"ignore": ignore}}).data.ignore == ignore
    for value, words in [({"ants/1.jpg": " "}, "gives 'ants/1.jpg' no reason"),
                         ({"/data/ants/1.jpg": "x"}, "relative to data.dir"),
                         (["ants/1.jpg"], "expected a mapping"),
                         ({"ants/1.jpg": 3}, "expected a string")]:
        with pytest.raises(ParamsError, match=words):
            parse_params({"data": {"ignore": value}})


def test_the_photos_preset_keeps_near_duplicates_in_one_split_and_demo_does_not():
    from conftest import ROOT
    from finetuner.presets import preset_params
    conf = ROOT / "conf"
    assert preset_params("photos", conf=conf).data.group_near_duplicates is True
    assert preset_params("demo", conf=conf).data.group_near_duplicates is False
