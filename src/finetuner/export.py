"""Exported models: ONNX (for ONNX Runtime), TorchScript, and torch.export's ``.pt2``.

Every export takes float32 RGB images in [0, 1], shape (N, 3, size, size) with any N, normalises
them itself (the :class:`StagedClassifier` does) and returns logits (N, classes). What a user
needs besides the graph (class names, the resize and crop recipe, the temperature that calibrates
the probabilities) is stored inside the file (ONNX ``metadata_props``; an extra file
``finetuner.json`` in TorchScript and ``.pt2`` archives) and in ``OUT.json`` beside it.

ONNX is written by torch's TorchScript-based exporter (``dynamo=False``): on the families tried
(resnet, regnet, convnext, mobilenet v3/v4, efficientnet, densenet) it gives the same graph
outputs as the dynamo exporter, 3-5x faster (4 s against 17 s for Lite0 on 2 cores; the
evaluate stage exports once per run to time ONNX Runtime) and without onnxscript. Torch marks
it deprecated; when a torch upgrade removes it, ``dynamo=True`` and the ``onnxscript``
dependency replace it (tests/test_export.py checks the result either way).

Each export is checked before it is written: the exported model must give the PyTorch model's
logits within :data:`PARITY_TOLERANCE` on a random batch (relative to the logit beyond ±1: see
:func:`_parity_error`), or nothing is written.  The ONNX models
made in memory (``predict --runtime onnxruntime`` on a checkpoint, the evaluate stage's ONNX
Runtime timing) come from :func:`onnx_checked`, which makes the same check.  Reading a written
ONNX file back to run it (predict, evaluate): :mod:`finetuner.onnx_file`.
"""
from __future__ import annotations

import contextlib
import io
import json
import warnings
from pathlib import Path

import numpy as np
import torch

from .data.views import canvas_side, eval_resize
from .io import atomic_path, write_json
from .models.checkpoint import Checkpoint
from .onnx_file import (INPUT_NAME, ONNX_TAG, OUTPUT_NAME, ExportError, first_line, onnx_runner,
                        onnx_session)

FORMATS = {"onnx": (".onnx",), "torchscript": (".ts", ".pt"), "pt2": (".pt2",)}
OPSET = 18
PARITY_TOLERANCE = 1e-4  # the largest parity error (:func:`_parity_error`) an export may have
EXTRA_FILE = "finetuner.json"  # the metadata inside TorchScript and .pt2 archives


def format_for(out: str | Path, fmt: str | None = None) -> str:
    """The export format: ``fmt`` if given (it must agree with a known suffix), else the
    suffix's."""
    suffix = Path(out).suffix.lower()
    by_suffix = next((name for name, suffixes in FORMATS.items() if suffix in suffixes), None)
    if fmt is None:
        if by_suffix is None:
            known = ", ".join(f"{s} ({name})" for name, ss in FORMATS.items() for s in ss)
            raise ExportError(f"{out}: cannot tell the format from the suffix "
                              f"{suffix or '(none)'!r}; use one of {known} or --format")
        return by_suffix
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")
    if by_suffix is not None and by_suffix != fmt:
        raise ExportError(f"{out}: the suffix {suffix} means {by_suffix}, not --format {fmt}")
    return fmt


def preprocessing(image_size: int, crop_pct: float) -> list[str]:
    """The steps that turn a photo into the model's input, in words: what
    :func:`finetuner.data.views.eval_view_of` does, which every accuracy was measured on."""
    resize = eval_resize(image_size, crop_pct)
    return [f"decode to RGB, EXIF orientation applied; a JPEG at the smallest DCT scale (1/2, "
            f"1/4, 1/8: libjpeg's draft mode, PIL's Image.draft) whose short side is still at "
            f"least {canvas_side(image_size, crop_pct)} px",
            f"resize the short side to {resize} px (image_size / crop_pct), bicubic, antialiased",
            f"centre-crop {image_size} x {image_size}",
            "to float: uint8 / 255, layout NCHW"]


def describe(checkpoint: Checkpoint, fmt: str, temperature: float | None = None,
             checkpoint_sha256: str | None = None) -> dict:
    """The metadata of an export: what ``OUT.json`` holds and what is stored inside the file."""
    size = checkpoint.image_size
    return {
        "format": fmt, "arch": checkpoint.arch, "class_names": list(checkpoint.class_names),
        "image_size": size, "crop_pct": checkpoint.crop_pct,
        "temperature": temperature,
        "checkpoint_sha256": checkpoint_sha256,
        "input": f"float32 (N, 3, {size}, {size}), RGB scaled to [0, 1], any N; the model "
                 "normalises" + (f"; input name {INPUT_NAME!r}" if fmt == "onnx" else ""),
        "output": "logits (N, classes); softmax(logits / temperature) gives calibrated "
                  "probabilities (temperature null: not calibrated, use 1)"
                  + (f"; output name {OUTPUT_NAME!r}" if fmt == "onnx" else ""),
        "preprocessing": preprocessing(size, checkpoint.crop_pct)}


# --- ONNX ---------------------------------------------------------------------------------------

def onnx_bytes(model: torch.nn.Module, image_size: int, metadata: dict | None = None) -> bytes:
    """``model`` (on the CPU, eval mode) as a serialised ONNX model with a dynamic batch size;
    ``metadata`` (JSON-encoded values) goes into its ``metadata_props``."""
    import onnx

    model = model.cpu().eval()
    example = torch.rand(2, 3, image_size, image_size)  # not 1: the batch size stays symbolic
    buffer = io.BytesIO()
    with _quiet_jit(), torch.no_grad():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript-based exporter
        torch.onnx.export(model, (example,), buffer, dynamo=False, opset_version=OPSET,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    proto = onnx.load_model_from_string(buffer.getvalue())
    proto.producer_name = "finetuner"
    if metadata is not None:
        entries = {"finetuner": ONNX_TAG, **metadata}
        for key, value in entries.items():
            proto.metadata_props.add(key=key, value=json.dumps(value))
    return proto.SerializeToString()


def onnx_checked(model: torch.nn.Module, image_size: int, what: str, advice: str,
                 threads: int | None = None) -> tuple[bytes, object]:
    """``(ONNX bytes, ONNX Runtime session)`` of ``model`` (on the CPU, eval mode), made in
    memory; :class:`ExportError` ("``what`` gives logits up to ...; ``advice``") when its logits
    miss the PyTorch model's by more than :data:`PARITY_TOLERANCE`, as for a written export."""
    data, session, diff = _onnx_measured(model, image_size, None, threads)
    check_parity(diff, what, advice)
    return data, session


def _onnx_measured(model: torch.nn.Module, image_size: int, metadata: dict | None = None,
                   threads: int | None = None) -> tuple[bytes, object, float]:
    """(ONNX bytes, session, max |logit difference| from ``model``): every ONNX model this
    project makes, in memory or written, is measured here and checked by the caller."""
    data = onnx_bytes(model, image_size, metadata)
    session = onnx_session(data, threads)
    run = onnx_runner(session)
    return data, session, _parity_error(lambda x: run(x.numpy()), model, image_size)


def check_parity(diff: float, what: str, advice: str) -> None:
    """:class:`ExportError` unless ``diff`` (the parity error) is within tolerance."""
    if not diff <= PARITY_TOLERANCE:
        raise ExportError(f"{what} gives logits up to {diff:.3g} away from the checkpoint's "
                          f"(relative beyond ±1; tolerance {PARITY_TOLERANCE}); {advice}")


@contextlib.contextmanager
def _quiet_jit():
    """No FutureWarning that torch.jit is deprecated (torch points to torch.export; we know)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"`torch\.jit\.\w+` is deprecated", FutureWarning)
        yield


# --- the three formats --------------------------------------------------------------------------

def _exported_program(model: torch.nn.Module, image_size: int):
    batch = torch.export.Dim("batch", min=1)
    example = torch.rand(2, 3, image_size, image_size)
    with torch.no_grad():
        return torch.export.export(model.cpu().eval(), (example,), dynamic_shapes=({0: batch},))


def _traced(model: torch.nn.Module, image_size: int):
    with _quiet_jit(), torch.no_grad():
        return torch.jit.trace(model.cpu().eval(), torch.rand(1, 3, image_size, image_size))


def _parity_error(run, model: torch.nn.Module, image_size: int) -> float:
    """The parity error of ``run`` on a random batch of 3 (a batch size the export never saw):
    the largest ``|run(x) - model(x)| / max(1, |model(x)|)`` over the logits, absolute within
    ±1 and relative beyond.  float32 rounding grows with the logit: a confident ensemble's
    log-probabilities on noise reach -600, where an exact graph differs by 2e-3 (4e-6 of it)."""
    batch = torch.rand(3, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(batch).numpy()
        got = run(batch)
    got = got.numpy() if isinstance(got, torch.Tensor) else np.asarray(got)
    return float((np.abs(got - expected) / np.maximum(1.0, np.abs(expected))).max())


def _onnx(model: torch.nn.Module, size: int, metadata: dict, inside: str):
    data, _, diff = _onnx_measured(model, size, metadata)

    def save(tmp: Path) -> None:
        tmp.write_bytes(data)
    return diff, save


def _torchscript(model: torch.nn.Module, size: int, metadata: dict, inside: str):
    traced = _traced(model, size)
    diff = _parity_error(traced, model, size)

    def save(tmp: Path) -> None:
        torch.jit.save(traced, str(tmp), _extra_files={EXTRA_FILE: inside})
    return diff, save


def _pt2(model: torch.nn.Module, size: int, metadata: dict, inside: str):
    program = _exported_program(model, size)
    diff = _parity_error(program.module(), model, size)

    def save(tmp: Path) -> None:
        buffer = io.BytesIO()
        torch.export.save(program, buffer, extra_files={EXTRA_FILE: inside})
        tmp.write_bytes(buffer.getvalue())
    return diff, save


_EXPORTERS = {"onnx": _onnx, "torchscript": _torchscript, "pt2": _pt2}


def export_model(checkpoint: Checkpoint, out: str | Path, fmt: str,
                 temperature: float | None = None, checkpoint_sha256: str | None = None) -> dict:
    """Write ``checkpoint``'s model to ``out`` in ``fmt`` and its metadata to ``out.json``.

    Both are written atomically, after the export gave the checkpoint's logits within
    :data:`PARITY_TOLERANCE`; an older ``out.json`` is removed just before the model is replaced,
    so an interrupted export never leaves a model beside another export's metadata.  Returns
    the metadata, with ``parity_error`` added.
    """
    out = Path(out)
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")
    model, size = checkpoint.model.cpu().eval(), checkpoint.image_size
    metadata = describe(checkpoint, fmt, temperature, checkpoint_sha256)
    inside = json.dumps(metadata)
    try:
        diff, save = _EXPORTERS[fmt](model, size, metadata, inside)
    except Exception as error:  # the exporter's limits for some architecture
        raise ExportError(f"{out}: the {fmt} exporter failed for {checkpoint.arch}: "
                          f"{type(error).__name__}: {first_line(error)}") from None
    check_parity(diff, f"{out}: the {fmt} export", "nothing written")
    metadata["parity_error"] = diff
    sidecar = out.with_name(out.name + ".json")
    with atomic_path(out) as tmp, _quiet_jit():
        save(tmp)
        sidecar.unlink(missing_ok=True)  # just before the rename: never a stale pair
    write_json(sidecar, metadata)
    return metadata
