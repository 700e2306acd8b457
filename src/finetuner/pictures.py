"""Drawing PNGs for a person to look at, what the evaluate stage's pictures and the audit's
gallery share: matplotlib's file-only backend (no display needed), class names whose glyphs
the font lacks drawn quietly, a save that never leaves half a file, and a gallery of images
with captions.

Class names with glyphs the font lacks (CJK: matplotlib's DejaVu Sans has none) draw as boxes
unless a CJK font is installed and listed in matplotlib's ``font.sans-serif``; as no such font
is shipped, matplotlib's "Glyph ... missing from font" warnings are silenced here."""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .io import atomic_path  # noqa: E402

__all__ = ["gallery_png", "missing_glyphs_quiet", "plt", "save_png"]


@contextmanager
def missing_glyphs_quiet():
    """Drawing labels whose glyphs the font lacks warns once per glyph and draw: not here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Glyph .* missing from", category=UserWarning)
        yield


def save_png(figure, path: str | Path) -> None:
    """``figure`` as a PNG at 100 dpi, written atomically; the figure is closed."""
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    plt.close(figure)


@missing_glyphs_quiet()
def gallery_png(path: str | Path, tiles: list[tuple[np.ndarray, str]], title: str,
                empty: str) -> int:
    """A grid of images (uint8 (H, W, 3), any width) with a caption each; ``empty``: the text
    shown when there are none.  Returns how many are shown.  Each row is as tall as its
    longest caption needs (constrained layout), so no caption runs into the image above."""
    columns = 4
    rows = max(1, int(np.ceil(len(tiles) / columns)))
    lines = max((caption.count("\n") + 1 for _, caption in tiles), default=1)
    figure, axes = plt.subplots(rows, columns, figsize=(3 * columns, (3.0 + 0.15 * lines) * rows),
                                squeeze=False, layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    for ax, (image, caption) in zip(axes.flat, tiles):
        ax.imshow(image)
        ax.set_title(caption, fontsize=8)
    if not tiles:
        axes.flat[0].text(0.5, 0.5, empty, ha="center", va="center")
    figure.suptitle(title)
    save_png(figure, path)
    return len(tiles)
