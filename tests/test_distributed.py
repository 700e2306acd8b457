"""Scaling out: precision and thread choices, a model trained on CUDA loading on CPU, and
data-parallel training with torchrun (two Gloo processes on CPU) learning what one process learns
from the same global batches.  (A checkpoint saved from a GPU loading on a CPU-only machine:
tests/test_checkpoint.py; the finetune stage under torchrun through DVC, killed and resumed,
rank 0 alone writing: tests/test_robustness_resume.py.)

This file is also the torchrun entry of the library-level check:
``python -m torch.distributed.run --standalone --nproc-per-node 2 tests/test_distributed.py OUT``
runs every case of ``CASES`` in the two processes and saves each rank's result under OUT.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from finetuner.models import StagedClassifier, build_model
from finetuner.models.checkpoint import load_checkpoint, save_checkpoint
from finetuner.params import parse_params
from finetuner.runtime import resolve_precision, thread_count
from finetuner.training import distributed
from finetuner.training.batches import TrainData, epoch_order
from finetuner.training.distributed import Dist
from finetuner.training.loop import fit
from finetuner.training.strategy import train_model

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TOL = dict(rtol=1e-4, atol=2e-5)

# ---------------------------------------------------------------- the cases both ways run


def colour_data(n_per_class: int = 8, classes: int = 3, views: int = 2, size: int = 32,
                labels: list[int] | None = None) -> TrainData:
    """Noisy solid colours (as tests/test_training.py), with 24 training images by default so a
    global batch of 8 splits evenly over 2 processes."""
    g = torch.Generator().manual_seed(0)
    train_labels = (torch.tensor(labels) if labels is not None
                    else torch.arange(classes).repeat_interleave(n_per_class))
    colours = torch.tensor([[220, 30, 30], [30, 220, 30], [30, 30, 220]])[:classes]

    def images(lab, k):
        base = colours[lab].repeat_interleave(k, 0)[:, None, None, :].float()
        noise = torch.randint(-60, 60, (len(base), size, size, 3), generator=g)
        return (base + noise).clamp(0, 255).to(torch.uint8)

    val_labels = torch.arange(classes).repeat_interleave(7)  # 21: an uneven split over 2 ranks
    return TrainData(images(train_labels, views), train_labels, images(val_labels, 1), val_labels,
                     views, classes)


def bn_free_model() -> StagedClassifier:
    """Three conv stages without BatchNorm or dropout: nothing depends on how a batch is split,
    so two processes must learn exactly (up to float rounding) what one process learns."""
    torch.manual_seed(0)
    stages = [nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)),
              nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)),
              nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU())]
    return StagedClassifier(stages, nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1)), 16, 3,
                            (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def _params(freeze_depth=1, **train):
    raw = {"lr": 0.05, "freeze_depth": freeze_depth,
           "model": {"arch": "resnet18", "weights": "none"}, "preprocess": {"image_size": 32},
           "train": {"epochs": 3, "batch_size": 8, "schedule": "cosine", **train}}
    return parse_params(raw)


# name -> (params, data, use_cache, model builder): every one runs in 1 and in 2 processes
CASES = {
    # epoch 1 trains only the head, then stages 1-2 + head: the DDP wrapper is rebuilt and both
    # frozen-prefix caches (all-gathered over the ranks) are used
    "head_then_partial_cached": (lambda: _params(head_epochs=1), colour_data, True, bn_free_model),
    "partial_uncached": (lambda: _params(), colour_data, False, bn_free_model),
    # 24 images in global batches of 5: each rank takes 3 or 2 rows; weighted loss and label
    # smoothing: the loss must be scaled by the global denominator to stay exact
    "uneven_weighted_smoothed": (
        lambda: _params(batch_size=5, class_balance="weighted_loss", label_smoothing=0.1,
                        optimizer="adamw", momentum=0.9),
        lambda: colour_data(labels=[0] * 14 + [1] * 5 + [2] * 5), True, bn_free_model),
    # through train_model, as the finetune stage calls it (a fifth item): the run chosen on val,
    # then the refit on train + val from fresh weights (a second model, a second DDP wrapper)
    "chosen_then_refit": (lambda: _params(refit=True), colour_data, True, bn_free_model, True),
}
# trainable BatchNorm on CPU: no SyncBatchNorm there, so not comparable to one process; the
# ranks must still end with identical weights and running statistics
BN_CASE = (lambda: _params(freeze_depth=4, epochs=2), colour_data, True,
           lambda: (torch.manual_seed(0), build_model("resnet18", "none", 3))[1])


def run_case(case, ctx=None):
    make_params, make_data, use_cache, make_model, *strategy = case
    params = make_params()
    if strategy:
        model, outcome = train_model(make_model, make_data(), params,
                                     ctx or Dist(torch.device("cpu")), progress=False)
        assert outcome.refit and outcome.trained_on == {"train": 24, "val": 21}
        history = outcome.history
    else:
        model = make_model()
        history = fit(model, make_data(), params, torch.device("cpu"), progress=False,
                      use_cache=use_cache, dist=ctx).history
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, history


def torchrun_main(out: Path) -> None:
    """Entry under torchrun: every case in this process group, each rank's result saved."""
    torch.set_num_threads(1)
    ctx = distributed.setup("cpu")
    assert ctx.enabled and dist_backend() == "gloo", "expected torchrun with 2 Gloo processes"
    try:
        for name, case in {**CASES, "batchnorm": BN_CASE}.items():
            state, history = run_case(case, ctx)
            torch.save({"state": state, "history": history, "world_size": ctx.world_size},
                       out / f"{name}.rank{ctx.rank}.pt")
    finally:
        distributed.cleanup(ctx)


def dist_backend() -> str:
    return torch.distributed.get_backend()


# ---------------------------------------------------------------- tests


def venv_env(**extra) -> dict:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                "MASTER_PORT", "OMP_NUM_THREADS"):
        env.pop(key, None)
    env.update(extra)
    return env


@pytest.fixture(scope="module")  # one torchrun for the module (--dist loadfile: one worker)
def two_process_results(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    command = distributed.torchrun_command(2, [str(Path(__file__)), str(out)])
    done = subprocess.run(command, cwd=ROOT, env=venv_env(OMP_NUM_THREADS="1"),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"torchrun failed:\n{done.stdout}\n{done.stderr[-6000:]}"
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_two_processes_learn_what_one_process_learns(two_process_results, name):
    torch.set_num_threads(1)
    state, history = run_case(CASES[name])
    ranks = [torch.load(two_process_results / f"{name}.rank{r}.pt") for r in (0, 1)]
    assert all(r["world_size"] == 2 for r in ranks)
    for key, value in state.items():
        assert torch.equal(ranks[0]["state"][key], ranks[1]["state"][key]), f"ranks differ: {key}"
        torch.testing.assert_close(ranks[0]["state"][key], value, **TOL, msg=key)
    assert len(ranks[0]["history"]) == len(history)
    for two, one in zip(ranks[0]["history"], history):
        assert two["frozen_stages"] == one["frozen_stages"]
        assert two["lr"] == pytest.approx(one["lr"])
        for key in ("train_loss", "val_loss"):
            assert two[key] == pytest.approx(one[key], rel=1e-4, abs=1e-5), (key, two, one)
        for key in ("train_acc", "val_acc"):  # counts over the whole split, not one slice
            assert two[key] == pytest.approx(one[key], abs=1.5 / 21), (key, two, one)
    # something was learned, and the trained part moved (the comparison is not vacuous)
    fresh = CASES[name][3]().state_dict()
    assert not torch.equal(fresh["classifier.weight"], state["classifier.weight"])


@pytest.mark.slow
def test_trainable_batchnorm_on_cpu_keeps_the_ranks_identical(two_process_results):
    ranks = [torch.load(two_process_results / f"batchnorm.rank{r}.pt") for r in (0, 1)]
    for key, value in ranks[0]["state"].items():
        assert torch.equal(value, ranks[1]["state"][key]), key
    fresh = BN_CASE[3]().state_dict()
    trained = "stages.4.0.bn1.running_mean"
    assert not torch.equal(ranks[0]["state"][trained], fresh[trained])
    frozen = "stages.1.0.bn1.running_mean"
    assert torch.equal(ranks[0]["state"][frozen], fresh[frozen])


def test_each_rank_takes_a_slice_of_every_global_batch():
    order = epoch_order(torch.arange(10) % 3, 2, epoch=4, seed=1, balance=False)
    for world in (1, 2, 3):
        for start in range(0, len(order), 4):
            batch = order[start:start + 4]
            slices = [distributed.shard(batch, distributed.Dist(torch.device("cpu"), r, world))
                      for r in range(world)]
            assert torch.equal(torch.cat(slices), batch)  # disjoint, in order, all of it
            assert max(map(len, slices)) - min(map(len, slices)) <= 1
    # set_epoch semantics: another epoch, another global order, the same on every rank
    assert not torch.equal(order, epoch_order(torch.arange(10) % 3, 2, 5, 1, False))
    assert torch.equal(order, epoch_order(torch.arange(10) % 3, 2, 4, 1, False))
    chunks = [distributed.chunk(21, distributed.Dist(torch.device("cpu"), r, 2)) for r in (0, 1)]
    assert chunks == [(0, 11), (11, 21)]


def test_precision_auto_is_fp32_on_cpu_and_mixed_on_cuda(monkeypatch):
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu).name == "fp32"
    assert resolve_precision("auto", cpu).dtype is None
    assert resolve_precision("bf16", cpu).dtype == torch.bfloat16
    assert not resolve_precision("bf16", cpu).grad_scaler().is_enabled()
    with pytest.raises(ValueError, match="'precision' is 'fp16' but the device is the CPU"):
        resolve_precision("fp16", cpu)  # some 20 times slower than fp32 there
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision("auto", cuda).name == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    fp16 = resolve_precision("auto", cuda)
    assert fp16.name == "fp16" and fp16.dtype == torch.float16
    with pytest.raises(ValueError, match="bf16"):
        resolve_precision("bf16", cuda)


def test_bf16_autocast_trains_on_cpu():
    raw = {"precision": "bf16", "freeze_depth": 3, "model": {"arch": "resnet18", "weights": "none"},
           "preprocess": {"image_size": 32}, "train": {"epochs": 1, "batch_size": 8}}
    torch.manual_seed(0)
    model = build_model("resnet18", "none", 3)
    result = fit(model, colour_data(), parse_params(raw), torch.device("cpu"), progress=False)
    assert result.precision == "bf16"
    assert all(v.dtype in (torch.float32, torch.int64) for v in model.state_dict().values())
    assert torch.isfinite(torch.tensor(result.history[0]["train_loss"]))


def test_threads_param_then_omp_num_threads_then_a_share_of_the_cores(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr("finetuner.runtime.available_cores", lambda: 8)
    assert thread_count(3) == 3
    assert thread_count(0) == 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # torchrun started 2 processes here
    assert thread_count(0) == 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "16")
    assert thread_count(0) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # e.g. OMP_NUM_THREADS=2 dvc queue start -j 4
    assert thread_count(0) == 2
    assert thread_count(5) == 5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_model_trained_on_cuda_loads_on_cpu(tmp_path):
    raw = {"freeze_depth": 3, "model": {"arch": "resnet18", "weights": "none"},
           "preprocess": {"image_size": 32}, "train": {"epochs": 1, "batch_size": 8}}
    model = build_model("resnet18", "none", 3)
    result = fit(model, colour_data(), parse_params(raw), torch.device("cuda"), progress=False)
    assert result.precision in ("bf16", "fp16")
    save_checkpoint(tmp_path / "m.pt", model, "resnet18", ["a", "b", "c"], 32, 0.875, {})
    loaded = load_checkpoint(tmp_path / "m.pt", "cpu")
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value.cpu()), key


if __name__ == "__main__":
    torchrun_main(Path(sys.argv[1]))


def test_a_batch_too_small_to_share_is_refused_before_training():
    """batch 4 on 4 processes: one row a rank, whose BatchNorm normalises it to noise (and
    batch 2 would leave ranks with none)."""
    from conftest import tiny_data
    from finetuner.params import ParamsError
    with pytest.raises(ParamsError, match=r"train.batch_size 4 cannot be shared by 4 processes "
                                          r"\(at least 2 rows each\); allowed: 8 or more"):
        fit(build_model("resnet18", "none", 3), tiny_data(), parse_params({
            "model": {"arch": "resnet18", "weights": "none"}, "preprocess": {"image_size": 32},
            "train": {"batch_size": 4}}), torch.device("cpu"), progress=False,
            dist=Dist(torch.device("cpu"), 0, 4))
