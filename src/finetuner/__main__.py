"""``python -m finetuner`` and the ``finetuner`` command: :mod:`finetuner.cli`, imported here so
that a Ctrl-C during its imports (torch and the rest: seconds) also ends with one line and exit
status 130, as one during the command does, not with Python's traceback."""
import sys


def run() -> int:
    try:
        from .cli import main
    except KeyboardInterrupt:
        print("finetuner: interrupted while starting; nothing was done", file=sys.stderr)
        return 130
    return main()


if __name__ == "__main__":
    raise SystemExit(run())
