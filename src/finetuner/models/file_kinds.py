"""What a file is that is not a checkpoint, and why ``torch.load`` refused one.

Named so the error can say it (an ONNX model given where a checkpoint belongs, a TorchScript
archive, an image, a text file, a pickle with code in it) instead of showing torch's message.
Everything here reads bytes; nothing in a file is executed or unpickled.
"""
from __future__ import annotations

import re
import struct
import zipfile
from pathlib import Path


def load_failure(error: Exception) -> str:
    """Why ``torch.load`` refused a file that looks like a torch.save file or a pickle."""
    text = str(error).strip()
    if "unsupported global" in text.lower():
        return "it holds Python objects or code, not only weights" + _unsupported_global(text)
    if "weights only load failed" in text.lower():
        return ("a Python pickle with more than weights in it (objects, code, or a pickle "
                "protocol torch.save does not write)")
    if "invalid magic number" in text.lower():
        return "a Python pickle that torch.save did not write"
    if isinstance(error, EOFError) or any(w in text for w in ("central directory",
                                                               "PytorchStreamReader", "EOF")):
        return f"the file is truncated or corrupt: {text.splitlines()[0][:120]}"
    return text.splitlines()[0][:300] if text else "no detail"


# the first bytes of formats a checkpoint path may hold by mistake, and what to call them
MAGIC = ((b"\x89PNG\r\n\x1a\n", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"),
         (b"GIF8", "a GIF image"), (b"RIFF", "a RIFF file (WebP image, WAV, ...)"),
         (b"\x93NUMPY", "a NumPy .npy array"), (b"\x1f\x8b", "a gzip-compressed file"),
         (b"%PDF", "a PDF document"), (b"\x7fELF", "a program (ELF executable)"))
# what sets archives of other torch formats apart from a torch.save archive (data.pkl only)
ZIP_KINDS = (("archive_format", "a torch.export .pt2 archive (`finetuner export` writes these; "
                                "torch.export.load reads them)"),
             ("code/", "a TorchScript archive (torch.jit.save; `finetuner export` writes these; "
                       "torch.jit.load reads them)"))


def file_kind(path: Path) -> str | None:
    """What ``path`` is when it is certainly not a ``torch.save`` file (None: it may be one, or
    a pickle, and ``torch.load`` decides).  Reads the first bytes, a zip's table of contents, or
    for a file that may be ONNX its protobuf; runs nothing."""
    with open(path, "rb") as f:
        head = f.read(512)
    if head.startswith(b"PK"):
        return _zip_kind(path)
    if head.startswith(b"\x80"):  # a pickle: torch's legacy format, or not
        return None
    kind = next((name for magic, name in MAGIC if head.startswith(magic)), None)
    if kind:
        return kind
    if len(head) >= 10 and head[8:10] == b'{"' and struct.unpack("<Q", head[:8])[0] < 1e8:
        return ("a safetensors weights file, without the class names and preprocessing a "
                "checkpoint holds (as model.weights it can start a training)")
    if head[:1] == b"\x08" and _is_onnx(path):
        return ("an ONNX model (`finetuner export` writes these; predict and evaluate take "
                "it as MODEL, export does not)")
    text = _text(head)
    if text is not None:
        return f"a text file (it starts {text.strip().splitlines()[0][:40]!r})"
    return "not a torch.save file (unrecognised bytes: random data, or another format)"


def _text(head: bytes) -> str | None:
    """``head`` as text if it is UTF-8 of printable characters (a character cut at the end
    allowed), else None."""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as error:
        if error.start < len(head) - 3:
            return None
        text = head[:error.start].decode("utf-8")
    if not text.strip() or not all(c.isprintable() or c.isspace() for c in text):
        return None
    return text


def _zip_kind(path: Path) -> str | None:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return ("the file is truncated or corrupt: a zip archive (as torch.save writes) without "
                "its end, the table of contents (a copy cut short?)")
    inner = {name.split("/", 1)[1] if "/" in name else name for name in names}
    if "data.pkl" in inner and not any(n.startswith("code/") for n in inner):
        return None
    for marker, kind in ZIP_KINDS:
        if any(n == marker or n.startswith(marker) for n in inner):
            return kind
    shown = ", ".join(sorted(names)[:3]) or "nothing"
    return f"a zip archive that torch.save did not write (it holds {shown})"


def _is_onnx(path: Path) -> bool:
    import onnx
    try:
        proto = onnx.load_model_from_string(path.read_bytes())
    except Exception:  # google.protobuf DecodeError and the like
        return False
    return bool(proto.graph.node) and bool(proto.ir_version)


def _unsupported_global(text: str) -> str:
    """The refused global named in torch's message (e.g. ``posix.system``), if any."""
    found = re.search(r"unsupported (?:global:? )?GLOBAL ([\w.]+)", text, re.IGNORECASE)
    return f" (refused: {found.group(1)})" if found else ""
