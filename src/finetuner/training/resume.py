"""Resuming a killed fine-tune where it stopped.

A :class:`ResumeStore` is one folder per *stage input key*, ``.finetuner/resume/<key>/`` under
the stage's working directory (the project root; git- and DVC-ignored).  The key is a hash of
everything the run depends on: its params, the prepared data (``meta.json`` and every file's
name, size and modification time), the package's source code and the stage script's.  Each
``fit()`` of the stage
has a *slot* in it (``finetune``, then ``refit``): its full training state, saved atomically at
the end of every epoch and once more, marked done, when the fit ends.

Invariants:

* A slot is read only under the same key, so its state fits the model the rerun builds; a run
  whose inputs changed finds no state and starts from epoch 1 (and removes other keys' states).
* Every write is a temp file renamed into place: a kill leaves the previous epoch's state.
* Only process 0 writes (under torchrun every rank reads the same file at the start).
* The state holds tensors, numbers, strings, lists and dicts only: it loads with
  ``weights_only=True``.  Its keys: :class:`EpochState`, then :class:`DoneState`.
* The stage removes the store once its checkpoint is written.
"""
from __future__ import annotations

import hashlib
import json
import pickle
import random
import shutil
import sys
import zipfile
from pathlib import Path
from typing import TypedDict

import numpy as np
import torch

from ..io import atomic_path

RESUME_ROOT = Path(".finetuner") / "resume"


def input_key(params: dict, prepared_dir: str | Path, scripts: tuple[Path, ...] = ()) -> str:
    """A hash of the params, the prepared data, the package's code and ``scripts`` (the stage
    script that builds the model and its training rows: see the module doc)."""
    digest = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode())
    prepared = Path(prepared_dir)
    for path in sorted(p for p in prepared.rglob("*") if p.is_file()):
        stat = path.stat()
        digest.update(f"{path.relative_to(prepared)} {stat.st_size} {stat.st_mtime_ns}".encode())
    digest.update((prepared / "meta.json").read_bytes())
    package = Path(__file__).resolve().parents[1]
    for source in sorted(package.rglob("*.py")):
        digest.update(source.relative_to(package).as_posix().encode())
        digest.update(source.read_bytes())
    for script in scripts:
        digest.update(Path(script).read_bytes())
    return digest.hexdigest()[:16]


def rng_state() -> dict:
    """Every random generator a training epoch may draw from (dropout, drop-path, loaders)."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss],
            "python": list(random.getstate()[1]), "python_gauss": random.getstate()[2]}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, position, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    random.setstate((3, tuple(state["python"]), state["python_gauss"]))


class EpochState(TypedDict):
    """What a slot holds after each epoch (``fit()`` writes and reads it): everything needed to
    go on after ``epochs_done`` epochs as if never stopped."""
    done: bool               # False
    epochs_done: int
    stopped_early: bool
    model: dict              # the weights (state_dict, on the CPU)
    optimizer: dict          # its state_dict: moments, and the groups the frozen depths gave it
    scaler: dict             # the fp16 gradient scaler's
    step: int                # optimizer steps taken (the lr schedule's position)
    history: list[dict]      # one row a finished epoch
    lrs: list[list[float]]   # each epoch's starting lr of each parameter group
    best: dict               # the best epoch so far: value, epoch, state (its weights), stale
    probe: dict | None       # LP-FT's starting probe: weight, bias, C, val_acc, val_loss
    seconds: float           # training time so far, earlier processes' included
    rng: dict                # rng_state(): every generator an epoch draws from


class DoneState(TypedDict):
    """What a slot holds once its fit ended: the result, returned at once by a rerun."""
    done: bool               # True
    final: dict              # the weights fit() returned (the best epoch's, or the last's)
    history: list[dict]
    best_epoch: int
    stopped_early: bool
    seconds: float
    lrs: list[list[float]]
    precision: str
    world_size: int
    probe: dict | None


# What torch.load raises for a file that is not a whole state it can read: a truncated or
# foreign zip (RuntimeError from its reader, BadZipFile), bytes that do not unpickle, or a
# type weights_only refuses (UnpicklingError), an early end (EOFError), a state of another shape
# (ValueError above).  Every rank reads the same bytes, so all of them decide alike.
UNREADABLE = (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, ValueError)


class ResumeSlot:
    """The saved state of one fit() of the stage."""

    def __init__(self, path: Path, writer: bool):
        self.path, self.writer = path, writer

    @property
    def name(self) -> str:
        return self.path.stem

    def load(self) -> EpochState | DoneState | None:
        """The saved state, or None: none saved, or one that cannot be read (damaged on disk,
        or written by another torch), which is said on stderr and removed: the run starts
        from epoch 1 rather than stop on a state it cannot use."""
        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
            if not isinstance(state, dict) or "done" not in state:
                raise ValueError("not a state this stage saved")
        except UNREADABLE as error:  # not an I/O error: that one is raised, the state kept
            if self.writer:  # one warning, from the process that owns the state
                why = (str(error).strip().splitlines() or [""])[0][:200]
                print(f"finetune: warning: the saved state {self.path} cannot be read "
                      f"({type(error).__name__}: {why}); starting from epoch 1", file=sys.stderr)
                self.path.unlink(missing_ok=True)
            return None
        return state

    def save(self, state: EpochState | DoneState) -> None:
        if not self.writer:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.path) as tmp:
            torch.save(state, tmp)


class ResumeStore:
    """The states of one stage run, under ``root/<key>``."""

    def __init__(self, key: str, root: str | Path = RESUME_ROOT, writer: bool = True):
        self.root, self.folder, self.writer = Path(root), Path(root) / key, writer

    def slot(self, name: str) -> ResumeSlot:
        return ResumeSlot(self.folder / f"{name}.pt", self.writer)

    def drop_others(self) -> None:
        """Remove the states of other keys: runs whose inputs have changed since."""
        if self.writer and self.root.is_dir():
            for other in self.root.iterdir():
                if other != self.folder:
                    shutil.rmtree(other, ignore_errors=True)

    def clear(self) -> None:
        """Remove this run's states (the stage has written its checkpoint)."""
        if self.writer:
            shutil.rmtree(self.folder, ignore_errors=True)
            if self.root.is_dir() and not any(self.root.iterdir()):
                self.root.rmdir()
