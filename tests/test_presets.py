"""The presets in conf/ (src/finetuner/presets.py): composed as DVC's Hydra composition does,
the committed params.yaml is conf/'s demo, every preset sets what conf/config.yaml leaves to it,
and Python code gets a preset's values without DVC."""
from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import yaml

from conftest import ROOT, flat
from finetuner.params import MISSING, PHOTOS_ARCH, Params, ParamsError, to_dict
from finetuner import presets

CONF = ROOT / "conf"
ENSEMBLE = "tf_efficientnet_lite0+tf_efficientnet_lite1+tf_efficientnet_lite2"


def compose(preset=None, overrides=(), conf=CONF):
    return presets.compose(preset, overrides, conf)


def preset_params(preset=None, overrides=(), conf=CONF):
    return presets.preset_params(preset, overrides, conf)


def params_yaml():
    return presets.params_yaml(conf=CONF)


def preset_file(name: str) -> dict:
    """What conf/preset/<name>.yaml itself sets, flat (``train.epochs``)."""
    return flat(yaml.safe_load((CONF / "preset" / f"{name}.yaml").read_text()))


def committed_params_yaml() -> str | None:
    """params.yaml as git's HEAD holds it (None outside a git checkout)."""
    done = subprocess.run(["git", "show", "HEAD:params.yaml"], cwd=ROOT, capture_output=True,
                          text=True)
    return done.stdout if done.returncode == 0 else None


def test_the_committed_params_yaml_is_conf_composed_for_the_demo():
    """So `dvc repro` runs what `dvc exp run -S preset=demo` would write: edit conf/, then
    `python -m finetuner.presets` (this test fails until then).  The workspace's params.yaml,
    or HEAD's: every `dvc exp run -S ...` leaves its experiment's values in the workspace."""
    texts = {(ROOT / "params.yaml").read_text(), committed_params_yaml()}
    assert params_yaml() in texts, (
        "params.yaml differs from conf/: run `python -m finetuner.presets`")
    raw = yaml.safe_load(params_yaml())
    assert raw == compose() == compose("demo") and raw["preset"] == "demo"


def test_conf_lists_every_key_and_each_preset_sets_every_key_left_to_it():
    base = yaml.safe_load((CONF / "config.yaml").read_text())
    assert base["defaults"] == ["_self_", {"preset": "demo"}]  # a preset beats the base
    keys = flat({k: v for k, v in base.items() if k != "defaults"})
    assert sorted(keys) == sorted(flat(to_dict(Params())))
    left = {key for key, value in keys.items() if value == MISSING}
    assert {"preset", "lr", "model.arch", "freeze_depth"} <= left
    assert presets.preset_names(CONF) == ["demo", "photos"]
    for name in presets.preset_names(CONF):
        text = (CONF / "preset" / f"{name}.yaml").read_text()
        assert text.startswith("# @package _global_"), name  # its keys sit at the top
        assert left <= set(preset_file(name)), (name, left - set(preset_file(name)))
        assert preset_file(name)["preset"] == name
        assert MISSING not in flat(compose(name)).values()


def test_the_photos_preset_has_its_file_values_and_an_override_wins():
    """Python code (benchmarks) gets a preset without DVC: the values are conf/preset/photos.yaml's,
    every other key conf/config.yaml's (not the demo's), an override beats both."""
    from finetuner.arch_params import image_size
    from finetuner.models import input_spec
    params = preset_params("photos", ["lr=0.001", "train.epochs=3"])
    values = flat(to_dict(params))
    recipe = preset_file("photos")
    for key, value in recipe.items():
        if key not in ("lr", "train.epochs"):
            assert values[key] == value, key
    assert params.lr == 0.001 and params.train.epochs == 3 and params.preset == "photos"
    # the recipe (docs/recipe.md): an ensemble of multi-layer linear probes, C by 5-fold CV
    assert params.model.arch == ENSEMBLE == PHOTOS_ARCH and params.strategy == "probe"
    assert params.data.group_near_duplicates is True  # near-copies never straddle splits
    assert params.probe.layers == "all" and params.probe.folds == 5
    assert params.train.refit is True and params.preprocess.hflip is True
    assert params.preprocess.train_views == 1
    # 300 px, above the largest native size of the ensemble's backbones (Lite2's 260)
    assert image_size(params) == 300 and input_spec(params.model.arch).size == 260
    base = flat(yaml.safe_load((CONF / "config.yaml").read_text()))
    untouched = [key for key in values if key not in recipe]  # conf/config.yaml's, as written
    assert "train.warmup_epochs" in untouched and all(values[key] == base[key] for key in untouched)


@pytest.mark.parametrize("preset, overrides, words", [
    ("fotos", [], ["preset 'fotos' is unknown", "demo, photos"]),
    ("photos", ["learning_rate=0.1"], ["unknown key 'learning_rate'", "did you mean 'lr'"]),
    ("photos", ["train.epoch=3"], ["unknown key 'train.epoch'", "'train.epochs'"]),
])
def test_bad_presets_and_overrides_name_what_is_allowed(preset, overrides, words):
    with pytest.raises(ParamsError) as error:
        compose(preset, overrides)
    for word in words:
        assert word in str(error.value)


def test_a_preset_that_forgets_a_key_fails_naming_it(tmp_path):
    conf = shutil.copytree(CONF, tmp_path / "conf")
    recipe = yaml.safe_load((conf / "preset" / "photos.yaml").read_text())
    del recipe["train"]["epochs"]
    (conf / "preset" / "photos.yaml").write_text("# @package _global_\n" + yaml.safe_dump(recipe))
    assert compose("photos", conf=conf)["train"]["epochs"] == MISSING
    with pytest.raises(ParamsError, match=r"'train.epochs' is \?\?\? \(missing\)"):
        preset_params("photos", conf=conf)


def test_the_command_writes_checks_and_refuses(tmp_path):
    out = tmp_path / "params.yaml"

    def run(*args):
        return subprocess.run([sys.executable, "-m", "finetuner.presets", *args, "-o", str(out)],
                              capture_output=True, text=True, cwd=ROOT)  # conf/ of the project

    done = run("photos", "lr=0.001")
    assert done.returncode == 0, done.stderr
    text = out.read_text()
    assert text.startswith("# GENERATED from conf/, do not edit: "
                           "python -m finetuner.presets photos lr=0.001\n")
    assert yaml.safe_load(text) == compose("photos", ["lr=0.001"])
    assert run("photos", "lr=0.001", "--check").returncode == 0
    assert run("--check").returncode == 1  # the demo differs from what is there
    done = run("photos", "lr=fast")
    assert done.returncode == 2 and "'lr' is 'fast'" in done.stderr
    assert yaml.safe_load(out.read_text()) == compose("photos", ["lr=0.001"])  # left as it was


def test_a_mistake_in_conf_is_one_error_naming_the_file(tmp_path, capsys):
    """A YAML typo in conf/ names the file and line (was a traceback of Hydra's loader); a bad
    value of a preset names the conf/ files it was composed from, not only params.yaml."""
    conf = shutil.copytree(CONF, tmp_path / "conf")
    config = conf / "config.yaml"
    config.write_text(config.read_text().replace("\nseed: 0", "\nseed: [0", 1))
    assert presets.main(["--conf", str(conf), "-o", "-"]) == 2
    err = capsys.readouterr().err
    assert "not valid YAML" in err and f'"{config}", line' in err and "Traceback" not in err

    shutil.copy(CONF / "config.yaml", config)
    demo = conf / "preset" / "demo.yaml"
    demo.write_text(demo.read_text().replace("\nlr: ", "\nlr: abc #", 1))
    assert presets.main(["--conf", str(conf), "-o", "-"]) == 2
    err = capsys.readouterr().err
    assert "'lr' is 'abc'" in err and f"{conf}/preset/demo.yaml" in err
