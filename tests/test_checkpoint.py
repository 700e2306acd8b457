"""finetuner.models.checkpoint: the self-describing checkpoint, saved atomically and loaded with
``weights_only=True`` and checked, so a file with code in it, a truncated file or another
architecture's weights is refused with an error naming the file, and nothing in it runs.

The finetune stage killed while it trains is in tests/test_robustness_faults.py."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from finetuner.models import WeightsError, build_model
from finetuner.models.checkpoint import (FORMAT, CheckpointError, load_checkpoint,
                                         save_checkpoint)

ARCH, CLASSES = "tf_efficientnet_lite0", ["a", "b", "c"]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(ARCH, "none", len(CLASSES)).eval()


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory, model) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    save_checkpoint(path, model, ARCH, CLASSES, 32, 0.875, {"best_epoch": 1})
    return path


def payload_of(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


# --- what is saved and loaded ------------------------------------------------------------------

def test_a_good_checkpoint_loads(good_checkpoint):
    checkpoint = load_checkpoint(good_checkpoint)
    assert checkpoint.arch == ARCH and checkpoint.class_names == CLASSES
    assert checkpoint.image_size == 32 and checkpoint.info == {"best_epoch": 1}


def test_the_loaded_model_is_the_saved_one_in_eval_mode(good_checkpoint, model):
    checkpoint = load_checkpoint(good_checkpoint)
    assert type(checkpoint.image_size) is int and type(checkpoint.crop_pct) is float
    assert checkpoint.crop_pct == 0.875
    assert not checkpoint.model.training
    saved, loaded = model.state_dict(), checkpoint.model.state_dict()
    assert saved.keys() == loaded.keys()
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)  # mean and std buffers too
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(checkpoint.model(images), model(images))


def test_the_file_is_plain_data_that_describes_itself(good_checkpoint, model):
    payload = payload_of(good_checkpoint)  # weights_only: no class of ours is needed to read it
    assert payload["format"] == FORMAT == "finetuner-checkpoint/1"
    assert {k: payload[k] for k in ("arch", "class_names", "image_size", "crop_pct", "info")} == {
        "arch": ARCH, "class_names": CLASSES, "image_size": 32, "crop_pct": 0.875,
        "info": {"best_epoch": 1}}
    assert payload["mean"] == model.mean.flatten().tolist()
    assert payload["std"] == model.std.flatten().tolist()
    assert all(t.device.type == "cpu" and t.is_contiguous() and not t.requires_grad
               for t in payload["state_dict"].values())


def test_numpy_numbers_ints_and_tuples_are_stored_as_plain_values(tmp_path, model):
    """So the file stays loadable with weights_only (a numpy scalar would not be)."""
    path = tmp_path / "model.pt"
    save_checkpoint(path, model, ARCH, tuple(CLASSES), np.int64(32), 1, {})
    checkpoint = load_checkpoint(path)
    assert (checkpoint.image_size, checkpoint.crop_pct, checkpoint.class_names) == (32, 1.0, CLASSES)
    assert type(checkpoint.image_size) is int and type(checkpoint.crop_pct) is float


def test_a_checkpoint_saved_from_a_gpu_loads_on_a_cpu_only_machine(tmp_path, monkeypatch):
    """The file is written as if every tensor lived on cuda:0 (torch.save records each storage's
    device); load_checkpoint maps it to the CPU."""
    torch.manual_seed(0)
    model = build_model("resnet18", "none", 3)
    path = tmp_path / "gpu.pt"
    monkeypatch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
    save_checkpoint(path, model, "resnet18", ["a", "b", "c"], 32, 0.875, {"note": "from cuda"})
    monkeypatch.undo()
    if not torch.cuda.is_available():  # the file really says cuda: a plain load must fail here
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(path, weights_only=True)
    loaded = load_checkpoint(path)
    for key, value in model.state_dict().items():
        assert loaded.model.state_dict()[key].device.type == "cpu"
        assert torch.equal(loaded.model.state_dict()[key], value), key


def test_info_that_is_not_a_mapping_loads_as_empty(tmp_path, good_checkpoint):
    payload = payload_of(good_checkpoint)
    payload["info"] = ["not", "a", "dict"]
    torch.save(payload, tmp_path / "model.pt")
    assert load_checkpoint(tmp_path / "model.pt").info == {}


# --- saving is atomic ------------------------------------------------------------------------

@pytest.mark.parametrize("interrupt", [KeyboardInterrupt(), OSError(28, "No space left")],
                         ids=["ctrl-c", "disk-full"])
def test_a_save_interrupted_half_way_keeps_the_previous_checkpoint(tmp_path, monkeypatch, model,
                                                                   good_checkpoint, interrupt):
    path = tmp_path / "model.pt"
    path.write_bytes(good_checkpoint.read_bytes())
    real_save = torch.save

    def half_save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        Path(f).write_bytes(Path(f).read_bytes()[:1000])  # half-written, then stopped
        raise interrupt

    monkeypatch.setattr(torch, "save", half_save)
    with pytest.raises(type(interrupt)):
        save_checkpoint(path, model, ARCH, ["x", "y", "z"], 64, 1.0, {"best_epoch": 9})
    monkeypatch.undo()
    assert path.read_bytes() == good_checkpoint.read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # no temp left beside it
    assert load_checkpoint(path).class_names == CLASSES


def test_a_first_save_interrupted_leaves_no_file(tmp_path, monkeypatch, model):
    def interrupted(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"PK\x03\x04 half")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "models" / "model.pt", model, ARCH, CLASSES, 32, 0.875, {})
    assert list((tmp_path / "models").iterdir()) == []


# --- checkpoints that are not what they claim -------------------------------------------------

class RunsCode:
    """Unpickling this runs a shell command: the classic malicious checkpoint."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def hostile_file(tmp_path: Path, writer: str) -> tuple[Path, Path]:
    marker = tmp_path / "PWNED"
    path = tmp_path / "model.pt"
    payload = {"format": FORMAT, "arch": ARCH, "state_dict": {}, "evil": RunsCode(marker)}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    return path, marker


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_a_checkpoint_with_code_in_it_is_refused_and_the_code_never_runs(tmp_path, writer):
    path, marker = hostile_file(tmp_path, writer)
    with pytest.raises(CheckpointError, match="not only weights") as error:
        load_checkpoint(path)
    message = str(error.value)
    assert message.startswith(f"{path}: ") and "nothing in the file was executed" in message
    assert "(refused: " in message and "system" in message  # the global it would have called
    assert not marker.exists(), "the pickle's code ran"


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_the_same_file_as_model_weights_is_refused_and_the_code_never_runs(tmp_path, writer):
    path, marker = hostile_file(tmp_path, writer)
    with pytest.raises(WeightsError, match="not a loadable state-dict"):
        build_model(ARCH, str(path), 3)
    assert not marker.exists(), "the pickle's code ran"


@pytest.mark.parametrize("keep", [0.5, 0.9, 100])
def test_a_truncated_checkpoint_is_refused(tmp_path, good_checkpoint, keep):
    data = good_checkpoint.read_bytes()
    path = tmp_path / "model.pt"
    path.write_bytes(data[: int(len(data) * keep) if keep < 1 else keep])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as error:
        load_checkpoint(path)
    assert str(error.value).startswith(f"{path}: ")


@pytest.mark.parametrize("content", [os.urandom(4096), b"not a checkpoint at all\n"],
                         ids=["random-bytes", "text"])
def test_a_file_that_is_no_torch_file_is_refused_naming_it(tmp_path, content):
    path = tmp_path / "model.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="not a loadable checkpoint") as error:
        load_checkpoint(path)
    assert str(error.value).startswith(f"{path}: ")
    assert "nothing in the file was executed" in str(error.value)


def test_an_empty_missing_or_folder_checkpoint_is_refused(tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "folder.pt").mkdir()
    for name, words in [("empty.pt", "empty file"), ("missing.pt", "no such checkpoint"),
                        ("folder.pt", "is a folder")]:
        with pytest.raises(CheckpointError, match=words) as error:
            load_checkpoint(tmp_path / name)
        assert str(error.value).startswith(f"{tmp_path / name}: ")


@pytest.mark.parametrize("change, words", [
    (lambda p: p.update(arch="resnet18"), ["do not match architecture 'resnet18'"]),
    (lambda p: p.update(class_names=["a", "b"]),
     [f"its head has {len(CLASSES)} outputs but field 'class_names' lists 2 names"]),
    (lambda p: p.update(arch="resnet19"), ["'resnet19'", "resnet18"]),
    (lambda p: p.pop("image_size"), ["'image_size' is missing"]),
    (lambda p: p.update(image_size=True), ["'image_size'", "(bool)"]),
    (lambda p: p.pop("state_dict"), ["'state_dict' is missing"]),
    (lambda p: p["state_dict"].update(extra=3), ["'state_dict' holds something other"]),
    (lambda p: p.update(class_names=[]), ["'class_names' must be a non-empty list of names"]),
    (lambda p: p.update(class_names=[1, 2, 3]), ["'class_names' must be a non-empty list"]),
    (lambda p: p.update(class_names=["a"] * len(CLASSES)), ["names 'a' more than once"]),
    (lambda p: p.update(image_size=0), ["'image_size' is 0; allowed: 16 to 1024 px"]),
    (lambda p: p.update(image_size=100_000), ["'image_size' is 100000; allowed"]),
    (lambda p: p.update(crop_pct=-1.0), ["'crop_pct' is -1.0; allowed: above 0, at most 1"]),
    (lambda p: p.update(format="something-else/2"),
     ["not a finetuner-checkpoint/1 file", "'something-else/2'"]),
    (lambda p: p.pop("format"), ["not a finetuner-checkpoint/1 file", "without a format tag"]),
], ids=["other-arch", "other-classes", "unknown-arch", "no-image-size", "bool-image-size",
        "no-state-dict", "non-tensor", "no-classes", "non-str-classes", "same-class-twice",
        "image-size-0", "image-size-huge", "crop-negative", "other-format",
        "no-format"])
def test_a_checkpoint_that_is_not_what_it_claims_is_refused(tmp_path, good_checkpoint, change,
                                                           words):
    payload = payload_of(good_checkpoint)
    change(payload)
    path = tmp_path / "model.pt"
    torch.save(payload, path)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path)
    assert str(error.value).startswith(f"{path}: ")
    for word in words:
        assert word in str(error.value)


def test_an_unknown_layers_field_is_named_as_such_not_as_a_weights_mismatch(tmp_path,
                                                                           good_checkpoint):
    payload = payload_of(good_checkpoint)
    payload["layers"] = "some"
    path = tmp_path / "model.pt"
    torch.save(payload, path)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path)
    assert str(error.value).startswith(f"{path}: field 'layers' is 'some'; allowed: ")


@pytest.mark.parametrize("saved, words", [
    (lambda: build_model("resnet18", "none", 3).state_dict(), "a OrderedDict without"),
    (lambda: [torch.zeros(3)], "a list without a format tag"),
], ids=["bare-state-dict", "list"])
def test_a_bare_state_dict_or_other_object_is_not_a_checkpoint(tmp_path, saved, words):
    path = tmp_path / "resnet18.pt"
    torch.save(saved(), path)
    with pytest.raises(CheckpointError, match="not a finetuner-checkpoint/1 file") as error:
        load_checkpoint(path)
    assert str(error.value).startswith(f"{path}: ") and words in str(error.value)


def _torchscript(model, path):
    import warnings
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated: we know
        torch.jit.save(torch.jit.trace(model, torch.rand(1, 3, 32, 32)), str(path))


def _pt2(model, path):
    program = torch.export.export(model, (torch.rand(2, 3, 32, 32),))
    with open(path, "wb") as f:  # a file object: torch would warn about the suffix
        torch.export.save(program, f)


def _zip(path):
    import zipfile
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "hello")


WRONG_FILES = {  # name -> (how to write it, what the message must call it)
    "random-bytes": (lambda m, p, g: p.write_bytes(b"\x17" + np.random.default_rng(0).bytes(4095)),
                     "unrecognised bytes: random data"),
    "truncated": (lambda m, p, g: p.write_bytes(g.read_bytes()[:len(g.read_bytes()) // 2]),
                  "truncated or corrupt: a zip archive (as torch.save writes) without its end"),
    "torchscript": (lambda m, p, g: _torchscript(m, p), "a TorchScript archive (torch.jit.save"),
    "pt2": (lambda m, p, g: _pt2(m, p), "a torch.export .pt2 archive"),
    "onnx": (lambda m, p, g: p.write_bytes(__import__("finetuner.export").export.onnx_bytes(
        m, 32)), "an ONNX model (`finetuner export` writes these; predict and evaluate take"),
    "zip": (lambda m, p, g: _zip(p), "a zip archive that torch.save did not write (it holds "
                                     "readme.txt)"),
    "pickle": (lambda m, p, g: p.write_bytes(pickle.dumps({"arch": ARCH}, protocol=2)),
               "a Python pickle that torch.save did not write"),
    "png": (lambda m, p, g: p.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64)), "a PNG image"),
    "text": (lambda m, p, g: p.write_text("arch: resnet18\nlr: 0.1\n"),
             "a text file (it starts 'arch: resnet18')"),
    "safetensors": (lambda m, p, g: __import__("safetensors.torch").torch.save_file(
        {"w": torch.zeros(2)}, str(p)), "a safetensors weights file"),
}


@pytest.mark.parametrize("kind", sorted(WRONG_FILES))
def test_a_wrong_file_is_named_for_what_it_is(tmp_path, model, good_checkpoint, kind):
    write, words = WRONG_FILES[kind]
    path = tmp_path / "model.pt"
    write(model, path, good_checkpoint)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path)
    message = str(error.value)
    assert message.startswith(f"{path}: not a loadable checkpoint") and "\n" not in message
    assert words in message and "nothing in the file was executed" in message


def test_the_evaluate_stage_names_what_a_checkpoint_s_record_lacks(good_checkpoint):
    """Loading needs no training record (predict, export); the evaluate stage reads five keys
    and says which are missing instead of failing with a KeyError."""
    from finetuner.evaluation.report import evaluate_checkpoint

    checkpoint = load_checkpoint(good_checkpoint)
    assert checkpoint.info == {"best_epoch": 1}
    with pytest.raises(CheckpointError, match=r"model.pt: its training record lacks 'history', "
                       r"'best_val_acc', 'train_seconds', 'epochs_run'"):
        evaluate_checkpoint(checkpoint, None, None, good_checkpoint, 8, torch.device("cpu"))
    info = {"history": [{"epoch": 1}], "best_epoch": 1, "best_val_acc": 0.5,
            "train_seconds": 1.0, "epochs_run": 1}
    with pytest.raises(CheckpointError, match="history's epochs"):
        evaluate_checkpoint(checkpoint.__class__(**{**checkpoint.__dict__, "info": info}), None,
                            None, good_checkpoint, 8, torch.device("cpu"))
