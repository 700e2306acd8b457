"""End to end through DVC: the project copied into a temp git repo with tiny data."""
from __future__ import annotations

import csv
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import (ROOT, copy_project, edit_yaml, flat, make_image_folder,
                      offline_plots_page, tiny_conf)

# one pytest-xdist worker runs the module, in order (--dist loadfile): its tests go on from one
# another's state
pytestmark = pytest.mark.slow


def sh(cwd: Path, *args: str, env: dict | None = None) -> str:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
               **(env or {}))
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def readme_views() -> list[list[str]]:
    """The README's `dvc exp show --drop ...` commands, as argument lists."""
    lines = (ROOT / "README.md").read_text().splitlines()
    return [shlex.split(line) for line in lines if line.startswith("dvc exp show --drop")]


def ran_stages(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """The project in a temp git repo with tiny images: conf/ made tiny (every `dvc exp run -S`
    composes params.yaml from it) and the project's own .dvc/config (its link type, Hydra
    composition, the offline plots template), and the team's DVC remote, a local folder, from
    the start (every experiment's commit names it)."""
    repo = copy_project(tmp_path_factory.mktemp("project"))
    make_image_folder(repo / "data" / "my photos", {"a": 8, "b": 8, "c": 8}, size=24)
    tiny_conf(repo)
    sh(repo, "git", "init", "-q")
    sh(repo, "git", "config", "user.email", "test@example.com")
    sh(repo, "git", "config", "user.name", "test")
    sh(repo, "dvc", "init", "-q")
    shutil.copy(ROOT / ".dvc" / "config", repo / ".dvc" / "config")
    sh(repo, "dvc", "remote", "add", "-d", "shared", str(tmp_path_factory.mktemp("dvc-store")))
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "project")
    return repo


def commit_all(repo: Path, message: str) -> None:
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", message, "--allow-empty")


def dvc_json(repo: Path, *args: str):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    done = subprocess.run(["dvc", *args, "--json"], cwd=repo, env=env, capture_output=True,
                          text=True)
    assert done.returncode == 0, f"dvc {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return json.loads(done.stdout)


def rows_of(shown) -> dict[str, dict]:
    """name -> the ``data`` (params, metrics, ...) of every row of `dvc exp show --json`."""
    rows = {}

    def walk(node):
        if isinstance(node, list):
            for item in node:
                walk(item)
        elif isinstance(node, dict):
            data = node.get("data")
            if isinstance(data, dict) and isinstance(data.get("params"), dict) and node.get("name"):
                rows[node["name"]] = data
            for value in node.values():
                if isinstance(value, (list, dict)):
                    walk(value)

    walk(shown)
    return rows


def params_of(shown) -> dict[str, dict]:
    """name -> the params.yaml values of every row of `dvc exp show --json`."""
    return {name: data["params"].get("params.yaml", {}).get("data", {})
            for name, data in rows_of(shown).items()}


def experiments(shown) -> dict[str, dict]:
    """name -> {"lr": ..., "accuracy": ...} of every row of `dvc exp show --json`."""
    return {name: {"lr": data["params"].get("params.yaml", {}).get("data", {}).get("lr"),
                   "accuracy": (data.get("metrics") or {}).get("metrics/eval.json", {})
                   .get("data", {}).get("accuracy")}
            for name, data in rows_of(shown).items()}


FINISHED_REF = re.compile(r"refs/exps/[0-9a-f]{2}/[0-9a-f]{38}/[^/]+")  # baseline sha, name


def experiment_refs(repo: Path) -> set[str]:
    """The git refs of finished experiments. Not the others under refs/exps/: queued and failed
    ones live under celery/, and while a worker starts, DVC sets exec/ refs in this repository
    for a moment (seen under load: they made a sweep look done before its second result came
    back, and `dvc exp apply` of a name `dvc exp show` listed as running then failed)."""
    refs = sh(repo, "git", "for-each-ref", "--format=%(refname)", "refs/exps/").split()
    return {ref for ref in refs if FINISHED_REF.fullmatch(ref)}


def run_the_queue(repo: Path, count: int) -> None:
    """`dvc queue start -j 2` (one thread a worker), until ``count`` more experiments are done;
    then the workers stopped."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
               OMP_NUM_THREADS="1")  # two workers on the cores: one thread each
    before = experiment_refs(repo)
    # not captured: the workers `queue start` leaves running inherit its output, and reading a
    # pipe they hold open would wait for the last of them to exit, past the deadline below
    # (seen once: a worker that stayed idle with the sweep queued, the test stuck for good)
    subprocess.run(["dvc", "queue", "start", "-j", "2"], cwd=repo, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    try:  # git's refs say cheaply when all are done (or one failed); `dvc queue status` costs
        while (len(experiment_refs(repo) - before) < count  # a second of CPU a call
               and not sh(repo, "git", "for-each-ref", "refs/exps/celery/failed").strip()):
            assert time.monotonic() < deadline, sh(repo, "dvc", "queue", "status")
            time.sleep(1)
    finally:
        subprocess.run(["dvc", "queue", "stop"], cwd=repo, env=env, capture_output=True)
    status = sh(repo, "dvc", "queue", "status")
    assert "Failed" not in status, status


def queue_log(repo: Path, name: str, last_stage: str) -> str:
    """`dvc queue logs NAME` once it shows ``last_stage`` run (or after 60 s): the worker's log
    file can trail the experiment's end (seen under load: a log that stopped at finetune, of a
    run whose evaluate had finished)."""
    deadline = time.monotonic() + 60
    while True:
        log = sh(repo, "dvc", "queue", "logs", name)
        if last_stage in ran_stages(log) or time.monotonic() > deadline:
            return log
        time.sleep(1)


def named(repo: Path, lr: float) -> str:
    """The name of the first test's queued experiment that ran with ``lr`` (DVC names them)."""
    rows = experiments(dvc_json(repo, "exp", "show", "--all-commits"))
    found = next((name for name, row in rows.items() if row["lr"] == lr), None)
    assert found, f"no experiment ran with lr {lr}: the module's first test queues it ({rows})"
    return found


def test_repro_then_a_queued_sweep_of_finetune_params_reruns_only_finetune_and_evaluate(project):
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
    # outputs are hard links into DVC's cache, not second copies (docs/scale.md): the project's
    # cache.type, from its .dvc/config
    assert (project / "models" / "model.pt").stat().st_nlink == 2
    assert (project / "data" / "prepared" / "train_images.npy").stat().st_nlink == 2
    assert "Data and pipelines are up to date" in sh(project, "dvc", "status")
    # DVC's per-repository folder went under pytest's temporary folder, not /var/tmp/dvc
    # (conftest.dvc_site_cache): nothing of the run is left outside what pytest prunes
    assert (Path(os.environ["DVC_SITE_CACHE_DIR"]) / "repo").is_dir()
    commit_all(project, "baseline")  # queued runs start from a commit

    # two experiments at once (a teammate pulls the first: test_a_teammate_clones_pulls_...)
    sh(project, "dvc", "exp", "run", "--queue", "-S", "lr=0.001,0.004", "-S", "freeze_depth=2")
    run_the_queue(project, 2)
    rows = experiments(dvc_json(project, "exp", "show"))
    swept = {row["lr"]: name for name, row in rows.items() if row["lr"] in (0.001, 0.004)}
    assert set(swept) == {0.001, 0.004}, rows
    assert all(rows[name]["accuracy"] is not None for name in swept.values()), rows
    for name in swept.values():
        log = queue_log(project, name, "evaluate")
        assert ran_stages(log) == {"finetune", "evaluate"}, log  # from the commit's outputs
        assert "1 thread(s) per process" in log, log
    sh(project, "dvc", "exp", "apply", swept[0.001])  # its params and outputs, to look at
    with open(project / "dvclive" / "plots" / "metrics" / "lr.tsv") as f:  # DVCLive's log
        assert [float(row["lr"]) for row in csv.DictReader(f, delimiter="\t")] == [0.001] * 2
    shown = sh(project, "dvc", "exp", "show", "--json")  # DVC reads the live metrics
    assert '"dvclive/metrics.json"' in shown and '"step": 1' in shown
    assert '"accuracy_ci95"' in shown and '"macro_f1_ci95"' in shown  # the 95 % intervals
    views = readme_views()
    assert len(views) == 2, views  # headline metrics and params; cost
    for view in views:  # the README's views fit a 120-column terminal
        table = sh(project, *view, env={"COLUMNS": "200"})
        assert swept[0.001] in table and "accuracy" in table
        assert max(map(len, table.splitlines())) <= 120, table
    # `dvc plots show` writes a page that draws offline (the template of .dvc/config), with
    # DVC's plot of DVCLive's files in it
    sh(project, "dvc", "plots", "show", "-o", "plots_page")
    specs = offline_plots_page((project / "plots_page" / "index.html").read_text())
    points = specs["accuracy"]["data"]["values"]
    assert sorted((p["filename"], p["step"]) for p in points) == [
        ("train/acc.tsv", "0"), ("train/acc.tsv", "1"), ("val/acc.tsv", "0"), ("val/acc.tsv", "1")]
    assert {"loss", "accuracy", "confusion", "coverage"} <= set(specs)
    shutil.rmtree(project / "plots_page")
    diff = json.loads(sh(project, "dvc", "metrics", "diff", "--all", "--json"))
    assert {"accuracy", "macro_f1"} <= set(diff["metrics/eval.json"]), diff
    assert "label" in json.loads(sh(project, "dvc", "metrics", "show", "--json"))[""][
        "data"]["metrics/audit.json"]["data"]  # dvc exp show has the audit's counts


def test_another_arch_with_the_same_input_size_skips_preprocess(project):
    """Up to preprocess only: that the audit, finetune and evaluate rerun for another arch
    costs 25 s here and is plain (tests/test_dvc_deps.py checks what each stage lists)."""
    sh(project, "dvc", "repro")  # up to date after the test above; the start, run alone
    out = sh(project, "dvc", "exp", "run", "-S", "model.arch=resnet18", "preprocess")
    assert ran_stages(out) == {"input_spec"}
    assert "Stage 'preprocess' didn't change, skipping" in out


def test_adding_an_image_and_another_input_size_rerun_split_input_spec_and_after(project):
    """One `dvc repro` for two changes (each DVC run costs seconds of imports per stage): a new
    image reruns split (input_spec does not read the images), a new size reruns input_spec.
    The size as the README says: conf/ edited, params.yaml written from it, `dvc repro`."""
    make_image_folder(project / "data" / "extra", {"a": 1}, size=24, seed=9)
    shutil.move(project / "data" / "extra" / "a" / "img_000.png",
                project / "data" / "my photos" / "a" / "new.png")
    edit_yaml(project / "conf" / "preset" / "demo.yaml", {"preprocess": {"image_size": 40}})
    sh(project, "python", "-m", "finetuner.presets")
    out = sh(project, "dvc", "repro")
    assert {"split", "input_spec", "preprocess", "finetune", "evaluate"} <= ran_stages(out)
    assert json.loads((project / "data" / "input_spec.json").read_text())["image_size"] == 40


def test_a_teammate_clones_pulls_and_has_nothing_to_recompute(project, tmp_path):
    sh(project, "dvc", "repro")
    team, clone = tmp_path / "team.git", tmp_path / "clone"
    sh(tmp_path, "git", "init", "-q", "--bare", str(team))
    commit_all(project, "results")
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

    # an experiment travels the same way: its commit to git, its outputs to the DVC remote (the
    # first test's lr 0.001: this test needs that one)
    alice = named(project, 0.001)
    sh(project, "dvc", "exp", "push", "origin", alice)
    sh(clone, "dvc", "exp", "pull", "origin", alice)
    # based on an older commit than the clone's HEAD: shown with --all-commits
    shown = experiments(dvc_json(clone, "exp", "show", "--all-commits"))
    assert shown[alice]["lr"] == 0.001
    sh(clone, "dvc", "exp", "apply", alice)
    assert yaml.safe_load((clone / "params.yaml").read_text())["freeze_depth"] == 2
    assert "Data and pipelines are up to date" in sh(clone, "dvc", "status")  # its outputs too


def test_a_key_no_stage_reads_fails_the_experiment_with_the_closest_name(project):
    """`dvc exp run -S +learning_rate=0.1` (Hydra's hint for a key it does not know) adds a key
    no stage reads. evaluate lists the whole params.yaml, so it reruns and refuses the key:
    no experiment recorded with its baseline's results. `git checkout -- params.yaml metrics`
    (docs/params.md; `dvc checkout` too when an earlier stage failed) puts the workspace
    back as it was."""
    assert "Data and pipelines are up to date" in sh(project, "dvc", "status")  # the test above
    before = experiment_refs(project)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    done = subprocess.run(["dvc", "exp", "run", "-S", "+learning_rate=0.1"], cwd=project,
                          env=env, capture_output=True, text=True)
    out = done.stdout + done.stderr
    assert done.returncode != 0 and ran_stages(out) == {"evaluate"}, out
    assert "params.yaml: unknown key 'learning_rate'" in out and "'lr'" in out, out
    assert experiment_refs(project) == before
    sh(project, "git", "checkout", "--", "params.yaml", "metrics")
    assert "Data and pipelines are up to date" in sh(project, "dvc", "status")


ENSEMBLE = "tf_efficientnet_lite0+tf_efficientnet_lite1+tf_efficientnet_lite2"


def test_photos_preset_shows_its_values_and_keeps_every_photo_for_training(project):
    """The real-photo recipe through DVC's Hydra composition: `dvc exp show` has each key's
    value as it ran (never the word `preset`), `dvc params diff` against the demo commit lists
    every key that differs; test_fraction 0, an external labelled test folder, the ensemble of
    probes fitted on train + val (L2 strength by cross-validation there), scored on the folder;
    the split keeps near-duplicates together, the audit reads the ensemble's first member."""
    make_image_folder(project / "data" / "holdout", {"a": 3, "b": 3, "c": 2}, size=24, seed=5)
    sh(project, "python", "-m", "finetuner.presets")  # the demo, as committed
    commit_all(project, "the demo")
    demo = sh(project, "git", "rev-parse", "HEAD").strip()
    out = sh(project, "dvc", "exp", "run", "-n", "photos-lr", "-S", "preset=photos",
             "-S", "lr=0.001", "-S", "data.test_fraction=0", "-S", "evaluate.test_dir=data/holdout",
             "-S", "preprocess.image_size=32", "-S", "train.epochs=2")
    assert {"split", "preprocess", "audit", "finetune", "evaluate"} <= ran_stages(out)

    ran = yaml.safe_load((project / "params.yaml").read_text())  # what DVC composed
    shown = params_of(dvc_json(project, "exp", "show"))["photos-lr"]
    assert shown == ran and flat(shown).keys() == flat(yaml.safe_load(
        sh(project, "git", "show", f"{demo}:params.yaml"))).keys()
    assert "preset" not in [v for k, v in flat(shown).items() if k != "preset"]
    assert shown["preset"] == "photos" and shown["lr"] == 0.001
    assert shown["model"]["arch"] == ENSEMBLE and shown["freeze_depth"] == 4
    assert shown["strategy"] == "probe" and shown["probe"] == {"layers": "all", "folds": 5}
    assert shown["train"]["refit"] is True and shown["preprocess"]["train_views"] == 1
    with open(project / "conf" / "preset" / "photos.yaml") as f:
        recipe = flat(yaml.safe_load(f))
    overridden = {"lr", "data.test_fraction", "preprocess.image_size", "train.epochs"}
    assert all(flat(shown)[key] == value for key, value in recipe.items() if key not in overridden)
    table = list(csv.DictReader(io.StringIO(sh(project, "dvc", "exp", "show", "--csv"))))
    row = next(r for r in table if r["Experiment"] == "photos-lr")
    # the table's columns: params.yaml:lr (dvclive/metrics.json has an lr too), model.arch, ...
    assert (row["params.yaml:lr"], row["model.arch"], row["freeze_depth"]) == (
        "0.001", ENSEMBLE, "4")

    commit_all(project, "the photos experiment")  # exp run left it in the workspace
    diff = dvc_json(project, "params", "diff", demo, "HEAD")["params.yaml"]
    old = flat(yaml.safe_load(sh(project, "git", "show", f"{demo}:params.yaml")))
    differ = {key for key, value in flat(ran).items() if old[key] != value}
    assert set(diff) == differ
    assert {key for key in recipe if old[key] != recipe[key]} - overridden <= differ
    assert diff["model.arch"] == {"old": "tf_efficientnet_lite0", "new": ENSEMBLE}
    assert diff["probe.layers"] == {"old": "last", "new": "all"}

    with open(project / "data" / "split" / "test.csv") as f:
        assert list(csv.DictReader(f)) == []
    split = {name: sum(1 for _ in open(project / "data" / "split" / f"{name}.csv")) - 1
             for name in ("train", "val")}
    metrics = json.loads((project / "metrics" / "eval.json").read_text())
    assert metrics["evaluated_on"] == "folder data/holdout" and metrics["test_images"] == 8
    assert metrics["near_duplicates"]["grouping"] == "perceptual hash"  # on for photos
    audit = json.loads((project / "metrics" / "audit.json").read_text())
    assert audit["arch"] == "tf_efficientnet_lite0"  # the ensemble's first member reads the views
    # the probes learnt from train + val (their L2 strength by cross-validation there): no refit
    assert metrics["strategy"] == "probe" and metrics["refit"] is False
    assert metrics["trained_images"] == split["train"] + split["val"]
    cv = metrics["cross_validation"]  # what the cross-validation chose: one C a member
    assert cv["folds"] == 5 and len(cv["C"]) == 3
    # no sentence among the metrics (`dvc metrics diff` pads every row to its longest string)
    assert max(len(v) for v in flat(metrics).values() if isinstance(v, str)) <= 60
    assert cv["layers"] == ["all"] * 3  # each member reads every stage
    assert f"(C {', '.join(f'{c:g}' for c in cv['C'])}; out-of-fold acc" in out  # the stage says
    live = project / "dvclive" / "plots" / "metrics"  # a probe is one step of the live log
    with open(live / "val" / "acc.tsv") as f:
        (step,) = list(csv.DictReader(f, delimiter="\t"))
    assert float(step["acc"]) == metrics["best_val_acc"]  # its out-of-fold accuracy
    with open(live / "train" / "loss.tsv") as f:  # its fit: dvc.yaml's loss plot reads it
        (step,) = list(csv.DictReader(f, delimiter="\t"))
    assert float(step["loss"]) >= 0 and not (live / "refit").exists()
    assert "failed to load" not in sh(project, "dvc", "plots", "show", "--json")
