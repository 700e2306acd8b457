"""End to end through DVC: the project copied into a temp git repo with tiny data."""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, make_image_folder

pytestmark = pytest.mark.slow
COPY = ["dvc.yaml", "params.yaml", "stages", "src", ".dvcignore"]


def sh(cwd: Path, *args: str) -> str:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def ran_stages(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("project")
    for name in COPY:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, repo / name)
    make_image_folder(repo / "data" / "images", {"a": 8, "b": 8, "c": 8}, size=24)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["data"]["dir"] = "data/images"
    params["preprocess"].update(image_size=32, train_views=2, workers=0)
    params["model"]["weights"] = "none"
    params["train"].update(epochs=2, batch_size=8, schedule="constant")
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(repo, "git", "init", "-q")
    sh(repo, "git", "config", "user.email", "test@example.com")
    sh(repo, "git", "config", "user.name", "test")
    sh(repo, "dvc", "init", "-q")
    sh(repo, "dvc", "config", "core.analytics", "false")
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "project")
    return repo


def test_repro_then_an_lr_experiment_reruns_only_finetune_and_evaluate(project):
    first = sh(project, "dvc", "repro")
    assert {"split", "preprocess", "finetune", "evaluate"} <= ran_stages(first)
    metrics = json.loads((project / "metrics" / "eval.json").read_text())
    assert 0.0 <= metrics["accuracy"] <= 1.0 and "macro_f1" in metrics
    assert (project / "models" / "model.pt").stat().st_size > 0
    assert "Data and pipelines are up to date" in sh(project, "dvc", "status")
    sh(project, "git", "add", "-A")
    sh(project, "git", "commit", "-qm", "baseline")

    out = sh(project, "dvc", "exp", "run", "-S", "lr=0.001")
    assert ran_stages(out) == {"finetune", "evaluate"}
    with open(project / "metrics" / "train_history.csv") as f:
        assert {float(row["lr"]) for row in csv.DictReader(f)} == {0.001}
    diff = json.loads(sh(project, "dvc", "metrics", "diff", "--all", "--json"))
    assert {"accuracy", "macro_f1"} <= set(diff["metrics/eval.json"]), diff


def test_adding_an_image_reruns_split_and_after(project):
    make_image_folder(project / "data" / "extra", {"a": 1}, size=24, seed=9)
    shutil.move(project / "data" / "extra" / "a" / "img_000.png",
                project / "data" / "images" / "a" / "new.png")
    out = sh(project, "dvc", "repro")
    assert {"split", "preprocess", "finetune", "evaluate"} <= ran_stages(out)
