"""Rows of the prepared arrays, read batch by batch: training never holds a split in memory.

:class:`FileRows` reads a ``.npy`` file's rows with ``os.preadv``.  The bytes come through the
operating system's page cache, which every process reading the file shares (torchrun ranks
included), but they are not mapped into the process: a memory map's pages count in every
reader's resident memory once touched, so reading a 10 GB split through ``np.load(mmap_mode=
"r")`` would show 10 GB of RSS per process and compete with it for RAM.  Rows are read in
sorted order and runs of neighbours in one call; a batch of 32 random 224-pixel rows is 32
reads of 150 KB each, fast from the page cache and from an SSD alike.

Every kind of rows answers ``len``, ``row_shape`` and ``take(index) -> uint8 tensor``:
:class:`ArrayRows` (an array already in memory: tests, benchmarks), :class:`FileRows`,
:class:`ConcatRows` (train + val for the refit, val rows repeated), :class:`CentreRows`
(a canvas's evaluation view) and
:class:`finetuner.data.augment.AugmentedRows` (a fresh random view of each canvas per epoch).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch


def as_index(index: torch.Tensor | np.ndarray | slice | list, length: int) -> np.ndarray:
    """Row numbers as an int64 numpy array (a slice is taken from ``range(length)``)."""
    if isinstance(index, slice):
        return np.arange(length, dtype=np.int64)[index]
    if isinstance(index, torch.Tensor):
        return index.cpu().numpy().astype(np.int64, copy=False).reshape(-1)
    return np.asarray(index, dtype=np.int64).reshape(-1)


class Rows:
    """Fixed rows (N, *row_shape) of uint8; ``take`` returns the asked rows in the asked order."""
    row_shape: tuple[int, ...]
    fixed = True  # the same bytes every epoch (a frozen-feature cache may keep their outputs)

    def __len__(self) -> int:
        raise NotImplementedError

    def take(self, index, pin: bool = False) -> torch.Tensor:
        raise NotImplementedError

    def set_epoch(self, epoch: int) -> None:
        """What changes per epoch (fresh augmentation) follows ``epoch``; fixed rows ignore it."""

    def _out(self, n: int, pin: bool) -> torch.Tensor:
        return torch.empty((n,) + tuple(self.row_shape), dtype=torch.uint8, pin_memory=pin)


class ArrayRows(Rows):
    """Rows of a uint8 array or tensor already in memory."""

    def __init__(self, array: np.ndarray | torch.Tensor):
        self.array = array if isinstance(array, torch.Tensor) else torch.from_numpy(
            np.ascontiguousarray(array))
        self.row_shape = tuple(self.array.shape[1:])

    def __len__(self) -> int:
        return len(self.array)

    def take(self, index, pin: bool = False) -> torch.Tensor:
        rows = torch.from_numpy(as_index(index, len(self)))
        if not pin:
            return self.array[rows]
        return torch.index_select(self.array, 0, rows, out=self._out(len(rows), True))


class FileRows(Rows):
    """Rows of a C-ordered uint8 ``.npy`` file, read with ``preadv`` (see the module's doc)."""

    def __init__(self, path: str | Path):
        self.path, self._fd, self._pid = Path(path), None, None
        try:
            header = np.load(self.path, mmap_mode="r")  # maps the file, reads only its header
        except (OSError, ValueError) as error:
            raise OSError(f"{self.path}: cannot be read as an array ({error}); rerun the "
                          "preprocess stage") from None
        shape, dtype, self.offset = header.shape, header.dtype, header.offset
        if not header.flags.c_contiguous or dtype != np.uint8 or len(shape) < 1:
            raise ValueError(f"{self.path}: expected a C-ordered uint8 array, found {dtype} "
                             f"{shape}")
        del header
        self.length, self.row_shape = shape[0], tuple(shape[1:])
        self.row_bytes = int(np.prod(self.row_shape, dtype=np.int64))

    def __len__(self) -> int:
        return self.length

    def __getstate__(self) -> dict:  # a DataLoader worker opens its own descriptor
        return {**self.__dict__, "_fd": None, "_pid": None}

    def __del__(self):
        if getattr(self, "_fd", None) is not None and self._pid == os.getpid():
            os.close(self._fd)

    def _descriptor(self) -> int:
        if self._fd is None or self._pid != os.getpid():
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        return self._fd

    def take(self, index, pin: bool = False) -> torch.Tensor:
        rows = as_index(index, len(self))
        if len(rows) and (rows.min() < 0 or rows.max() >= self.length):
            raise IndexError(f"{self.path}: row out of range 0..{self.length - 1}")
        out = self._out(len(rows), pin)
        flat = out.numpy().reshape(len(rows), self.row_bytes)
        order = np.argsort(rows, kind="stable")
        fd, start = self._descriptor(), 0
        while start < len(order):  # one read per run of consecutive rows
            stop = start + 1
            while stop < len(order) and rows[order[stop]] == rows[order[stop - 1]] + 1:
                stop += 1
            buffers = [memoryview(flat[i]) for i in order[start:stop]]
            offset = self.offset + int(rows[order[start]]) * self.row_bytes
            if os.preadv(fd, buffers, offset) != self.row_bytes * (stop - start):
                raise OSError(f"{self.path}: file shorter than its header says (truncated?)")
            start = stop
        return out


class ConcatRows(Rows):
    """Several rows one after another, part ``p``'s every row repeated ``repeats[p]`` times:
    train views + val rows, each val row standing for all of an image's views."""

    def __init__(self, parts: list[Rows], repeats: list[int]):
        shapes = {tuple(p.row_shape) for p in parts}
        if len(shapes) != 1:
            raise ValueError(f"rows of different shapes cannot be joined: {sorted(shapes)}")
        self.parts, self.repeats, self.row_shape = parts, repeats, shapes.pop()
        self.ends = np.cumsum([len(p) * r for p, r in zip(parts, repeats)])
        self.fixed = all(p.fixed for p in parts)

    def __len__(self) -> int:
        return int(self.ends[-1]) if len(self.ends) else 0

    def set_epoch(self, epoch: int) -> None:
        for part in self.parts:
            part.set_epoch(epoch)

    def take(self, index, pin: bool = False) -> torch.Tensor:
        rows = as_index(index, len(self))
        out = self._out(len(rows), pin)
        which = np.searchsorted(self.ends, rows, side="right")
        starts = np.concatenate([[0], self.ends[:-1]])
        for p, (part, repeat) in enumerate(zip(self.parts, self.repeats)):
            here = np.flatnonzero(which == p)
            if len(here):
                out[torch.from_numpy(here)] = part.take((rows[here] - starts[p]) // repeat)
        return out


class CentreRows(Rows):
    """The centre ``size`` x ``size`` of each of ``source``'s rows: a stored canvas's
    evaluation view (the offset rounds as torchvision's ``CenterCrop``)."""

    def __init__(self, source: Rows, size: int):
        self.source, self.size = source, size
        self.row_shape = (size, size) + tuple(source.row_shape[2:])
        self.top = int(round((source.row_shape[0] - size) / 2.0))
        self.left = int(round((source.row_shape[1] - size) / 2.0))

    def __len__(self) -> int:
        return len(self.source)

    def take(self, index, pin: bool = False) -> torch.Tensor:
        rows = self.source.take(index)[:, self.top:self.top + self.size,
                                       self.left:self.left + self.size]
        if not pin:
            return rows.contiguous()
        out = self._out(len(rows), True)
        out.copy_(rows)
        return out


class RangeRows(Rows):
    """Rows ``start`` .. ``stop``-1 of ``source`` (one rank's share of val)."""

    def __init__(self, source: Rows, start: int, stop: int):
        self.source, self.start, self.stop = source, start, stop
        self.row_shape, self.fixed = source.row_shape, source.fixed

    def __len__(self) -> int:
        return self.stop - self.start

    def set_epoch(self, epoch: int) -> None:
        self.source.set_epoch(epoch)

    def take(self, index, pin: bool = False) -> torch.Tensor:
        return self.source.take(as_index(index, len(self)) + self.start, pin)


class RowWriter:
    """A new C-ordered uint8 ``.npy`` file of ``shape`` whose rows are written with ``pwrite``:
    like :class:`FileRows`, nothing is mapped, so the writer's memory does not grow with it."""

    def __init__(self, path: str | Path, shape: tuple[int, ...]):
        self.path = Path(path)
        header = np.lib.format.open_memmap(self.path, mode="w+", dtype=np.uint8, shape=shape)
        self.offset, self.row_bytes = header.offset, int(np.prod(shape[1:], dtype=np.int64))
        del header
        self.fd = os.open(self.path, os.O_WRONLY)

    def write(self, start: int, rows: np.ndarray) -> None:
        data = memoryview(np.ascontiguousarray(rows, dtype=np.uint8)).cast("B")
        offset = self.offset + start * self.row_bytes
        while len(data):
            written = os.pwrite(self.fd, data, offset)
            data, offset = data[written:], offset + written

    def close(self) -> None:
        os.close(self.fd)
