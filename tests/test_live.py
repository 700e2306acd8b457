"""The finetune stage's live log (src/finetuner/live.py): DVCLive's files, one row per epoch."""
import json
import math
import subprocess

import pytest

from finetuner.live import LiveLog, LiveLogError


def _record(epoch, val=True):
    return {"epoch": epoch, "frozen_stages": 2, "lr": 0.01 / epoch, "train_loss": 1.0 / epoch,
            "train_acc": 0.5, "val_loss": 2.0 / epoch if val else math.nan,
            "val_acc": 0.4 if val else math.nan, "seconds": 1.0}


def _rows(folder, name):
    lines = (folder / "plots" / "metrics" / f"{name}.tsv").read_text().splitlines()
    return [line.split("\t") for line in lines[1:]]


def test_each_epoch_is_a_row_and_the_last_is_the_summary(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no git, no DVC here: DVCLive writes its files all the same
    live = LiveLog(tmp_path / "dvclive")
    for epoch in (1, 2, 3):
        live.epoch("finetune", _record(epoch))
    for epoch in (1, 2):
        live.epoch("refit", _record(epoch, val=False))
    live.close()
    folder = tmp_path / "dvclive"
    assert [(step, float(v)) for step, v in _rows(folder, "train/loss")] == [
        ("0", 1.0), ("1", 0.5), ("2", pytest.approx(1 / 3))]
    assert [float(v) for _, v in _rows(folder, "val/acc")] == [0.4] * 3
    assert [step for step, _ in _rows(folder, "refit/train/loss")] == ["3", "4"]
    assert not (folder / "plots" / "metrics" / "refit" / "val").exists()  # no val to log
    summary = json.loads((folder / "metrics.json").read_text())
    assert summary["train"]["loss"] == pytest.approx(1 / 3) and summary["refit"]["train"]["loss"] == 0.5
    assert summary["step"] == 4


def test_a_new_log_starts_afresh(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = LiveLog(tmp_path / "dvclive")
    for epoch in (1, 2, 3):
        first.epoch("finetune", _record(epoch))
    second = LiveLog(tmp_path / "dvclive")
    second.epoch("finetune", _record(1))
    assert _rows(tmp_path / "dvclive", "train/loss") == [["0", "1.0"]]


def test_a_git_repository_without_commits_is_a_clear_error(tmp_path, monkeypatch):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(LiveLogError, match="git commit"):
        LiveLog(tmp_path / "dvclive")
