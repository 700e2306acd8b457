"""The one way to decode an image: verified, EXIF-rotated, converted to 8-bit RGB; and what
an entry of a folder is before anything opens it (:func:`entry_problem`).

Decompression bombs are refused before decoding: the size is read from the file's header and
an image may hold at most ``MAX_PIXELS`` pixels, so no large buffer is ever allocated for one.
Every failure is an :class:`ImageError` whose message says why in one line and never contains
the file's absolute path (skip reports must not depend on where the data folder lives).
"""
from __future__ import annotations

import hashlib
import math
import re
import stat
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# GIF is left out on purpose: in scraped sets it is mostly placeholders and animations.
ACCEPTED_FORMATS = ("JPEG", "MPO", "PNG", "BMP", "WEBP", "TIFF")
MAX_PIXELS = 64_000_000  # about 8000 x 8000; larger files are refused, not decoded
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def entry_problem(path: Path) -> str | None:
    """Why ``path`` is not a regular file to read (what it is instead), or None.  Only
    ``lstat``/``stat``: nothing is opened."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return "no such file or folder"
    except OSError as error:
        return f"cannot read: {error.strerror or type(error).__name__}"
    if stat.S_ISLNK(mode):
        try:
            mode = path.stat().st_mode
        except OSError:
            return "a broken symbolic link (its target does not exist)"
        if stat.S_ISDIR(mode):
            return "a link to a folder (not followed; copy or move its files in)"
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a folder"
    kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
    return f"{kind}, not an image file; nothing was read from it"


class ImageError(ValueError):
    """A file that is not a usable image; the message says why."""


def file_hash(path: str | Path) -> str:
    """sha256 of the file's bytes: identical files have identical hashes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _peak(array: np.ndarray, mode: str) -> float:
    """The value that maps to white: the bit depth's maximum, not the image's own maximum."""
    if mode.startswith("I;16"):
        return 65535.0
    top = float(array.max()) if array.size else 0.0
    for peak in ((1.0,) if mode == "F" else ()) + (255.0, 65535.0):
        if top <= peak:
            return peak
    return top


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        scaled = np.clip(array * (255.0 / _peak(array, image.mode)), 0, 255)
        image = Image.fromarray(np.rint(scaled).astype(np.uint8), "L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return image.convert("RGB")


def _reason(error: BaseException, path: Path) -> str:
    """One line about ``error``, without the file's path (it is reported beside the reason)."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    for form in {str(path), str(path.resolve()), path.as_posix()}:
        text = text.replace(f"'{form}'", "").replace(form, "")
    text = text.rstrip(": ").strip()
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _bomb(width: int | None, height: int | None, message: str = "") -> ImageError:
    if width is None:  # Pillow refused it inside Image.open: the count is in its message
        found = re.search(r"\((\d+) pixels\)", message)
        size = f"{int(found.group(1)):,} pixels" if found else "its size"
    else:
        size = f"{width}x{height} = {width * height:,} pixels"
    return ImageError(f"{size} is over the limit of {MAX_PIXELS:,} (a decompression bomb?); "
                      "refused without decoding")


def _check_header(image: Image.Image) -> None:
    """Refuse, from the header alone, a format we do not take and a size we cannot decode."""
    if image.format not in ACCEPTED_FORMATS:
        raise ImageError(f"unsupported format {image.format}; accepted: "
                         f"{', '.join(ACCEPTED_FORMATS)} (convert it to PNG to use it)")
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise _bomb(width, height)
    if width < 1 or height < 1:
        raise ImageError(f"{width}x{height} pixels: an image needs at least 1x1")


def _draft(image: Image.Image, min_side: int) -> None:
    """Have a JPEG decode at the smallest DCT scale whose short side is still >= ``min_side``."""
    width, height = image.size
    scale = min_side / min(width, height)
    if scale < 1:
        image.draft("RGB", (math.ceil(width * scale), math.ceil(height * scale)))


def decode_image(path: str | Path, min_side: int | None = None) -> Image.Image:
    """Decode ``path`` fully into an RGB image, EXIF orientation applied.

    ``min_side``: a JPEG is decoded at the smallest DCT scale (1/2, 1/4, 1/8: libjpeg's draft
    mode) whose short side is still >= ``min_side``, several times faster for large photos; the
    whole file is still read and entropy-decoded, so truncated and corrupt files fail as in a
    full decode.  Other formats, and JPEGs too small to shrink, decode at full size.

    Raises :class:`ImageError` with the reason for missing, unreadable, empty, truncated,
    corrupt, non-image, refused-format and oversized files.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as error:
        raise ImageError(f"cannot read: {_reason(error, path)}") from None
    if size == 0:
        raise ImageError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:  # reads the header only
                _check_header(image)
                if min_side and image.format in ("JPEG", "MPO"):
                    _draft(image, min_side)
                image.load()  # full decode: truncated and corrupt files fail here
                image = ImageOps.exif_transpose(image)
                return _to_rgb(image)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise _bomb(None, None, str(error)) from None
    except UnidentifiedImageError:
        raise ImageError("not an image (unrecognised format)") from None
    except (PermissionError, IsADirectoryError, FileNotFoundError) as error:
        raise ImageError(f"cannot read: {_reason(error, path)}") from None
    except MemoryError:
        raise ImageError("cannot decode: out of memory") from None
    except Exception as error:  # decoders raise OSError, SyntaxError, ValueError, struct.error...
        raise ImageError(f"cannot decode (truncated or corrupt?): {_reason(error, path)}") from None
