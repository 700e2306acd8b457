"""Stage finetune: build the backbone, replace the head, freeze, train, keep the best epoch;
with ``strategy: auto`` the linear probe, or the fine-tune if clearly better on val; with
``train.refit`` the chosen setup once more on train + val (:mod:`finetuner.training.strategy`).

    python stages/finetune.py PREPARED_DIR MODEL_OUT LIVE_DIR

Each finished epoch goes to DVCLive in LIVE_DIR as it happens (:mod:`finetuner.live`).  With
``train.resume`` the training state is saved after every epoch in ``.finetuner/resume/<key>/``
(the key: a hash of params, prepared data and code); a rerun with the same inputs continues
from the last finished epoch and ends with the weights a run never stopped would have
(:mod:`finetuner.training.resume`); the state is removed once the checkpoint is written.

With ``nproc_per_node: N > 1`` in params.yaml (and not already under torchrun) the script
replaces itself by ``python -m torch.distributed.run --standalone --nproc-per-node N`` running
this same command line: N data-parallel processes (NCCL on CUDA, Gloo on CPU).  Started by
torchrun by hand (several nodes: docs/scaling-out.md) it joins the process group torchrun
describes.  Only rank 0 writes the checkpoint and the history.  Errors in params, weights or
inputs are one line naming the param or file; Ctrl-C leaves no output behind.
"""
from finetuner.stage import run_stage  # first: Ctrl-C during the imports below is one line

import sys
from pathlib import Path

from finetuner.arch_params import load_arch_params
from finetuner.data.prepared import load_prepared
from finetuner.models import WeightsError, build_model
from finetuner.models.checkpoint import TrainingRecord, save_checkpoint
from finetuner.params import to_dict
from finetuner.runtime import (resolve_precision, reuse_freed_memory, seed_everything,
                               set_threads)
from finetuner.training import distributed
from finetuner.live import LiveLog, LiveLogError
from finetuner.training.batches import TrainData
from finetuner.training.loop import DivergedError
from finetuner.training.resume import ResumeStore, input_key
from finetuner.training.spill import spill_folder
from finetuner.training.strategy import drop_message, train_model

# The params this stage lists in dvc.yaml (tests/test_dvc_deps.py checks that they agree): what
# the checkpoint records as its training params, and what a resumed run must match.  An edit
# of another stage's params (evaluate.*, audit.*) does not throw a killed run's state away.
PARAMS = ("seed", "lr", "freeze_depth", "strategy", "device", "precision", "threads",
          "nproc_per_node", "model", "train", "probe")


def training_params(params) -> dict:
    """The values of :data:`PARAMS` in ``params``, as plain data."""
    values = to_dict(params)
    return {key: values[key] for key in PARAMS}


def main(prepared_dir: str, model_out: str, live_dir: str) -> None:
    params = load_arch_params()
    if params.nproc_per_node > 1 and not distributed.under_torchrun():
        distributed.relaunch_under_torchrun(params.nproc_per_node, sys.argv)  # does not return
    threads = set_threads(params.threads)
    reuse_freed_memory()
    ctx = distributed.setup(params.device)
    try:
        resolve_precision(params.precision, ctx.device)  # one the device can't use: fail now
        seed_everything(params.seed)
        data = load_prepared(prepared_dir)
        build = lambda: build_model(params.model.arch, params.model.weights,
                                    len(data.class_names), params.probe.model_layers)
        rows = TrainData.from_prepared(data, params.seed)
        resume = None
        if params.train.resume:
            key = input_key(training_params(params), prepared_dir, (Path(__file__),))
            resume = ResumeStore(key, writer=ctx.is_main)
            resume.drop_others()
        live = LiveLog(live_dir) if ctx.is_main else None
        with spill_folder() as spill:  # removed after a kill too, by the next run
            model, outcome = train_model(build, rows, params, ctx, spill_dir=spill,
                                         resume=resume, on_epoch=live.epoch if live else None)
        if ctx.is_main:
            save_checkpoint(model_out, model, params.model.arch, data.class_names,
                            data.image_size, data.crop_pct, _info(params, outcome, ctx, threads))
            live.close()
            if resume is not None:
                resume.clear()
            if outcome.probe_drop:
                print(f"finetune: warning: {drop_message(outcome.probe_drop, outcome.chosen)}")
            print(_summary(outcome, ctx, threads, model_out))
    finally:
        distributed.cleanup(ctx)


def _info(params, outcome, ctx, threads: int) -> TrainingRecord:
    """The checkpoint's record of how it was trained (evaluate reads it into eval.json)."""
    return {"params": training_params(params), "history": outcome.history,
            "best_epoch": outcome.best_epoch, "best_val_acc": outcome.best_val_acc,
            "strategy": outcome.info(), "train_seconds": outcome.seconds,
            "epochs_run": len(outcome.history), "stopped_early": outcome.stopped_early,
            "device": str(ctx.device), "precision": outcome.precision,
            "world_size": outcome.world_size, "threads_per_process": threads,
            "out_of_fold": outcome.out_of_fold}


def _summary(outcome, ctx, threads: int, model_out: str) -> str:
    """The stage's last line: what was chosen and how, from what, where, how long."""
    where = (f"{ctx.device}" if not ctx.enabled
             else f"{ctx.world_size} processes on {ctx.device.type}")
    learnt = " + ".join(f"{n} {split}" for split, n in outcome.trained_on.items())
    chosen = (f"{outcome.chosen} chosen on val (val acc {outcome.best_val_acc:.4f}"
              f"{', refit on train + val' if outcome.refit else ''})")
    cv = outcome.cross_validation
    if cv:
        Cs = ", ".join(f"{m['C']:g}" for m in cv["members"])
        estimate = (f"out-of-fold acc {outcome.best_val_acc:.4f}" if cv["folds"]
                    else "no out-of-fold estimate")
        chosen = f"{outcome.chosen}, by {cv['selection']} (C {Cs}; {estimate})"
    return (f"finetune: best epoch {outcome.best_epoch}, {chosen}, learnt from {learnt} "
            f"images in {outcome.seconds:.1f} s on {where}, {outcome.precision}, "
            f"{threads} thread(s) per process -> {model_out}")

if __name__ == "__main__":
    run_stage("finetune", main, "PREPARED_DIR MODEL_OUT LIVE_DIR",
              (WeightsError, LiveLogError, DivergedError),
              after_ctrl_c="with train.resume (the default) the same command again goes on "
                           "from the last finished epoch")
