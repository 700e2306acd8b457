"""What every stage script does around its ``main``: check the argument count, turn the
project's expected errors into one line naming the file or param, and stop quietly on Ctrl-C."""
from __future__ import annotations

import inspect
import sys
from typing import Callable

from .params import ParamsError


INTERRUPTED = "interrupted; no output is half-written (each is written whole or not at all)"


def run_stage(name: str, main: Callable[..., None], usage: str,
              errors: tuple[type[Exception], ...] = ()) -> None:
    """``main(*sys.argv[1:])`` for ``stages/<name>.py``.

    ``errors``: the stage's own bad-input errors (params errors and missing files always count);
    they exit 1 with one line, ``<name>: error: ...``, and no traceback.  Ctrl-C exits 130
    with one line, :data:`INTERRUPTED`: outputs are written atomically, so none is half done
    (one renamed into place before the Ctrl-C stays whole; the message does not say "nothing
    was written", which a Ctrl-C after the last rename would make untrue).
    """
    args = sys.argv[1:]
    if len(args) != len(inspect.signature(main).parameters):
        sys.exit(f"usage: python stages/{name}.py {usage} (got {len(args)} arguments)")
    try:
        main(*args)
    except (ParamsError, FileNotFoundError, *errors) as error:
        sys.exit(f"{name}: error: {error}")
    except KeyboardInterrupt:
        print(f"{name}: {INTERRUPTED}", file=sys.stderr)
        sys.exit(130)
