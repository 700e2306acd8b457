"""Faults end to end: stages interrupted, stages given bad inputs, reproducibility.

The stage tests run the real stage scripts as subprocesses in a temp copy of the project, on
tiny generated images (weights none, 32 px), and kill them with SIGKILL or SIGINT mid-way.
The atomic write itself is tested in tests/test_io.py, damaged and hostile checkpoints in
tests/test_checkpoint.py.
"""
from __future__ import annotations

import csv
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import (ROOT, copy_project, demo_params, ignored, make_image_folder, run_stage_here,
                      stage_exit)
from finetuner.models.checkpoint import TrainingRecord, load_checkpoint
from finetuner.params import ParamsError
from finetuner.stage import INTERRUPTED

FINETUNE_OUTS = ["models/model.pt"]
FINETUNE_ARGS = ["data/prepared", *FINETUNE_OUTS, "dvclive"]  # the last: DVCLive's live log


# --- a temp project with tiny prepared data ---------------------------------------------------

def set_params(repo: Path, epochs: int = 2, **preprocess) -> None:
    params = yaml.safe_load(demo_params())
    params.update(threads=1, device="cpu", lr=0.02)  # from scratch: finite (robustness.md)
    params["data"]["dir"] = "data/images"
    params["preprocess"].update({"image_size": 32, "train_views": 2, "workers": 0, **preprocess})
    params["model"]["weights"] = "none"
    params["train"].update(epochs=epochs, batch_size=8, schedule="constant")
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def run_stage(repo: Path, script: str, *args: str,
              check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, f"stages/{script}.py", *args], cwd=repo,
                          capture_output=True, text=True, timeout=300, env=stage_env())
    if check:
        assert done.returncode == 0, f"{script} failed:\n{done.stdout}\n{done.stderr}"
    return done


def stage_env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    repo = copy_project(tmp_path_factory.mktemp("project"))
    make_image_folder(repo / "data" / "images", {"a": 8, "b": 8, "c": 8}, size=24)
    set_params(repo)
    for stage, *args in [("split", "data/images", "data/split"),  # in this process: the
                         ("input_spec", "data/input_spec.json"),  # tests below interrupt
                         ("preprocess", "data/images", "data/split",  # their own processes
                          "data/input_spec.json", "data/prepared")]:
        run_stage_here(repo, stage, *args)
    return repo


def default_sigint() -> None:
    """A stage started from a background job (``nohup ... &``) inherits SIGINT ignored, and
    Python then never raises KeyboardInterrupt; the Ctrl-C tests need the default back."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_stage(repo: Path, script: str, *args: str) -> tuple[subprocess.Popen, Path]:
    log = repo / f"{script}.log"
    with log.open("w") as out:
        process = subprocess.Popen([sys.executable, f"stages/{script}.py", *args], cwd=repo,
                                   stdout=out, stderr=subprocess.STDOUT, env=stage_env(),
                                   preexec_fn=default_sigint)
    return process, log


def wait_until(condition, process: subprocess.Popen, what: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"the stage ended (rc {process.returncode}) before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def kill(process: subprocess.Popen, sig: int) -> int:
    assert process.poll() is None, "the stage finished before it could be interrupted"
    process.send_signal(sig)
    return process.wait(timeout=300)


def leftovers(repo: Path, outputs: list[str]) -> list[str]:
    """Everything in the outputs' folders besides the outputs themselves."""
    found = []
    for folder in {(repo / o).parent for o in outputs}:
        if folder.is_dir():
            names = {Path(o).name for o in outputs}
            found += [p.name for p in folder.iterdir() if p.name not in names]
    return sorted(found)


# --- finetune interrupted ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def fresh_runs() -> list[Path]:
    """Checkpoints of finetune runs from scratch with ``set_params(epochs=2)`` made by this
    module's tests (the reruns after a kill), kept for the determinism test (one pytest-xdist
    worker runs the whole module, in order: --dist loadfile)."""
    return []


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_finetune_killed_mid_training_leaves_no_output_and_the_rerun_works(project, sig,
                                                                          fresh_runs):
    for output in FINETUNE_OUTS:
        (project / output).unlink(missing_ok=True)
    set_params(project, epochs=5000)  # still training when the signal comes
    process, log = start_stage(project, "finetune", *FINETUNE_ARGS)
    wait_until(lambda: "finetune:" in log.read_text(errors="replace"), process,
               "training started (the progress bar)")
    time.sleep(1.0)  # mid-epoch
    returncode = kill(process, sig)
    assert returncode != 0
    for output in FINETUNE_OUTS:
        assert not (project / output).exists(), f"{output} exists after {sig.name}"
    left = leftovers(project, FINETUNE_OUTS)
    assert all(name.startswith(".") and ignored(name) for name in left), left
    if sig == signal.SIGINT:
        assert left == [], f"SIGINT should clean up its temp files: {left}"
        assert f"finetune: {INTERRUPTED}; with train.resume (the default) the same command " \
               "again goes on from the last finished epoch" in log.read_text()
        assert "Traceback" not in log.read_text()

    set_params(project, epochs=2)
    run_stage(project, "finetune", *FINETUNE_ARGS)  # other params: no resume
    checkpoint = load_checkpoint(project / "models" / "model.pt")
    assert checkpoint.class_names == ["a", "b", "c"] and checkpoint.info["epochs_run"] == 2
    assert set(checkpoint.info) == set(TrainingRecord.__annotations__)  # the keys it documents
    with open(project / "dvclive" / "plots" / "metrics" / "train" / "loss.tsv") as f:
        assert len(list(csv.DictReader(f, delimiter="\t"))) == 2
    assert leftovers(project, FINETUNE_OUTS) == []
    fresh_runs.append(shutil.copy(project / "models" / "model.pt",
                                  project / f"fresh_{sig.name}.pt"))


ERROR_OUTS = ["models/error.pt", "metrics/error_live"]


@pytest.mark.parametrize("script, args, change, message", [
    ("finetune", ["data/prepared", *ERROR_OUTS], {"device": "cuda:7"}, "'device' is 'cuda:7'"),
    ("finetune", ["data/prepared", *ERROR_OUTS], {"nproc_per_node": 0}, "'nproc_per_node'"),
    ("finetune", ["data/nothing", *ERROR_OUTS], {}, "data/nothing/meta.json is missing"),
    ("finetune", ["data/prepared", *ERROR_OUTS], {"model": {"weights": "data/no.pt"}},
     "data/no.pt"),
    ("evaluate", ["models/error.pt", "data/prepared", "metrics/error"], {},
     "models/error.pt: no such checkpoint file"),
    ("evaluate", ["models/model.pt", "data/prepared", "metrics/error"], {"device": "cuda:7"},
     "'device' is 'cuda:7'"),
], ids=["device", "nproc", "no-prepared", "weights-file", "no-checkpoint", "eval-device"])
def test_finetune_and_evaluate_report_errors_in_one_line_and_write_nothing(
        project, script, args, change, message, monkeypatch):
    """The stage script itself (its ``__main__``, run in this process: the torch it imports is
    already loaded) exits with one line naming the problem, as `python stages/...` does."""
    if not (project / "models" / "model.pt").is_file():
        run_stage(project, "finetune", *FINETUNE_ARGS)
    params = yaml.safe_load((project / "params.yaml").read_text())
    for key, value in change.items():
        params[key] = {**params[key], **value} if isinstance(value, dict) else value
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        code = stage_exit(project, project / "stages" / f"{script}.py", args, monkeypatch)
    finally:
        set_params(project)
    # sys.exit(text): Python prints the text as the last line of stderr and exits with status 1
    assert isinstance(code, str) and "\n" not in code, code
    assert code.startswith(f"{script}: error:") and message in code, code
    assert not any((project / path).exists()
                   for path in ERROR_OUTS + ["metrics/error"]), "an output was written"


def test_run_stage_checks_arguments_and_turns_errors_and_ctrl_c_into_exit_codes(
        monkeypatch, capsys):
    from finetuner.stage import run_stage

    def main(a, b):
        raise {"params": ParamsError("params.yaml: 'lr' is -1"), "ctrl-c": KeyboardInterrupt(),
               "bug": RuntimeError("a bug")}[a]
    monkeypatch.setattr(sys, "argv", ["x.py", "only-one"])
    with pytest.raises(SystemExit, match=r"usage: python stages/x.py A B \(got 1 arguments\)"):
        run_stage("x", main, "A B")
    monkeypatch.setattr(sys, "argv", ["x.py", "params", "b"])
    with pytest.raises(SystemExit, match="^x: error: params.yaml: 'lr' is -1$"):
        run_stage("x", main, "A B")
    monkeypatch.setattr(sys, "argv", ["x.py", "ctrl-c", "b"])
    with pytest.raises(SystemExit) as stop:
        run_stage("x", main, "A B")
    assert stop.value.code == 130
    assert capsys.readouterr().err == f"\nx: {INTERRUPTED}\n"  # a line of its own, after a bar
    with pytest.raises(SystemExit):
        run_stage("x", main, "A B", after_ctrl_c="rerun to go on")
    assert capsys.readouterr().err.endswith(f"x: {INTERRUPTED}; rerun to go on\n")
    monkeypatch.setattr(sys, "argv", ["x.py", "bug", "b"])
    with pytest.raises(RuntimeError, match="a bug"):  # not an input error: keeps its traceback
        run_stage("x", main, "A B")


def test_same_params_and_seed_give_identical_training_on_cpu(project, fresh_runs):
    """Two finetune processes from scratch with the same params and seed (the reruns of the
    kill tests above, or made here when those did not run) train the same weights."""
    set_params(project, epochs=2)
    while len(fresh_runs) < 2:
        out = project / f"fresh_{len(fresh_runs)}.pt"
        run_stage(project, "finetune", "data/prepared", out.name, f"live_{len(fresh_runs)}")
        fresh_runs.append(out)
    runs = []
    for path in fresh_runs[:2]:
        checkpoint = load_checkpoint(path)
        history = [{k: v for k, v in row.items() if k != "seconds"}
                   for row in checkpoint.info["history"]]
        runs.append((history, checkpoint.model.state_dict()))
    (first_history, first_state), (second_history, second_state) = runs
    assert repr(first_history) == repr(second_history)
    assert all(math.isfinite(row["train_loss"]) for row in first_history)  # lr 0.02, scratch
    assert first_state.keys() == second_state.keys()
    assert all(torch.equal(first_state[k], second_state[k]) for k in first_state)


def test_ctrl_c_while_a_stage_imports_torch_is_one_line(project):
    """A Ctrl-C in a stage's first seconds, while it imports torch and the rest (before
    run_stage's handler runs), is the one line a Ctrl-C during main gives, not a traceback of
    import machinery.  The signal comes once a part of torch is imported (`-X importtime`
    reports each import as it ends), so it lands inside `import torch` on any machine."""
    log = project / "input_spec_ctrl_c.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-X", "importtime", "stages/input_spec.py", "data/ctrl_c.json"],
            cwd=project, stdout=out, stderr=subprocess.STDOUT, env=stage_env(),
            preexec_fn=default_sigint)
    imported = lambda name: re.search(rf"\|\s+{name}$", log.read_text(errors="replace"), re.M)
    wait_until(lambda: imported(r"torch\.\S+"), process, "a part of torch imported", timeout=60)
    assert not imported("torch"), "torch was imported whole before the signal"
    assert kill(process, signal.SIGINT) != 0
    text = log.read_text()
    assert "Traceback" not in text and text.splitlines()[-1] == f"input_spec: {INTERRUPTED}"
    assert not (project / "data" / "ctrl_c.json").exists()


@pytest.mark.parametrize("script", sorted((ROOT / "stages").glob("*.py")), ids=lambda p: p.stem)
def test_every_stage_script_imports_finetuner_stage_before_anything_else(script):
    """The test above on one stage holds for all: their first import installs the hook."""
    import ast
    first = next(node for node in ast.parse(script.read_text()).body
                 if isinstance(node, (ast.Import, ast.ImportFrom)))
    assert isinstance(first, ast.ImportFrom) and first.module == "finetuner.stage", script.name


# --- preprocess interrupted -------------------------------------------------------------------

@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_preprocess_killed_mid_way_leaves_no_output_and_the_rerun_works(project, sig):
    many = project / "data" / "many"
    set_params(project, image_size=128, train_views=64)  # ~100 images x 64 views: slow enough
    if not many.is_dir():  # made once for both signals
        make_image_folder(many, {"a": 40, "b": 40, "c": 40}, size=24, seed=3)
        run_stage_here(project, "split", "data/many", "data/split_many")
        run_stage_here(project, "input_spec", "data/input_spec_many.json")
    out = project / "data" / "prepared_many"
    shutil.rmtree(out, ignore_errors=True)
    process, log = start_stage(project, "preprocess", "data/many", "data/split_many",
                               "data/input_spec_many.json", "data/prepared_many")
    temps = lambda: list((project / "data").glob(".prepared_many.tmp-*"))
    wait_until(lambda: any((t / "train_images.npy").exists() for t in temps()), process,
               "preprocess started writing arrays")
    time.sleep(0.5)
    returncode = kill(process, sig)
    assert returncode != 0
    assert not out.exists(), f"data/prepared_many exists after {sig.name}"
    left = [t.name for t in temps()]
    if sig == signal.SIGKILL:  # no chance to clean up: a hidden, git-ignored temp folder
        assert len(left) == 1 and left[0].startswith(".") and ignored(left[0])
    else:
        assert left == [] and INTERRUPTED in log.read_text()

    set_params(project)
    run_stage(project, "preprocess", "data/many", "data/split_many", "data/input_spec_many.json",
              "data/prepared_many")
    assert (out / "meta.json").is_file() and (out / "train_images.npy").is_file()
    assert temps() == [], "the rerun removes the killed run's temp folder"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl(PR_SET_PDEATHSIG)")
@pytest.mark.parametrize("by_dvc", [True, False])
def test_a_stage_stops_when_the_dvc_that_ran_it_is_killed(tmp_path, by_dvc):
    """`kill -9` of `dvc repro` left its finetune stage training on under init: it wrote the
    model with DVC gone and removed the state the rerun should have resumed from (a new
    user's report).  A stage DVC runs (DVC_STAGE set) now gets a SIGTERM when its parent dies,
    also with SIGINT ignored (a shell script's background job); a script run by hand (nohup)
    still outlives its parent."""
    stage = tmp_path / "stage.py"
    stage.write_text("from finetuner.stage import run_stage\nimport time\n"
                     "def main():\n    time.sleep(60)\n"
                     "run_stage('sleepy', main, '')\n")
    parent = ("import signal, subprocess, sys, time\n"
              "signal.signal(signal.SIGINT, signal.SIG_IGN)  # inherited, as by `dvc repro &`\n"
              f"child = subprocess.Popen([sys.executable, {str(stage)!r}], "
              f"stderr=open({str(tmp_path / 'err.txt')!r}, 'w'))\n"
              "print(child.pid, flush=True)\ntime.sleep(60)\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    env.pop("LOCAL_RANK", None)
    if by_dvc:
        env["DVC_STAGE"] = "sleepy"
    else:
        env.pop("DVC_STAGE", None)
    dvc = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True,
                           env=env)
    child = int(dvc.stdout.readline())
    time.sleep(3)  # the child imports finetuner.stage
    dvc.send_signal(signal.SIGKILL)
    dvc.wait()
    deadline = time.monotonic() + (20 if by_dvc else 3)
    while running(child) and time.monotonic() < deadline:
        time.sleep(0.2)
    alive = running(child)
    if alive:
        os.kill(child, signal.SIGKILL)
    if by_dvc:
        assert not alive, "the stage went on after the DVC that ran it was killed"
    else:
        assert alive  # by hand: as before, it outlives its parent


def running(pid: int) -> bool:
    """Whether process ``pid`` runs (an exited one an init that does not reap leaves as a
    zombie does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl(PR_SET_PDEATHSIG)")
def test_torchrun_workers_stop_when_the_dvc_that_ran_the_stage_is_killed(tmp_path):
    """With ``nproc_per_node`` above 1 the stage replaces itself by torchrun (``execve``), which
    keeps the parent-death signal the stage asked for: a `kill -9` of DVC sends the torchrun
    agent a SIGTERM, and it stops its workers (which ask for none themselves: LOCAL_RANK)."""
    stage = tmp_path / "stage.py"
    stage.write_text(
        "import os, sys, time\nfrom finetuner.stage import run_stage\n"
        "from finetuner.training.distributed import relaunch_under_torchrun, under_torchrun\n"
        "def main():\n"
        "    if not under_torchrun():\n        relaunch_under_torchrun(2, sys.argv)\n"
        f"    path = os.path.join({str(tmp_path)!r}, 'worker' + os.environ['LOCAL_RANK'])\n"
        "    open(path + '.tmp', 'w').write(str(os.getpid()))\n"
        "    os.replace(path + '.tmp', path)\n    time.sleep(120)\n"
        "run_stage('sleepy', main, '')\n")
    parent = ("import subprocess, sys, time\n"
              f"subprocess.Popen([sys.executable, {str(stage)!r}], "
              f"stdout=open({str(tmp_path / 'out.txt')!r}, 'w'), stderr=subprocess.STDOUT)\n"
              "time.sleep(300)\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), DVC_STAGE="sleepy", OMP_NUM_THREADS="1")
    env.pop("LOCAL_RANK", None)
    dvc = subprocess.Popen([sys.executable, "-c", parent], env=env)
    files = [tmp_path / "worker0", tmp_path / "worker1"]
    deadline = time.monotonic() + 120
    while not all(f.exists() for f in files) and time.monotonic() < deadline:
        time.sleep(0.2)
    workers = [int(f.read_text()) for f in files if f.exists()]
    dvc.kill()
    dvc.wait()
    assert len(workers) == 2, (tmp_path / "out.txt").read_text()
    deadline = time.monotonic() + 30
    while any(map(running, workers)) and time.monotonic() < deadline:
        time.sleep(0.2)
    alive = [pid for pid in workers if running(pid)]
    for pid in alive:
        os.kill(pid, signal.SIGKILL)
    assert not alive, "torchrun's workers went on after the DVC that ran the stage was killed"
