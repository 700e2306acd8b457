"""``python -m finetuner``: the command line of :mod:`finetuner.cli`."""
from .cli import main

raise SystemExit(main())
