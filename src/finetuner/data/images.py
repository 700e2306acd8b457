"""The one way to decode an image: verified, EXIF-rotated, converted to 8-bit RGB.

Decompression bombs are refused before decoding: an image may hold at most
``MAX_PIXELS`` pixels.
"""
from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# GIF is left out on purpose: in scraped sets it is mostly placeholders and animations.
ACCEPTED_FORMATS = ("JPEG", "MPO", "PNG", "BMP", "WEBP", "TIFF")
MAX_PIXELS = 64_000_000  # about 8000 x 8000; larger files are refused, not decoded
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


class ImageError(ValueError):
    """A file that is not a usable image; the message says why."""


def file_hash(path: str | Path) -> str:
    """sha256 of the file's bytes: identical files have identical hashes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") else max(float(array.max()), 1.0)
        image = Image.fromarray(np.clip(array * (255.0 / peak), 0, 255).astype(np.uint8), "L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return image.convert("RGB")


def decode_image(path: str | Path) -> Image.Image:
    """Decode ``path`` fully into an RGB image, EXIF orientation applied.

    Raises :class:`ImageError` with the reason for empty, truncated, corrupt, non-image and
    oversized files.
    """
    path = Path(path)
    if path.stat().st_size == 0:
        raise ImageError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                if image.format not in ACCEPTED_FORMATS:
                    raise ImageError(f"unsupported format {image.format}; accepted: "
                                     f"{', '.join(ACCEPTED_FORMATS)} (convert it to PNG to use it)")
                width, height = image.size
                if width * height > MAX_PIXELS:
                    raise ImageError(f"{width}x{height} pixels is over the limit of {MAX_PIXELS} "
                                     "(decompression bomb?)")
                image.load()  # full decode: truncated files fail here
                image = ImageOps.exif_transpose(image)
                return _to_rgb(image)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageError(f"refused as a decompression bomb: {error}") from None
    except UnidentifiedImageError:
        raise ImageError("not an image (unrecognised format)") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"cannot decode: {error}") from None
