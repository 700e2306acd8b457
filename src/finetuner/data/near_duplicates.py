"""Near-duplicate search without model code: perceptual hashes, nearest neighbours in blocks,
and groups of images that must stay in one split.

* :func:`perceptual_hash`: imagehash's pHash (the sign of the 8 x 8 lowest frequencies of the
  DCT of a 32 x 32 grey thumbnail) as a 64-bit integer.  A re-encoded or resized copy differs
  from its original in a few bits; a copy cropped by a few percent, in more.
* :func:`nearest`: every row's ``k`` nearest rows under any distance computed a block of rows
  at a time, never ``N x N``: a block holds about :data:`BLOCK_DISTANCES` distances (16 MB),
  however many rows there are, so the search's memory does not grow with N beyond its
  ``N x k`` answer.
* :func:`hash_pairs`: pairs whose hashes differ in at most ``max_bits`` bits *and* that are
  among each other's ``guard - 1`` nearest hashes.  The guard keeps dense domains (every chest
  X-ray looks alike at 32 x 32 px) from chaining many images into one group; photos are far
  apart in hash space, so it rarely matters there (docs/audit.md has the measurements).
* :func:`groups`: connected components of the pairs (scipy).
"""
from __future__ import annotations

from typing import Callable

import imagehash
import numpy as np
from PIL import Image
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

HASH_SIDE = 32       # pHash reads a 32 x 32 thumbnail: decoding at that short side is enough
MAX_BITS = 10        # of 64: measured on the shared sets with resized + JPEG + cropped copies
GUARD = 3            # a pair's hashes are closer than each one's 3rd-nearest hash
BLOCK_DISTANCES = 1 << 22  # float32 distances computed at once


def perceptual_hash(image: Image.Image) -> int:
    """pHash of ``image`` as an unsigned 64-bit integer."""
    return int(str(imagehash.phash(image)), 16)


def nearest(count: int, k: int, distances: Callable[[slice], np.ndarray],
            block: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(distances, indices), each (count, k), of every row's ``k`` nearest other rows, nearest
    first; ``distances(rows)`` gives the (len(rows), count) distances of a block of rows to all
    rows (``block`` rows at a time; default: :data:`BLOCK_DISTANCES` / count).  Fewer than
    ``k`` other rows: the missing columns are inf and -1.  Ties go to the lower index, so the
    first ``j`` columns of a search for ``k`` are the search for ``j`` (identical images: which
    twins are named does not depend on ``k``)."""
    k_found = max(0, min(k, count - 1))
    block = block or max(1, BLOCK_DISTANCES // max(count, 1))
    dist = np.full((count, k), np.inf, dtype=np.float32)
    index = np.full((count, k), -1, dtype=np.int64)
    for start in range(0, count, block):
        rows = slice(start, min(count, start + block))
        d = np.asarray(distances(rows), dtype=np.float32)
        own = np.arange(rows.start, rows.stop)
        d[own - rows.start, own] = np.inf  # not its own neighbour
        if k_found == 0:
            continue
        part = _lowest(d, k_found)
        part_d = np.take_along_axis(d, part, 1)
        order = np.lexsort((part, part_d), axis=1)  # by distance, ties by index: deterministic
        index[rows, :k_found] = np.take_along_axis(part, order, 1)
        dist[rows, :k_found] = np.take_along_axis(part_d, order, 1)
    return dist, index


def _lowest(d: np.ndarray, k: int) -> np.ndarray:
    """Column indices of each row's ``k`` smallest values, in no order; of values equal to the
    k-th smallest, the lowest columns (argpartition alone picks among them as it happens)."""
    part = np.argpartition(d, k - 1, axis=1)[:, :k]
    kth = np.take_along_axis(d, part, 1).max(1, keepdims=True)
    below, tied = (d < kth).sum(1), (d == kth).sum(1)
    for row in np.flatnonzero(below + tied > k):  # more tied than places: lowest columns
        ties = np.flatnonzero(d[row] == kth[row])[:k - below[row]]
        part[row] = np.concatenate([np.flatnonzero(d[row] < kth[row]), ties])
    return part


def hamming(hashes: np.ndarray) -> Callable[[slice], np.ndarray]:
    """The block distance of :func:`nearest` for 64-bit hashes: differing bits."""
    hashes = np.asarray(hashes, dtype=np.uint64)
    return lambda rows: np.bitwise_count(hashes[rows, None] ^ hashes[None, :])


def hash_pairs(hashes, max_bits: int = MAX_BITS, guard: int = GUARD
               ) -> list[tuple[int, int, int]]:
    """(i, j, differing bits), i < j, of the hashes that nearly match (see the module doc):
    equal hashes always; otherwise at most ``max_bits`` apart and each closer to the other
    than to its ``guard``-th nearest hash."""
    hashes = np.asarray(hashes, dtype=np.uint64)
    dist, index = nearest(len(hashes), guard, hamming(hashes))
    reference = dist[:, guard - 1]  # distance to the guard-th nearest (inf when fewer)
    pairs = set()
    for i, j in zip(*np.nonzero(dist <= max_bits)):
        other, bits = int(index[i, j]), dist[i, j]
        if bits == 0 or (bits < reference[i] and bits < reference[other]):
            pairs.add((min(i, other), max(i, other), int(bits)))
    return sorted(pairs)


def groups(count: int, pairs) -> np.ndarray:
    """Group number of each of ``count`` items, the pairs' connected components."""
    pairs = list(pairs)
    rows = np.array([p[0] for p in pairs], dtype=np.int64)
    cols = np.array([p[1] for p in pairs], dtype=np.int64)
    graph = coo_matrix((np.ones(len(pairs)), (rows, cols)), shape=(count, count))
    return connected_components(graph, directed=False)[1]
