"""The finetune stage's live log: each finished epoch goes to DVCLive as it happens.

Files, in DVCLive's layout and declared in ``dvc.yaml``: ``dvclive/metrics.json`` (the last
finished epoch: ``dvc exp show``'s workspace row reads it while a run trains) and
``dvclive/plots/metrics/<name>.tsv`` (one row per finished epoch, ``step`` counting them:
``dvc plots show``, the VS Code extension's live plots).  Metrics: ``train/loss``,
``train/acc``, ``val/loss``, ``val/acc``, ``lr`` (the head's), ``frozen_stages``; the refit on
train + val logs the same under ``refit/`` (no val: none is left), its steps after the
selection run's.  A value that is not a number (no val in the refit, a diverged loss) is left
out of its step.  A resumed run starts the log afresh and writes the epochs it resumed from
first, so the files always hold exactly the epochs finished.  These are logs, written as they
come; what later stages read (the checkpoint, ``metrics/eval.json``) is written atomically once.
"""
from __future__ import annotations

import math
from pathlib import Path

NAMES = {"train_loss": "train/loss", "train_acc": "train/acc", "val_loss": "val/loss",
         "val_acc": "val/acc", "lr": "lr", "frozen_stages": "frozen_stages"}


class LiveLogError(RuntimeError):
    """DVCLive cannot start here."""


class LiveLog:
    def __init__(self, folder: str | Path):
        from dvclive import Live
        try:  # dvc.yaml declares the files itself; no report, no experiment of DVCLive's own
            self.live = Live(str(folder), resume=False, report=None, save_dvc_exp=False,
                             dvcyaml=None)
        except Exception as error:
            if "empty git repo" not in str(error).lower():
                raise
            raise LiveLogError("DVCLive (the live log) needs at least one commit in this git "
                               "repository, and it has none: `git add -A && git commit` "
                               "first") from None

    def epoch(self, phase: str, record: dict) -> None:
        """One finished epoch of ``phase`` (``finetune`` or ``refit``)."""
        prefix = "" if phase == "finetune" else f"{phase}/"
        for key, name in NAMES.items():
            value = record[key]
            if not (isinstance(value, float) and math.isnan(value)):
                self.live.log_metric(prefix + name, value)
        self.live.next_step()

    def close(self) -> None:
        self.live.end()
