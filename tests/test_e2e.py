"""End to end through DVC: the project copied into a temp git repo with tiny data."""
from __future__ import annotations

import configparser
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, copy_project, make_image_folder

pytestmark = pytest.mark.slow


def sh(cwd: Path, *args: str) -> str:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def ran_stages(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}


def cache_type() -> str:
    config = configparser.ConfigParser()
    config.read(ROOT / ".dvc" / "config")
    return config.get("cache", "type")


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    repo = copy_project(tmp_path_factory.mktemp("project"))
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
    sh(repo, "dvc", "config", "cache.type", cache_type())  # the project's link type
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "project")
    return repo


def test_repro_then_an_lr_experiment_reruns_only_finetune_and_evaluate(project):
    first = sh(project, "dvc", "repro")
    assert {"split", "preprocess", "audit", "finetune", "evaluate"} <= ran_stages(first)
    metrics = json.loads((project / "metrics" / "eval.json").read_text())
    assert 0.0 <= metrics["accuracy"] <= 1.0 and "macro_f1" in metrics
    assert metrics["near_duplicates"]["grouping"] == "off"  # the demo preset's default
    with open(project / "data" / "audit" / "suspects.csv") as f:  # the audit beside the run
        assert csv.DictReader(f).fieldnames[:7] == ["path", "issue", "given", "suggested",
                                                    "other", "split", "score"]
    audit = json.loads((project / "metrics" / "audit.json").read_text())
    assert audit["images"] == 24 and {"label", "near_duplicate", "outlier"} <= set(audit)
    assert (project / "metrics" / "audit.png").stat().st_size > 0
    assert (project / "models" / "model.pt").stat().st_size > 0
    # outputs are hard links into DVC's cache, not second copies (docs/scale.md)
    assert (project / "models" / "model.pt").stat().st_nlink == 2
    assert (project / "data" / "prepared" / "train_images.npy").stat().st_nlink == 2
    assert "Data and pipelines are up to date" in sh(project, "dvc", "status")
    sh(project, "git", "add", "-A")
    sh(project, "git", "commit", "-qm", "baseline")

    out = sh(project, "dvc", "exp", "run", "-S", "lr=0.001")
    assert ran_stages(out) == {"finetune", "evaluate"}
    with open(project / "dvclive" / "plots" / "metrics" / "lr.tsv") as f:  # DVCLive's log
        assert [float(row["lr"]) for row in csv.DictReader(f, delimiter="\t")] == [0.001] * 2
    shown = sh(project, "dvc", "exp", "show", "--json")  # DVC reads the live metrics
    assert '"dvclive/metrics.json"' in shown and '"step": 1' in shown
    accuracy = json.loads(sh(project, "dvc", "plots", "show", "--json"))["data"]["accuracy"]
    points = accuracy[0]["content"]["data"]["values"]  # DVC's plot of DVCLive's files
    assert sorted((p["filename"], p["step"]) for p in points) == [
        ("train/acc.tsv", "0"), ("train/acc.tsv", "1"), ("val/acc.tsv", "0"), ("val/acc.tsv", "1")]
    diff = json.loads(sh(project, "dvc", "metrics", "diff", "--all", "--json"))
    assert {"accuracy", "macro_f1"} <= set(diff["metrics/eval.json"]), diff
    assert "label" in json.loads(sh(project, "dvc", "metrics", "show", "--json"))[""][
        "data"]["metrics/audit.json"]["data"]  # dvc exp show has the audit's counts

    out = sh(project, "dvc", "exp", "run", "-S", "freeze_depth=2")
    assert ran_stages(out) == {"finetune", "evaluate"}


def test_another_arch_with_the_same_input_size_skips_preprocess(project):
    out = sh(project, "dvc", "exp", "run", "-S", "model.arch=resnet18")
    assert ran_stages(out) == {"input_spec", "audit", "finetune", "evaluate"}
    assert "Stage 'preprocess' didn't change, skipping" in out
    out = sh(project, "dvc", "exp", "run", "-S", "preprocess.image_size=40")
    assert {"input_spec", "preprocess", "finetune", "evaluate"} <= ran_stages(out)


def test_adding_an_image_reruns_split_and_after(project):
    make_image_folder(project / "data" / "extra", {"a": 1}, size=24, seed=9)
    shutil.move(project / "data" / "extra" / "a" / "img_000.png",
                project / "data" / "images" / "a" / "new.png")
    out = sh(project, "dvc", "repro")
    assert {"split", "preprocess", "finetune", "evaluate"} <= ran_stages(out)


# ---- a team: a shared DVC remote, a teammate's clone, experiments pushed and pulled, a queue

def commit_all(repo: Path, message: str) -> None:
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", message, "--allow-empty")


def dvc_json(repo: Path, *args: str):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    done = subprocess.run(["dvc", *args, "--json"], cwd=repo, env=env, capture_output=True,
                          text=True)
    assert done.returncode == 0, f"dvc {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return json.loads(done.stdout)


def experiments(shown) -> dict[str, dict]:
    """name -> {"lr": ..., "accuracy": ...} of every row of `dvc exp show --json`."""
    rows = {}

    def walk(node):
        if isinstance(node, list):
            for item in node:
                walk(item)
        elif isinstance(node, dict):
            data = node.get("data")
            if isinstance(data, dict) and isinstance(data.get("params"), dict) and node.get("name"):
                params = data["params"].get("params.yaml", {}).get("data", {})
                metrics = (data.get("metrics") or {}).get("metrics/eval.json", {}).get("data", {})
                rows[node["name"]] = {"lr": params.get("lr"), "accuracy": metrics.get("accuracy")}
            for value in node.values():
                if isinstance(value, (list, dict)):
                    walk(value)

    walk(shown)
    return rows


def test_a_teammate_clones_pulls_and_has_nothing_to_recompute(project, tmp_path):
    sh(project, "dvc", "repro")
    team, store, clone = tmp_path / "team.git", tmp_path / "dvc-store", tmp_path / "clone"
    sh(tmp_path, "git", "init", "-q", "--bare", str(team))
    sh(project, "dvc", "remote", "add", "-d", "shared", str(store))
    commit_all(project, "results, and the team's DVC remote")
    branch = sh(project, "git", "rev-parse", "--abbrev-ref", "HEAD").strip()
    sh(project, "git", "remote", "add", "origin", str(team))
    sh(project, "git", "push", "-q", "origin", f"HEAD:refs/heads/{branch}")
    sh(project, "dvc", "push")

    sh(tmp_path, "git", "clone", "-q", "--branch", branch, str(team), str(clone))
    assert not (clone / "models" / "model.pt").exists()
    sh(clone, "dvc", "pull")
    for path in ("models/model.pt", "data/prepared", "data/split", "metrics/eval.json"):
        assert (clone / path).exists(), path
    assert (clone / "models" / "model.pt").read_bytes() == (project / "models" / "model.pt").read_bytes()
    assert "Data and pipelines are up to date" in sh(clone, "dvc", "status")
    assert ran_stages(sh(clone, "dvc", "repro")) == set()

    # an experiment travels the same way: its commit to git, its outputs to the DVC remote
    sh(project, "dvc", "exp", "run", "-n", "alice-lr", "-S", "lr=0.005")
    sh(project, "dvc", "exp", "push", "origin", "alice-lr")
    sh(clone, "dvc", "exp", "pull", "origin", "alice-lr")
    assert experiments(dvc_json(clone, "exp", "show"))["alice-lr"]["lr"] == 0.005
    sh(clone, "dvc", "exp", "apply", "alice-lr")
    assert "Data and pipelines are up to date" in sh(clone, "dvc", "status")


def test_a_queued_sweep_runs_two_experiments_in_parallel(project):
    sh(project, "dvc", "repro")
    commit_all(project, "before the sweep")  # queued runs start from a commit
    sh(project, "dvc", "exp", "run", "--queue", "-S", "lr=0.003,0.004")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
               OMP_NUM_THREADS="1")  # two workers on the cores: one thread each
    subprocess.run(["dvc", "queue", "start", "-j", "2"], cwd=project, env=env, check=True,
                   capture_output=True)
    deadline = time.monotonic() + 900
    try:
        while True:
            status = sh(project, "dvc", "queue", "status")
            if not any(word in status for word in ("Queued", "Running")):
                break
            assert time.monotonic() < deadline, f"queue still busy after 900 s:\n{status}"
            time.sleep(3)
    finally:
        subprocess.run(["dvc", "queue", "stop"], cwd=project, env=env, capture_output=True)
    assert "Failed" not in status, status
    rows = experiments(dvc_json(project, "exp", "show"))
    swept = {row["lr"]: name for name, row in rows.items() if row["lr"] in (0.003, 0.004)}
    assert set(swept) == {0.003, 0.004}, rows
    assert all(rows[name]["accuracy"] is not None for name in swept.values()), rows
    log = sh(project, "dvc", "queue", "logs", swept[0.003])
    assert "1 thread(s) per process" in log, log


def test_photos_preset_keeps_every_photo_for_training_and_scores_a_separate_folder(project):
    """The real-photo recipe through DVC: test_fraction 0, an external labelled test folder,
    the ensemble of probes fitted on train + val with C by cross-validation, its out-of-fold
    score in the live log (a probe has no epochs, but the log DVC declares must exist)."""
    make_image_folder(project / "data" / "holdout", {"a": 3, "b": 3, "c": 2}, size=24, seed=5)
    out = sh(project, "dvc", "exp", "run", "-S", "preset=photos", "-S", "data.test_fraction=0",
             "-S", "evaluate.test_dir=data/holdout", "-S", "preprocess.image_size=32",
             "-S", "train.epochs=2")
    assert {"split", "preprocess", "finetune", "evaluate"} <= ran_stages(out)
    with open(project / "data" / "split" / "test.csv") as f:
        assert list(csv.DictReader(f)) == []
    split = {name: sum(1 for _ in open(project / "data" / "split" / f"{name}.csv")) - 1
             for name in ("train", "val")}
    metrics = json.loads((project / "metrics" / "eval.json").read_text())
    assert metrics["evaluated_on"] == "folder data/holdout" and metrics["test_images"] == 8
    assert metrics["strategy"] == "probe"
    assert metrics["trained_images"] == split["train"] + split["val"]
    cv = metrics["cross_validation"]
    assert cv["selection"].startswith("5-fold cross-validation") and len(cv["C"]) == 3
    live = project / "dvclive" / "plots" / "metrics"
    rows = (live / "val" / "acc.tsv").read_text().splitlines()
    assert len(rows) == 1 + 1 and float(rows[1].split("\t")[-1]) == pytest.approx(cv["cv_acc"])
    assert not (live / "train" / "loss.tsv").exists()  # no gradient step, no training loss
