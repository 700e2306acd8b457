"""Exports (ONNX, TorchScript, .pt2) and the ONNX Runtime predictor, on tiny models.

Parity is checked on crops of two real photos (scikit-learn's sample images), given the
pipeline's evaluation view, with a head that spreads the logits so the top-1 classes differ.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_sample_images

from finetuner import export as export_module
from finetuner.cli import main
from finetuner.data.views import eval_view_of
from finetuner.evaluation.calibration import calibration_record, file_sha256
from finetuner.evaluation.cost import onnxruntime_cost
from finetuner.export import ExportError, export_model, format_for, onnx_bytes
from finetuner.onnx_file import read_onnx
from finetuner.io import write_json
from finetuner.models import build_model
from finetuner.models.checkpoint import load_checkpoint, save_checkpoint
from finetuner.predictor import load_predictor

CLASSES = ["cat", "dog", "fox", "owl", "yak"]
SIZE = 64


def _photos(folder: Path, count: int = 10) -> list[Path]:
    """JPEG crops of different places and scales of scikit-learn's two sample photos."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        photo = load_sample_images().images[i % 2]
        side = int(rng.integers(90, 400))
        top, left = rng.integers(0, photo.shape[0] - side), rng.integers(0, photo.shape[1] - side)
        crop = photo[top:top + side, left:left + int(side * rng.uniform(0.8, 1.5))]
        Image.fromarray(np.ascontiguousarray(crop)).save(folder / f"photo_{i:02d}.jpg", quality=90)
        paths.append(folder / f"photo_{i:02d}.jpg")
    return paths


def _views(paths: list[Path]) -> np.ndarray:
    """The pipeline's evaluation views (JPEGs draft-decoded as preprocess and predict do)."""
    return np.stack([eval_view_of(p, SIZE, 0.875) for p in paths])


def _checkpoint(path: Path, arch: str, weights: str, photos: list[Path]) -> Path:
    """A checkpoint whose head spreads the logits (std about 4) over the photos' features."""
    torch.manual_seed(0)
    model = build_model(arch, weights, len(CLASSES)).eval()
    images = torch.from_numpy(_views(photos)).permute(0, 3, 1, 2)
    with torch.no_grad():
        features = model.pool(model.forward_stages(model.normalize(images)))
        features = features - features.mean(0)
        weight = torch.randn(len(CLASSES), features.shape[1])
        scale = 4 / (features @ weight.T).std()
        model.classifier.weight.copy_(weight * scale)
        model.classifier.bias.copy_(-(model.pool(model.forward_stages(model.normalize(images)))
                                      .mean(0) @ weight.T) * scale)
    save_checkpoint(path, model, arch, CLASSES, SIZE, 0.875, {})
    return path


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    return _photos(tmp_path_factory.mktemp("photos") / "photos")


@pytest.fixture(scope="module")
def resnet(tmp_path_factory, photos) -> Path:
    return _checkpoint(tmp_path_factory.mktemp("ckpt") / "resnet.pt", "resnet18", "none", photos)


@pytest.fixture(scope="module")
def resnet_onnx(tmp_path_factory, resnet) -> Path:
    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    assert main(["export", str(resnet), str(out)]) == 0
    return out


def _logits(checkpoint: Path, images: np.ndarray) -> np.ndarray:
    model = load_checkpoint(checkpoint).model
    with torch.no_grad():
        return model(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255).numpy()


@pytest.mark.parametrize("arch, weights", [("tf_efficientnet_lite0", "DEFAULT"),
                                           ("resnet18", "none")])
def test_onnx_runtime_gives_the_checkpoints_logits_and_classes(arch, weights, photos, tmp_path):
    checkpoint = _checkpoint(tmp_path / "model.pt", arch, weights, photos)
    out = tmp_path / "model.onnx"
    meta = export_model(load_checkpoint(checkpoint), out, "onnx")
    assert meta["parity_error"] <= 1e-4
    images = _views(photos)
    expected = _logits(checkpoint, images)
    assert len(set(expected.argmax(1))) >= 3, "the test needs photos the model tells apart"
    session, _ = read_onnx(out)
    for batch in (images[:1], images):  # the batch size is dynamic
        got = session.run(None, {"images": batch.transpose(0, 3, 1, 2).astype(np.float32) / 255})[0]
        assert np.abs(got - expected[:len(batch)]).max() <= 1e-4
        assert (got.argmax(1) == expected[:len(batch)].argmax(1)).all()


def test_onnx_metadata_and_sidecar_round_trip(resnet, resnet_onnx):
    stored = {p.key: json.loads(p.value) for p in onnx.load(str(resnet_onnx)).metadata_props}
    sidecar = json.loads(resnet_onnx.with_name("model.onnx.json").read_text())
    assert stored["finetuner"] == "finetuner-onnx/1"
    for meta in (stored, sidecar):
        assert meta["class_names"] == CLASSES and meta["arch"] == "resnet18"
        assert (meta["image_size"], meta["crop_pct"], meta["temperature"]) == (SIZE, 0.875, None)
        assert meta["checkpoint_sha256"] == file_sha256(resnet)
        assert "resize the short side to 73 px (image_size / crop_pct), bicubic, antialiased" \
            in meta["preprocessing"]
        assert "centre-crop 64 x 64" in meta["preprocessing"]
        assert "a JPEG at the smallest DCT scale" in meta["preprocessing"][0]  # as predict does
        assert "short side is still at least 73 px" in meta["preprocessing"][0]
    _, read = read_onnx(resnet_onnx)
    assert {k: read[k] for k in ("class_names", "image_size", "crop_pct", "temperature")} == {
        "class_names": CLASSES, "image_size": SIZE, "crop_pct": 0.875, "temperature": None}


def test_export_with_calibration_stores_the_temperature_and_predict_applies_it(
        resnet, photos, tmp_path, capsys):
    calibration = tmp_path / "calibration.json"
    write_json(calibration, calibration_record(2.5, resnet, file_sha256(resnet), "val split", 9))
    out = tmp_path / "calibrated.onnx"
    assert main(["export", str(resnet), str(out), "--calibration", str(calibration)]) == 0
    assert "temperature 2.5" in capsys.readouterr().out
    assert read_onnx(out)[1]["temperature"] == 2.5
    assert json.loads(out.with_name("calibrated.onnx.json").read_text())["temperature"] == 2.5
    assert main(["predict", str(out), str(photos[0]), "--json", "--top-k", "5"]) == 0
    top = json.loads(capsys.readouterr().out)[0]["top"]
    logits = _logits(resnet, _views(photos[:1]))[0] / 2.5
    expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    assert [t["prob"] for t in top] == pytest.approx(sorted(expected, reverse=True), abs=1e-5)


def test_predict_and_evaluate_with_onnx_match_the_checkpoint(resnet, resnet_onnx, photos,
                                                             tmp_path, capsys):
    from_torch, from_onnx = [], []
    for model, results in ((resnet, from_torch), (resnet_onnx, from_onnx)):
        assert main(["predict", str(model), str(photos[0].parent), "--json", "--top-k", "2"]) == 0
        results += json.loads(capsys.readouterr().out)
    assert len(from_torch) == len(photos)
    assert [r["path"] for r in from_onnx] == [r["path"] for r in from_torch]
    for a, b in zip(from_torch, from_onnx):
        assert [t["class"] for t in a["top"]] == [t["class"] for t in b["top"]]
        assert [t["prob"] for t in a["top"]] == pytest.approx([t["prob"] for t in b["top"]],
                                                             abs=1e-5)
    # evaluate: a labelled folder named after what the checkpoint predicts
    predicted = _logits(resnet, _views(photos)).argmax(1)
    folder = tmp_path / "labelled"
    for path, label in zip(photos, predicted):
        (folder / CLASSES[label]).mkdir(parents=True, exist_ok=True)
        (folder / CLASSES[label] / path.name).write_bytes(path.read_bytes())
    for model, runtime in ((resnet_onnx, []), (resnet, ["--runtime", "onnxruntime"])):
        assert main(["evaluate", str(model), str(folder), "--json", *runtime]) == 0
        assert json.loads(capsys.readouterr().out)["accuracy"] == 1.0


@pytest.mark.parametrize("content", ["random", "empty", "truncated", "foreign"])
def test_a_corrupt_or_foreign_onnx_file_is_one_line_naming_it(content, resnet, resnet_onnx,
                                                              photos, tmp_path, capsys):
    bad = tmp_path / "bad.onnx"
    if content == "random":
        bad.write_bytes(np.random.default_rng(0).bytes(5000))
    elif content == "empty":
        bad.write_bytes(b"")
    elif content == "truncated":
        bad.write_bytes(resnet_onnx.read_bytes()[:3000])
    else:  # a valid ONNX model, but not written by finetuner export: no labels for its outputs
        bad.write_bytes(onnx_bytes(load_checkpoint(resnet).model, SIZE))
    for command in ("predict", "evaluate"):
        code = main([command, str(bad), str(photos[0].parent)])
        out, err = capsys.readouterr()
        assert code == 2 and out == ""
        assert err.count("\n") == 1 and err.startswith(f"finetuner {command}: error: {bad}: ")
    if content == "foreign":
        assert "without finetuner's metadata" in err


def test_an_onnx_file_cannot_run_in_torch(resnet_onnx, photos, capsys):
    assert main(["predict", str(resnet_onnx), str(photos[0]), "--runtime", "torch"]) == 2
    assert "runs in onnxruntime" in capsys.readouterr().err


def test_pt2_and_torchscript_exports_carry_the_metadata_and_the_logits(resnet, photos, tmp_path):
    images = torch.from_numpy(_views(photos)).permute(0, 3, 1, 2).float() / 255
    expected = _logits(resnet, _views(photos))
    checkpoint = load_checkpoint(resnet)

    export_model(checkpoint, tmp_path / "model.pt2", "pt2")
    extra = {"finetuner.json": ""}
    program = torch.export.load(tmp_path / "model.pt2", extra_files=extra)
    assert json.loads(extra["finetuner.json"])["class_names"] == CLASSES
    with torch.no_grad():
        for batch in (images[:1], images):
            assert np.abs(program.module()(batch).numpy() - expected[:len(batch)]).max() <= 1e-4

    assert format_for(tmp_path / "model.pt") == "torchscript"
    export_model(checkpoint, tmp_path / "model.pt", "torchscript")
    extra = {"finetuner.json": ""}
    with pytest.warns(FutureWarning):  # torch.jit.load is deprecated, still loads
        scripted = torch.jit.load(str(tmp_path / "model.pt"), _extra_files=extra)
    assert json.loads(extra["finetuner.json"])["format"] == "torchscript"
    with torch.no_grad():
        assert np.abs(scripted(images).numpy() - expected).max() <= 1e-4
    assert json.loads((tmp_path / "model.pt.json").read_text())["class_names"] == CLASSES


def test_the_format_comes_from_the_suffix_or_must_agree_with_it(tmp_path):
    assert [format_for(f"m{s}") for s in (".onnx", ".ts", ".pt", ".pt2")] == [
        "onnx", "torchscript", "torchscript", "pt2"]
    assert format_for("model.bin", "onnx") == "onnx"
    with pytest.raises(ExportError, match=r"model\.bin: cannot tell the format"):
        format_for("model.bin")
    with pytest.raises(ExportError, match=r"suffix \.onnx means onnx, not --format pt2"):
        format_for("model.onnx", "pt2")


def test_an_export_that_misses_the_tolerance_writes_nothing(resnet, tmp_path, monkeypatch):
    monkeypatch.setattr(export_module, "PARITY_TOLERANCE", -1.0)  # every export "fails"
    with pytest.raises(ExportError, match="nothing written"):
        export_model(load_checkpoint(resnet), tmp_path / "model.onnx", "onnx")
    assert list(tmp_path.iterdir()) == []


def test_an_export_interrupted_before_its_json_leaves_no_older_json_beside_it(
        resnet, tmp_path, monkeypatch):
    """The model is renamed into place before its metadata file is written: a Ctrl-C between
    the two must not leave the previous export's metadata (another temperature) beside it."""
    out = tmp_path / "model.onnx"
    export_model(load_checkpoint(resnet), out, "onnx", temperature=2.0)
    assert json.loads((tmp_path / "model.onnx.json").read_text())["temperature"] == 2.0

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(export_module, "write_json", ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        export_model(load_checkpoint(resnet), out, "onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # no temp, no old json
    assert read_onnx(out)[1]["temperature"] is None  # the new export, whole


def test_predictor_from_a_checkpoint_in_onnxruntime_equals_torch(resnet, photos):
    images = _views(photos)
    torch_run = load_predictor(resnet)
    ort_run = load_predictor(resnet, "onnxruntime")
    assert (torch_run.runtime, ort_run.runtime) == ("torch", "onnxruntime")
    assert np.abs(torch_run.logits(images) - ort_run.logits(images)).max() <= 1e-4


def test_onnxruntime_cost_reports_latency_throughput_and_size():
    cost = onnxruntime_cost(build_model("resnet18", "none", 3), 32, runs=3, budget_s=0.5)
    assert cost["onnxruntime_latency_ms"] > 0 and cost["onnxruntime_images_per_s"] > 0
    assert 40 < cost["onnx_mb"] < 50  # resnet18's 11.2 M float32 weights


@pytest.fixture
def drifting_exporter(monkeypatch):
    """An ONNX exporter whose graph misses the model's logits by 0.01 (as an exporter bug
    would; 0.005 of logits near 2): every ONNX path must notice it."""
    import copy
    real = export_module.onnx_bytes

    def drifting(model, image_size, metadata=None):
        drifted = copy.deepcopy(model)
        with torch.no_grad():
            drifted.classifier.bias.add_(0.01)
        return real(drifted, image_size, metadata)
    monkeypatch.setattr(export_module, "onnx_bytes", drifting)


def test_every_onnx_path_refuses_an_export_that_misses_the_logits(
        drifting_exporter, resnet, photos, tmp_path, capsys):
    with pytest.raises(ExportError, match="nothing written"):  # finetuner export
        export_model(load_checkpoint(resnet), tmp_path / "model.onnx", "onnx")
    with pytest.raises(ExportError, match=r"resnet\.pt: its ONNX export \(made in memory for "
                                          r"onnxruntime\) gives logits up to 0\.0\d+ away"):
        load_predictor(resnet, "onnxruntime")  # predict / evaluate --runtime onnxruntime
    assert main(["predict", str(resnet), str(photos[0]), "--runtime", "onnxruntime"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "run it with --runtime torch" in err
    with pytest.raises(ExportError, match=r"the ONNX export gives logits up to 0\.0\d+ away"):
        onnxruntime_cost(load_checkpoint(resnet).model, SIZE, runs=3, budget_s=0.5)  # evaluate
    assert list(tmp_path.iterdir()) == []


def test_only_export_py_makes_onnx_models():
    """Every ONNX model is made by export.onnx_bytes, called only where its logits are checked
    (export._onnx_measured): a new caller elsewhere would skip the parity check."""
    root = Path(__file__).resolve().parents[1]
    callers = sorted(str(p.relative_to(root)) for folder in ("src", "benchmarks", "stages")
                     for p in (root / folder).rglob("*.py") if "onnx_bytes(" in p.read_text())
    assert callers == ["src/finetuner/export.py"]
    source = (root / "src" / "finetuner" / "export.py").read_text()
    assert source.count("onnx_bytes(") == 2  # its definition and _onnx_measured


def test_an_ensemble_of_multi_layer_probes_exports_with_its_logits(photos, tmp_path):
    """The photos recipe's kind of model: two backbones, every stage's pooled features."""
    arch = "resnet18+mobilenet_v3_small"
    torch.manual_seed(0)
    model = build_model(arch, "none", len(CLASSES), "all").eval()
    images = torch.from_numpy(_views(photos)).permute(0, 3, 1, 2)
    with torch.no_grad():
        for member in model.members:  # heads that spread the logits over the photos
            features = member.features(images)
            weight = torch.randn(len(CLASSES), features.shape[1])
            scale = 4 / ((features - features.mean(0)) @ weight.T).std()
            member.classifier.weight.copy_(weight * scale)
            member.classifier.bias.copy_(-(features.mean(0) @ weight.T) * scale)
    save_checkpoint(tmp_path / "model.pt", model, arch, CLASSES, SIZE, 0.875, {})
    checkpoint = load_checkpoint(tmp_path / "model.pt")
    expected = _logits(tmp_path / "model.pt", _views(photos))
    with torch.no_grad():
        assert np.allclose(expected, model(images).numpy(), atol=1e-5)  # the loaded model
    meta = export_model(checkpoint, tmp_path / "model.onnx", "onnx")
    assert meta["parity_error"] <= 1e-4
    session, _ = read_onnx(tmp_path / "model.onnx")
    got = session.run(None, {"images": _views(photos).transpose(0, 3, 1, 2).astype(np.float32)
                             / 255})[0]
    assert np.abs(got - expected).max() <= 1e-4 and len(set(expected.argmax(1))) >= 3


def test_a_confident_model_exports_though_its_large_logits_round_by_more_than_1e4(resnet,
                                                                                tmp_path):
    """float32 rounding grows with the logit: an ensemble of probes with little L2 (C at the
    grid's top) gave log-probabilities near -600 on the random parity batch, 2e-3 away from
    the checkpoint's in an exact ONNX graph; the parity check is relative beyond ±1."""
    payload = torch.load(resnet, weights_only=True)
    for key in ("classifier.weight", "classifier.bias"):
        payload["state_dict"][key] = payload["state_dict"][key] * 3000
    torch.save(payload, tmp_path / "confident.pt")
    checkpoint = load_checkpoint(tmp_path / "confident.pt")
    out = tmp_path / "model.onnx"
    meta = export_model(checkpoint, out, "onnx")
    assert meta["parity_error"] <= 1e-4
    session, _ = read_onnx(out)
    batch = torch.rand(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = checkpoint.model(batch).numpy()
    got = session.run(None, {"images": batch.numpy()})[0]
    assert np.abs(expected).max() > 1000  # the logits are large, and so is their rounding:
    assert np.abs(got - expected).max() > 1e-4  # an absolute 1e-4 would refuse this export
    assert (got.argmax(1) == expected.argmax(1)).all()


def test_an_onnx_path_that_is_a_folder_or_missing_is_named_as_such(tmp_path):
    folder = tmp_path / "model.onnx"
    folder.mkdir()
    with pytest.raises(ExportError, match="model.onnx: is a folder, not an ONNX file"):
        load_predictor(folder)
    with pytest.raises(ExportError, match="other.onnx: no such ONNX file"):
        load_predictor(tmp_path / "other.onnx")
