"""An ONNX file of ours as ONNX Runtime runs it: the format's names (our metadata tag, the
input and output), a CPU session, and a written file read back with its metadata checked.

What :mod:`finetuner.predictor` needs to run an export, without the exporters
(:mod:`finetuner.export` writes the files and imports this).  Invariant: :func:`read_onnx`
returns a session only for a file whose metadata is finetuner's, every key of its type, and
whose input size agrees with it; anything else is one :class:`ExportError` naming the file.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

ONNX_TAG = "finetuner-onnx/1"  # metadata_props["finetuner"] of our ONNX files (JSON-encoded)
INPUT_NAME, OUTPUT_NAME = "images", "logits"


class ExportError(ValueError):
    """An export that cannot be made, or a model file that is not one of ours: one line."""


def onnx_runner(session):
    """``session`` as a function: float32 NCHW batch (numpy) -> logits (numpy)."""
    return lambda x: session.run(None, {INPUT_NAME: x})[0]


def onnx_session(model: bytes | str | Path, threads: int | None = None):
    """An ONNX Runtime CPU session; ``threads`` (default: torch's thread count, so that timings
    compare with eager PyTorch) run each operator."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    # idle threads sleep instead of spinning: a spinning pool would take the CPU from whatever
    # runs next (eager PyTorch timed after it, other processes on a shared machine)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only: no warnings about unused initialisers
    source = str(model) if isinstance(model, Path) else model
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def first_line(error: Exception) -> str:
    text = str(error).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:300]


_META_TYPES = {"arch": str, "class_names": list, "image_size": int, "crop_pct": float,
               "temperature": (float, type(None))}


def read_onnx(path: str | Path, threads: int | None = None) -> tuple[object, dict]:
    """``(session, metadata)`` of an ONNX file written by :func:`finetuner.export.export_model`.

    Raises :class:`ExportError` naming ``path`` for a missing, empty, corrupt or foreign file
    (an ONNX model without our metadata), or one ONNX Runtime cannot load.
    """
    path = Path(path)
    data, proto = _parse_onnx(path)
    metadata = _onnx_metadata(path, proto)
    return _onnx_session(path, data, metadata["image_size"], threads), metadata


def _parse_onnx(path: Path) -> tuple[bytes, object]:
    """The file's bytes and its parsed model; a missing, empty or unparsable file is refused."""
    import onnx

    if path.is_dir():
        raise ExportError(f"{path}: is a folder, not an ONNX file")
    if not path.is_file():
        raise ExportError(f"{path}: no such ONNX file")
    data = path.read_bytes()
    if not data:
        raise ExportError(f"{path}: empty file (0 bytes); not an ONNX model")
    try:
        proto = onnx.load_model_from_string(data)
    except Exception as error:  # google.protobuf DecodeError and the like
        raise ExportError(f"{path}: not an ONNX model (it does not parse: "
                          f"{first_line(error)})") from None
    if not proto.graph.node or not proto.ir_version:
        raise ExportError(f"{path}: not an ONNX model (no graph in it)")
    return data, proto


def _onnx_metadata(path: Path, proto) -> dict:
    """finetuner's metadata in ``proto``, each key of its type (and any other JSON values)."""
    props = {p.key: p.value for p in proto.metadata_props}
    hint = "; `python -m finetuner export CHECKPOINT OUT.onnx` writes one"
    try:
        tag = json.loads(props["finetuner"])
    except (KeyError, ValueError):
        tag = None
    if tag != ONNX_TAG:
        raise ExportError(f"{path}: an ONNX model without finetuner's metadata (class names, "
                          f"preprocessing), so its output cannot be labelled{hint}")
    metadata = {}
    for key, kind in _META_TYPES.items():
        try:
            value = json.loads(props[key])
        except (KeyError, ValueError):
            raise ExportError(f"{path}: metadata {key!r} is missing or not JSON{hint}") from None
        if isinstance(value, int) and kind is float:
            value = float(value)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ExportError(f"{path}: metadata {key!r} has the wrong type{hint}")
        metadata[key] = value
    names = metadata["class_names"]
    if not names or not all(isinstance(c, str) for c in names):
        raise ExportError(f"{path}: metadata 'class_names' must be a non-empty list of names")
    if metadata["temperature"] is not None and not metadata["temperature"] > 0:
        raise ExportError(f"{path}: metadata 'temperature' must be positive")
    metadata.update({k: json.loads(v) for k, v in props.items()
                     if k not in metadata and k != "finetuner" and _is_json(v)})
    return metadata


def _onnx_session(path: Path, data: bytes, size: int, threads: int | None):
    """An ONNX Runtime session of ``data`` with one (N, 3, H, W) float input of ``size`` px."""
    try:
        session = onnx_session(data, threads)
    except Exception as error:
        raise ExportError(f"{path}: ONNX Runtime cannot load it: {first_line(error)}") from None
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if (len(inputs) != 1 or len(inputs[0].shape) != 4 or inputs[0].shape[1] != 3
            or inputs[0].type != "tensor(float)" or len(outputs) != 1):
        raise ExportError(f"{path}: expected one float input (N, 3, H, W) and one output; "
                          f"it has inputs {[(i.name, i.shape) for i in inputs]}")
    if any(isinstance(side, int) and side != size for side in inputs[0].shape[2:]):
        raise ExportError(f"{path}: its input is {inputs[0].shape[2:]} px but its metadata "
                          f"says image_size {size}; the file was changed after export")
    return session


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True
