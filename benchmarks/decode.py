#!/usr/bin/env python
"""JPEG draft decoding (libjpeg's DCT scaling) against full decoding, on large photos.

    python benchmarks/decode.py [--repeats 5] [--side 292]

Upscales shared photos to 3, 6 and 12 megapixels (JPEG quality 90, written to a temporary
folder), then times ``finetuner.data.images.decode_image`` on each: full decoding, and with
``min_side`` = ``--side`` (the canvas side of Lite2 at 260 px: what preprocess asks for) and
``min_side=1`` (what split's validity check asks for).  Prints per size the median
milliseconds and the speedups as name=value lines.  Needs ../shared/datasets.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from shared_sets import shared_sets

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from finetuner.data.images import decode_image  # noqa: E402

GLASS = shared_sets()["trashnet"] / "glass"
SIZES = {3: (2000, 1500), 6: (3000, 2000), 12: (4000, 3000)}


def median_ms(path: Path, min_side: int | None, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        decode_image(path, min_side)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--side", type=int, default=292)
    args = parser.parse_args()
    sources = sorted(GLASS.glob("*.jpg"))[:3]
    if not sources:
        sys.exit(f"decode.py: no photos under {GLASS}")
    with tempfile.TemporaryDirectory() as folder:
        for mp, size in SIZES.items():
            full, draft, check = [], [], []
            for i, source in enumerate(sources):
                path = Path(folder) / f"{mp}mp_{i}.jpg"
                Image.open(source).convert("RGB").resize(size, Image.BICUBIC).save(path, quality=90)
                full.append(median_ms(path, None, args.repeats))
                draft.append(median_ms(path, args.side, args.repeats))
                check.append(median_ms(path, 1, args.repeats))
            f, d, c = (statistics.mean(x) for x in (full, draft, check))
            print(f"decode_{mp}mp_full_ms={f:.1f} decode_{mp}mp_draft_ms={d:.1f} "
                  f"decode_{mp}mp_check_ms={c:.1f} draft_speedup_{mp}mp={f / d:.2f} "
                  f"check_speedup_{mp}mp={f / c:.2f}")


if __name__ == "__main__":
    main()
