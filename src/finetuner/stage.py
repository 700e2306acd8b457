"""What every stage script does around its ``main``: check the argument count, turn the
project's expected errors into one line naming the file or param, stop quietly on Ctrl-C, and
stop when the DVC that runs it is killed."""
from __future__ import annotations

import inspect
import os
import signal
import sys
from pathlib import Path
from typing import Callable

from .params import ParamsError


INTERRUPTED = "interrupted; no output is half-written (each is written whole or not at all)"


def _one_line_ctrl_c(kind, value, traceback) -> None:
    """``sys.excepthook`` of a stage process: a Ctrl-C that lands before :func:`run_stage` runs
    (the seconds in which the script imports torch and the rest) is the one line a Ctrl-C
    during ``main`` gives, not 50 lines of import machinery; any other error keeps its
    traceback.  Python still exits as killed by SIGINT, so DVC or a shell sees the interrupt."""
    if issubclass(kind, KeyboardInterrupt):
        print(f"{Path(sys.argv[0]).stem}: {INTERRUPTED}", file=sys.stderr)
    else:
        sys.__excepthook__(kind, value, traceback)


sys.excepthook = _one_line_ctrl_c  # each stage script imports this module before any other

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def stop_with_parent() -> bool:
    """On Linux, when DVC runs this stage (``DVC_STAGE`` set), have it get a SIGTERM when its
    parent dies: after a `kill -9` of `dvc repro` its stage went on training unseen
    (reparented to init), wrote its model with DVC gone, and removed the state a rerun would
    have resumed from, or raced that rerun.  Now it ends as a killed stage does: every output
    whole or absent, the last finished epoch's state kept for the rerun.  (Not SIGINT: a
    shell script's background job ignores it.)  Not a script run by hand (`nohup python
    stages/...` outlives its shell as before), nor under torchrun (``LOCAL_RANK``), whose
    agent stops its workers.  True when set."""
    if (not sys.platform.startswith("linux") or "DVC_STAGE" not in os.environ
            or "LOCAL_RANK" in os.environ):
        return False
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) == 0
    except (OSError, AttributeError):  # no libc to ask: the stage runs as before
        return False


stop_with_parent()


def run_stage(name: str, main: Callable[..., None], usage: str,
              errors: tuple[type[Exception], ...] = (), after_ctrl_c: str = "") -> None:
    """``main(*sys.argv[1:])`` for ``stages/<name>.py``.

    ``errors``: the stage's own bad-input errors (params errors and missing files always count);
    they exit 1 with one line, ``<name>: error: ...``, and no traceback.  Ctrl-C exits 130
    with one line, :data:`INTERRUPTED`: outputs are written atomically, so none is half done
    (one renamed into place before the Ctrl-C stays whole; the message does not say "nothing
    was written", which a Ctrl-C after the last rename would make untrue), then ``after_ctrl_c``
    (what a rerun does), on a line of its own, not after a progress bar's last update.
    """
    args = sys.argv[1:]
    if len(args) != len(inspect.signature(main).parameters):
        sys.exit(f"usage: python stages/{name}.py {usage} (got {len(args)} arguments)")
    try:
        main(*args)
    except (ParamsError, FileNotFoundError, *errors) as error:
        sys.exit(f"{name}: error: {error}")
    except KeyboardInterrupt:
        print(f"\n{name}: {INTERRUPTED}{'; ' + after_ctrl_c if after_ctrl_c else ''}",
              file=sys.stderr)
        sys.exit(130)
