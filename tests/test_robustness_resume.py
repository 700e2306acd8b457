"""A finetune killed with SIGKILL after epoch 2 of 4, rerun by `dvc repro`, goes on from epoch 3
and ends with the weights of a run never stopped; after a param change it starts afresh; under
torchrun (2 Gloo processes, `nproc_per_node: 2`) a SIGKILL of rank 1 alone stops the run, and
`dvc repro` resumes it to the weights of a 2-process run never stopped, rank 0 alone writing.
(That 2 processes learn what 1 learns: tests/test_distributed.py, on the training loop.)

The kill comes from inside the stage, right after epoch 2 is logged (its state is saved just
before): a ``sitecustomize`` on PYTHONPATH wraps the live log of the finetune script only (under
torchrun: rank 1's call to save the resume state, which only rank 0 writes; rank 1 waits until
rank 0's file holds the epoch, then kills itself).  No test hook lives in the product.  One
project through DVC: slow.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import copy_project, make_image_folder, run_stage_here

# one pytest-xdist worker runs the module, in order (--dist loadfile): the second test goes on
# from the first
pytestmark = pytest.mark.slow

KILL_HOOK = '''
import os, signal, sys
if sys.argv and sys.argv[0].endswith("finetune.py") and os.environ.get("KILL_AFTER_EPOCH"):
    import finetuner.live as live
    epoch = live.LiveLog.epoch
    def killing(self, phase, record):
        epoch(self, phase, record)
        if record["epoch"] == int(os.environ["KILL_AFTER_EPOCH"]):
            os.kill(os.getpid(), signal.SIGKILL)
    live.LiveLog.epoch = killing
if (sys.argv and sys.argv[0].endswith("finetune.py") and os.environ.get("KILL_RANK1_AFTER_EPOCH")
        and os.environ.get("RANK") == "1"):
    import time
    import torch
    import finetuner.training.resume as resume
    save, after = resume.ResumeSlot.save, int(os.environ["KILL_RANK1_AFTER_EPOCH"])
    def saving_then_killing(self, state):
        save(self, state)  # rank 1 writes nothing: rank 0 does
        if state.get("done") or state["epochs_done"] != after:
            return
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if torch.load(self.path, weights_only=True)["epochs_done"] == after:
                    break
            except (OSError, RuntimeError, KeyError):
                pass
            time.sleep(0.1)
        os.kill(os.getpid(), signal.SIGKILL)
    resume.ResumeSlot.save = saving_then_killing
'''


def run(repo: Path, *args: str, kill_after: int | None = None,
        kill_rank1_after: int | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
               OMP_NUM_THREADS="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                "MASTER_PORT"):
        env.pop(key, None)
    if kill_after is not None or kill_rank1_after is not None:
        env.update(PYTHONPATH=os.pathsep.join([str(repo / ".hook"), env.get("PYTHONPATH", "")]))
    if kill_after is not None:
        env.update(KILL_AFTER_EPOCH=str(kill_after))
    if kill_rank1_after is not None:
        env.update(KILL_RANK1_AFTER_EPOCH=str(kill_rank1_after))
    return subprocess.run(args, cwd=repo, env=env, capture_output=True, text=True, timeout=600)


def ok(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 0, f"{done.args} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def set_params(repo: Path, **values) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params.update(values)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def live_rows(repo: Path, name: str) -> list[str]:
    return (repo / "dvclive" / "plots" / "metrics" / f"{name}.tsv").read_text().splitlines()[1:]


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    repo = copy_project(tmp_path_factory.mktemp("resume"))
    make_image_folder(repo / "data" / "images", {"a": 8, "b": 8, "c": 8}, size=24)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params.update(threads=1, device="cpu", lr=0.02)  # from scratch: finite (robustness.md)
    params["data"]["dir"] = "data/images"
    params["preprocess"].update(image_size=32, train_views=2, workers=0)
    params["model"]["weights"] = "none"
    params["train"].update(epochs=4, batch_size=8)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (repo / ".hook").mkdir()
    (repo / ".hook" / "sitecustomize.py").write_text(KILL_HOOK)
    for command in (["git", "init", "-q"], ["git", "config", "user.email", "test@example.com"],
                    ["git", "config", "user.name", "test"], ["dvc", "init", "-q"],
                    ["dvc", "config", "core.analytics", "false"], ["git", "add", "-A"],
                    ["git", "commit", "-qm", "project"]):
        ok(run(repo, *command))
    ok(run(repo, "dvc", "repro", "preprocess"))
    return repo


def test_killed_after_epoch_2_dvc_repro_resumes_to_the_same_weights(project, tmp_path):
    # the run never stopped, by the stage script's main in this process, outside DVC's outputs
    reference = tmp_path / "reference.pt"
    run_stage_here(project, "finetune", "data/prepared", str(reference), str(tmp_path / "live"))
    assert not (project / ".finetuner" / "resume").exists()  # removed when the stage ends

    # `dvc repro evaluate`: the pipeline up to evaluate, without the demo's data stage
    killed = run(project, "dvc", "repro", "evaluate", kill_after=2)
    assert killed.returncode != 0 and not (project / "models" / "model.pt").exists()
    states = list((project / ".finetuner" / "resume").glob("*/finetune.pt"))
    assert len(states) == 1 and torch.load(states[0], weights_only=True)["epochs_done"] == 2
    assert len(live_rows(project, "train/loss")) == 2  # the log of a crashed run is kept

    out = ok(run(project, "dvc", "repro", "evaluate"))
    assert "resuming 'finetune' after epoch 2 of 4" in out
    assert "torch.distributed.run" not in out and " on cpu, " in out  # nproc_per_node 1
    assert "Running stage 'evaluate'" in out
    resumed = weights(project / "models" / "model.pt")
    assert all(torch.equal(resumed[k], v) for k, v in weights(reference).items())
    assert len(live_rows(project, "train/loss")) == 4  # one row per finished epoch
    assert not (project / ".finetuner" / "resume").exists()


def test_a_param_changed_after_the_kill_starts_from_epoch_1(project):
    set_params(project, lr=0.004)
    killed = run(project, "dvc", "repro", "finetune", kill_after=2)
    assert killed.returncode != 0
    set_params(project, lr=0.003)
    out = ok(run(project, "dvc", "repro", "finetune"))  # evaluate: the test above
    assert "resuming" not in out
    assert [row.split("\t")[0] for row in live_rows(project, "train/loss")] == ["0", "1", "2", "3"]
    assert not (project / ".finetuner" / "resume").exists()  # the lr 0.02 state too


def test_rank_1_killed_under_torchrun_then_dvc_repro_resumes_to_the_same_weights(project,
                                                                                  tmp_path):
    # batch 16: 8 rows per process, each normalising its own slice (no SyncBatchNorm on CPU)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params.update(lr=0.02, nproc_per_node=2)
    params["train"].update(batch_size=16, epochs=4)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    reference = tmp_path / "reference.pt"  # two processes never stopped, outside DVC's outputs
    ok(run(project, sys.executable, "stages/finetune.py", "data/prepared", str(reference),
           str(tmp_path / "live")))
    assert torch.load(reference, weights_only=True)["info"]["world_size"] == 2

    killed = run(project, "dvc", "repro", "finetune", kill_rank1_after=2)  # evaluate: tested above
    assert killed.returncode != 0 and not (project / "models" / "model.pt").exists()
    assert "Signals.SIGKILL" in killed.stderr or "SIGKILL" in killed.stderr, killed.stderr[-3000:]
    state, = (project / ".finetuner" / "resume").glob("*/finetune.pt")
    assert torch.load(state, weights_only=True)["epochs_done"] == 2

    out = ok(run(project, "dvc", "repro", "finetune"))
    assert "resuming 'finetune' after epoch 2 of 4" in out and "2 processes on cpu" in out
    assert "torch.distributed.run --standalone --nnodes 1 --nproc-per-node 2" in out
    resumed = weights(project / "models" / "model.pt")
    assert all(torch.equal(resumed[k], v) for k, v in weights(reference).items())
    assert not (project / ".finetuner" / "resume").exists()  # rank 0 removed it
    # rank 0 alone writes: one summary line, one checkpoint and no second writer's temp file,
    # one live log whose rows are the 2 epochs before the kill and the 2 after
    assert out.count("finetune: best epoch") == 1
    files = lambda folder: sorted(p.name for p in (project / folder).iterdir()
                                  if p.name != ".gitignore")
    assert files("models") == ["model.pt"] and files("dvclive") == ["metrics.json", "plots"]
    assert [row.split("\t")[0] for row in live_rows(project, "train/loss")] == ["0", "1", "2", "3"]
    info = torch.load(project / "models" / "model.pt", weights_only=True)["info"]
    assert info["world_size"] == 2 and info["threads_per_process"] == 1
