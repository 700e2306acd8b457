"""The training loop as named steps: setup, entering a frozen depth, one epoch, validation,
the best epoch, and the state a killed fit resumes from.

The prepared data's way through training: the finetune stage wraps the prepared folder as
:class:`~finetuner.training.batches.TrainData` and hands it to
:func:`finetuner.training.strategy.train_model`, which calls :func:`fit` (and
:func:`finetuner.training.probe.probe_head`); each epoch :func:`fit` draws the batches
(:func:`~finetuner.training.batches.epoch_batches`) and gets their frozen-prefix outputs from
:class:`~finetuner.training.prefix.FrozenPrefix` (cached, or read by the loader), and the
trainable rest takes the step here.

Devices and precision: the model and the per-batch data go to ``device``; on CUDA the uint8
batches are gathered into pinned memory and copied asynchronously.  ``precision`` (see
:func:`finetuner.runtime.resolve_precision`) runs the forward passes under autocast, with a
GradScaler for fp16.  Several processes (torchrun): see :mod:`finetuner.training.distributed`;
with one process nothing of it applies.
"""
from __future__ import annotations

import copy
import gc
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..arch_params import freeze_depth as resolved_freeze_depth
from ..data.rows import RangeRows, Rows
from ..models import StagedClassifier
from ..params import Params, ParamsError
from ..runtime import resolve_precision
from . import distributed
from .batches import TrainData, batch_sizes, class_weights, epoch_batches, loader_workers
from .distributed import Dist
from .freeze import depth_at_epoch, set_frozen_prefix, train_mode
from .optim import lr_multiplier, make_optimizer, set_lr, unfreeze
from .prefix import FrozenPrefix, PrefixStore, prefix_for
from .probe import probe_head
from .probe_fit import C_GRID, Probe
from .resume import DoneState, EpochState, ResumeSlot, rng_state, set_rng_state


class DivergedError(ValueError):
    """An epoch's mean training loss is not a finite number: the run stops, and nothing of that
    epoch is kept (the resume state still holds the epoch before).  ``earlier_seconds``: the
    training an earlier, resumed process had done on this fit (set by :func:`fit`)."""

    earlier_seconds: float = 0.0


def _diverged(loss: float, epoch: int, epochs: int, lr: float, rate: float) -> DivergedError:
    """The error for a non-finite mean training loss in ``epoch`` (1-based): one line.  ``lr``:
    the params' lr; ``rate``: the head's at the epoch's start (after warmup and schedule)."""
    kept = f"the state after epoch {epoch - 1} is kept" if epoch > 1 else "nothing is kept"
    now = f" (the schedule's {rate:g} at the epoch's start)" if not math.isclose(rate, lr) else ""
    return DivergedError(f"epoch {epoch} of {epochs}: the training loss is {loss}: training "
                         f"diverged at lr {lr:g}{now}; {kept}, and a rerun with the same "
                         "params diverges again: lower lr")


@dataclass
class FitResult:
    history: list[dict]
    best_epoch: int
    best_state: dict
    stopped_early: bool
    seconds: float
    lrs: list[list[float]] = field(default_factory=list)  # per epoch, each group's starting lr
    precision: str = "fp32"  # what the forward passes ran in (fp32, bf16, fp16)
    world_size: int = 1      # data-parallel processes
    probe: Probe | None = None  # the head's starting point with train.head_init: probe
    earlier_seconds: float = 0.0  # of ``seconds``, those spent before this process (resumed)


@torch.no_grad()
def evaluate_split(model: StagedClassifier, prefix: FrozenPrefix, labels: torch.Tensor,
                   batch_size: int, device: torch.device) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of ``model`` in eval mode."""
    model.eval()
    total_loss, correct = 0.0, 0
    for start in range(0, len(labels), batch_size):
        index = torch.arange(start, min(start + batch_size, len(labels)))
        target = labels[index].to(device)
        logits = model.forward_trainable(prefix(index), prefix.depth)
        total_loss += F.cross_entropy(logits.float(), target, reduction="sum").item()
        correct += (logits.argmax(1) == target).sum().item()
    return total_loss / max(1, len(labels)), correct / max(1, len(labels))


def validate(model: StagedClassifier, prefix: FrozenPrefix, labels: torch.Tensor,
             device: torch.device, precision, ctx: Dist, batch_size: int) -> tuple[float, float]:
    """(loss, accuracy) on val; with several processes each holds a slice: counts summed.
    Batches of the training batch size: an eval pass of that size needs less memory than the
    training step it follows, so memory does not grow with val (Lite0 at 96 px peaked at
    1,495 MB evaluating 256 images, 1,322 MB training on 32, 849 MB evaluating 32)."""
    with precision.autocast():
        loss, accuracy = evaluate_split(model, prefix, labels, batch_size, device)
    if ctx.enabled:
        n = len(labels)
        loss_sum, right, count = distributed.all_reduce_sum([loss * n, accuracy * n, n], ctx)
        loss, accuracy = loss_sum / max(1, count), round(right) / max(1, count)
    return loss, accuracy


def _better(monitor: str, value: float, best: float | None) -> bool:
    """Whether ``value`` of ``monitor`` beats ``best``; a non-finite value (a validation
    overflowing in fp16) beats nothing but a non-finite best, and nothing beats a finite one."""
    if best is None or (not math.isfinite(best) and math.isfinite(value)):
        return True
    return value > best if monitor == "val_acc" else value < best


def _average_batchnorm_stats(model: StagedClassifier, ctx: Dist) -> None:
    """Running statistics of the BatchNorm layers that trained, averaged over the ranks."""
    norms = [m for m in model.modules()
             if isinstance(m, torch.nn.modules.batchnorm._NormBase) and m.training
             and m.track_running_stats]
    for norm in norms:
        distributed.average_buffers(norm, ctx)


@dataclass
class _Run:
    """What one fit() carries from epoch to epoch: fixed setup, then the state that moves (the
    frozen depth, its DDP wrapper and frozen-prefix outputs, the step count)."""
    model: StagedClassifier
    data: TrainData
    params: Params
    ctx: Dist
    precision: object
    budget: float
    store: PrefixStore | None
    val_images: Rows          # this rank's share of val
    val_labels: torch.Tensor
    workers: int
    depth_of: Callable[[int], int]
    multiplier: Callable[[int], float]
    weight_cpu: torch.Tensor | None
    bar: tqdm
    optimizer: torch.optim.Optimizer | None = None
    scaler: object = None
    depth: int = 0
    trainable: torch.nn.Module | None = None
    train_prefix: FrozenPrefix | None = None
    val_prefix: FrozenPrefix | None = None
    step: int = 0

    @property
    def device(self) -> torch.device:
        return self.ctx.device

    @property
    def validating(self) -> bool:
        return len(self.data.val_labels) > 0


@dataclass
class _Best:
    """The best epoch so far by ``monitor`` and its weights; counts epochs without progress."""
    monitor: str
    patience: int
    value: float | None = None
    epoch: int = 0
    state: dict | None = None
    stale: int = 0

    def update(self, record: dict, model: StagedClassifier, validating: bool) -> bool:
        """Keep ``record``'s epoch if it is the best; True when early stopping says stop."""
        if not validating:
            self.epoch = record["epoch"]  # no val: the last epoch is the result
            return False
        if _better(self.monitor, record[self.monitor], self.value):
            self.value, self.epoch, self.stale = record[self.monitor], record["epoch"], 0
            self.state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
            return False
        self.stale += 1
        return bool(self.patience) and self.stale >= self.patience


@dataclass
class _Progress:
    """What a fit() has done so far, and what a resumed one takes over from the saved state:
    the epochs' records and starting lrs, the best epoch, the probe the head started from."""
    best: _Best
    history: list[dict] = field(default_factory=list)
    lrs: list[list[float]] = field(default_factory=list)
    probe: Probe | None = None
    stopped_early: bool = False
    first: int = 0              # the first epoch still to train
    earlier_seconds: float = 0.0
    rng: dict | None = None     # the random state to continue from, once the prefix is ready


def _start(model: StagedClassifier, data: TrainData, params: Params, ctx: Dist,
           use_cache: bool, store: PrefixStore | None, progress: bool) -> _Run:
    """Model on the device, the schedule, class weights, this rank's val share: the setup."""
    t, device = params.train, ctx.device
    model.to(device).to(memory_format=torch.channels_last)
    distributed.sync_batchnorm(model, ctx)  # SyncBatchNorm on several CUDA processes
    n_train = len(data.train_labels)
    if ctx.enabled and n_train < 2 * ctx.world_size:
        raise ParamsError(f"{n_train} training images cannot be shared by {ctx.world_size} "
                          "processes (at least 2 each); use nproc_per_node: 1")
    if ctx.enabled and t.batch_size < 2 * ctx.world_size:  # BatchNorm over one row: noise
        raise ParamsError(f"train.batch_size {t.batch_size} cannot be shared by "
                          f"{ctx.world_size} processes (at least 2 rows each); allowed: "
                          f"{2 * ctx.world_size} or more, or fewer processes")
    steps_per_epoch = max(1, len(batch_sizes(n_train, t.batch_size, ctx.world_size)))
    total_steps = steps_per_epoch * t.epochs
    num_stages = model.num_stages
    freeze_depth = resolved_freeze_depth(params.freeze_depth, num_stages)
    val_start, val_stop = distributed.chunk(len(data.val_labels), ctx)  # this rank's val rows
    if ctx.enabled:
        store = None  # each rank holds a slice of val: nothing to share between runs
    elif store is None:
        store = PrefixStore()
    precision = resolve_precision(params.precision, device)
    return _Run(
        model, data, params, ctx, precision, t.feature_cache_gb * 1e9 if use_cache else 0.0,
        store, RangeRows(data.val_images, val_start, val_stop), data.val_labels[val_start:val_stop],
        loader_workers(t.loader_workers, device),
        lambda epoch: depth_at_epoch(epoch, freeze_depth, num_stages, t.head_epochs,
                                     t.unfreeze_every, t.unfreeze_floor),
        lambda step: lr_multiplier(t.schedule, step, total_steps, steps_per_epoch,
                                   t.warmup_epochs * steps_per_epoch, t.step_size, t.gamma),
        class_weights(data.train_labels, data.num_classes)
        if t.class_balance == "weighted_loss" else None,
        tqdm(total=total_steps, desc="finetune", unit="batch",
             disable=not (progress and ctx.is_main), mininterval=1.0, leave=False),
        scaler=precision.grad_scaler())


def _enter_depth(run: _Run, depth: int) -> None:
    """Train from ``depth`` on: unfreeze what thaws (new optimizer groups), wrap for DDP what
    trains now, and get the frozen prefix's outputs (computed, or from the store)."""
    t, model = run.params.train, run.model
    if depth == run.depth and run.train_prefix is not None:
        return
    if depth < run.depth:
        unfreeze(run.optimizer, model, run.depth, depth, run.params.lr, t.weight_decay,
                 t.backbone_lr_mult, t.stage_lr_decay)
    run.depth = depth
    set_frozen_prefix(model, depth)
    if run.trainable is not None and run.ctx.enabled:
        run.trainable = None
        gc.collect()  # the old DDP wrapper's gradient hooks must be gone
    run.trainable = distributed.wrap(model, depth, run.ctx)  # DDP registers what trains now
    model.eval()
    # only the first depth's outputs are kept for other runs: one cache at a time
    shared = run.store if depth == run.depth_of(0) else None
    with run.precision.autocast():
        run.train_prefix = prefix_for(shared, "train", model, run.data.train_images, depth,
                                      run.device, run.budget, run.ctx)
        run.val_prefix = prefix_for(shared, "val", model, run.val_images, depth, run.device,
                                    run.budget)


def _train_epoch(run: _Run, epoch: int) -> tuple[float, float]:
    """One pass over the training rows; (mean loss, accuracy) over every process's share."""
    t, ctx, device, data = run.params.train, run.ctx, run.device, run.data
    train_mode(run.model, run.depth, t.freeze_bn)
    view_labels = data.view_labels
    weight = run.weight_cpu.to(device) if run.weight_cpu is not None else None
    # summed on the device: no host synchronisation per step (it stalls a GPU)
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    seen = 0
    batches = epoch_batches(data, epoch, run.params.seed, t.batch_size,
                            t.class_balance == "sampler", ctx.world_size)
    local_batches = [distributed.shard(index, ctx) for index in batches]
    feed = run.train_prefix.epoch(local_batches, view_labels, epoch, run.params.seed, data.mix,
                                  run.workers)
    for index, local, (x, target) in zip(batches, local_batches, feed):
        # the global batch's mean loss: summed here, divided by the whole batch's size (or
        # weight); DDP averages gradients over ranks, hence * world_size
        denom = (float(run.weight_cpu[view_labels[index]].sum()) if weight is not None
                 else float(len(index)))
        loss_sum, logits = _step(run, x, target, weight, denom)
        total_loss += loss_sum.detach() * (len(index) / denom)
        hard = target.argmax(1) if target.dim() == 2 else target  # mixed: the larger part
        correct += (logits.argmax(1) == hard).sum()
        seen += len(local)
        run.bar.update()
    total_loss, correct = total_loss.item(), correct.item()
    if ctx.enabled:
        _average_batchnorm_stats(run.model, ctx)
        total_loss, correct, seen = distributed.all_reduce_sum([total_loss, correct, seen], ctx)
    return total_loss / max(1, seen), correct / max(1, seen)


def _step(run: _Run, x: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None,
          denom: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on this process's share ``x`` of a global batch whose loss is divided
    by ``denom``, at the step's lr: (the share's summed loss, its logits)."""
    set_lr(run.optimizer, run.multiplier(run.step))
    with run.precision.autocast():
        logits = run.trainable(x)
    loss_sum = F.cross_entropy(logits.float(), target, weight=weight,
                               label_smoothing=run.params.train.label_smoothing, reduction="sum")
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss_sum * (run.ctx.world_size / denom)).backward()
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.step += 1
    return loss_sum, logits


def _probe_state(probe: Probe | None) -> dict | None:
    if probe is None:
        return None
    return {"weight": torch.from_numpy(probe.weight), "bias": torch.from_numpy(probe.bias),
            "C": probe.C, "val_acc": probe.val_acc, "val_loss": probe.val_loss,
            "train_acc": probe.train_acc, "train_loss": probe.train_loss}


def _probe_from(state: dict | None) -> Probe | None:
    if state is None:
        return None
    return Probe(state["weight"].numpy(), state["bias"].numpy(), state["C"], state["val_acc"],
                 state["val_loss"], state.get("train_acc", math.nan),
                 state.get("train_loss", math.nan))


def _epoch_state(run: _Run, epochs_done: int, went: _Progress, seconds: float) -> EpochState:
    """Everything fit() needs to go on after ``epochs_done`` epochs as if never stopped."""
    best = went.best
    return {"done": False, "epochs_done": epochs_done, "stopped_early": went.stopped_early,
            "model": {k: v.detach().cpu() for k, v in run.model.state_dict().items()},
            "optimizer": run.optimizer.state_dict(), "scaler": run.scaler.state_dict(),
            "step": run.step, "history": went.history, "lrs": went.lrs,
            "best": {"value": best.value, "epoch": best.epoch, "state": best.state,
                     "stale": best.stale},
            "probe": _probe_state(went.probe), "seconds": seconds, "rng": rng_state()}


def _restore(run: _Run, best: _Best, saved: EpochState) -> None:
    """Put ``run`` and ``best`` where ``saved`` left them: the optimizer gets the parameter
    groups the frozen depths so far gave it, then the saved moments, step and weights."""
    t = run.params.train
    for epoch in range(saved["epochs_done"]):
        depth = run.depth_of(epoch)
        if depth < run.depth:
            unfreeze(run.optimizer, run.model, run.depth, depth, run.params.lr, t.weight_decay,
                     t.backbone_lr_mult, t.stage_lr_decay)
            run.depth = depth
    run.model.load_state_dict(saved["model"])
    run.optimizer.load_state_dict(saved["optimizer"])
    run.scaler.load_state_dict(saved["scaler"])
    run.step = saved["step"]
    b = saved["best"]
    best.value, best.epoch, best.state, best.stale = b["value"], b["epoch"], b["state"], b["stale"]
    run.bar.update(saved["step"])


def _finished(model: StagedClassifier, saved: DoneState,
              on_epoch: Callable[[dict], None] | None) -> FitResult:
    """The result a fit() saved when it ended, its weights put back into ``model``."""
    model.load_state_dict(saved["final"])
    for record in saved["history"]:
        if on_epoch:
            on_epoch(record)
    return FitResult(saved["history"], saved["best_epoch"], saved["final"],
                     saved["stopped_early"], saved["seconds"], saved["lrs"],
                     saved["precision"], saved["world_size"], _probe_from(saved["probe"]),
                     earlier_seconds=saved["seconds"])


def _begin(run: _Run, saved: EpochState | None, probe_grid: tuple[float, ...],
           resume: ResumeSlot | None, on_epoch: Callable[[dict], None] | None) -> _Progress:
    """Before the first epoch: the probe (LP-FT), the frozen depth and the optimizer; or, with
    a ``saved`` state, everything put back where it was (its records replayed to ``on_epoch``)."""
    model, t = run.model, run.params.train
    went = _Progress(_Best(t.monitor, t.early_stopping_patience))
    if t.head_init == "probe" and saved is None:
        went.probe = probe_head(model, run.data, run.device, run.precision, run.budget, run.ctx,
                                probe_grid, run.depth_of(0), run.store)
    run.depth = run.depth_of(0)
    set_frozen_prefix(model, run.depth)
    run.optimizer = make_optimizer(model, run.depth, t.optimizer, run.params.lr, t.momentum,
                                   t.weight_decay, t.backbone_lr_mult, t.stage_lr_decay)
    if saved is None:
        return went
    _restore(run, went.best, saved)
    went.first, went.history, went.lrs = saved["epochs_done"], saved["history"], saved["lrs"]
    went.probe, went.stopped_early = _probe_from(saved["probe"]), saved["stopped_early"]
    went.earlier_seconds, went.rng = saved["seconds"], saved["rng"]
    for record in went.history:
        if on_epoch:
            on_epoch(record)
    if run.ctx.is_main:
        print(f"finetune: resuming '{resume.name}' after epoch {went.first} of {t.epochs} "
              f"({resume.path})")
    return went


def _epoch(run: _Run, epoch: int, went: _Progress) -> dict:
    """Train one epoch at its frozen depth and validate: the epoch's record.  A non-finite
    training loss raises :class:`DivergedError` before anything of the epoch is kept."""
    _enter_depth(run, run.depth_of(epoch))
    if went.rng is not None:  # after the frozen prefix is computed, as in a run never stopped
        set_rng_state(went.rng)
        went.rng = None
    epoch_start = time.perf_counter()
    set_lr(run.optimizer, run.multiplier(run.step))
    went.lrs.append([g["lr"] for g in run.optimizer.param_groups])  # what it really holds
    train_loss, train_acc = _train_epoch(run, epoch)
    if not math.isfinite(train_loss):
        run.bar.close()
        raise _diverged(train_loss, epoch + 1, run.params.train.epochs, run.params.lr,
                        went.lrs[-1][0])
    val_loss, val_acc = (validate(run.model, run.val_prefix, run.val_labels, run.device,
                                  run.precision, run.ctx, run.params.train.batch_size)
                         if run.validating else (math.nan, math.nan))
    run.bar.set_postfix(epoch=epoch + 1, val_acc=f"{val_acc:.3f}", refresh=False)
    return {"epoch": epoch + 1, "frozen_stages": run.depth, "lr": went.lrs[-1][0],
            "train_loss": train_loss, "train_acc": train_acc, "val_loss": val_loss,
            "val_acc": val_acc, "seconds": time.perf_counter() - epoch_start}


def _end(run: _Run, went: _Progress, seconds: float, resume: ResumeSlot | None) -> FitResult:
    """The result: the best epoch's weights put into the model (the last epoch's without val),
    and saved as done for a rerun to return at once."""
    run.bar.close()
    run.trainable = None
    best = went.best
    if run.validating:
        run.model.load_state_dict(best.state)
    else:
        best.state = {k: v.detach().cpu().clone() for k, v in run.model.state_dict().items()}
    result = FitResult(went.history, best.epoch, best.state, went.stopped_early, seconds,
                       went.lrs, run.precision.name, run.ctx.world_size, went.probe,
                       went.earlier_seconds)
    if resume is not None:
        resume.save({"done": True, "final": result.best_state, "history": went.history,
                     "best_epoch": result.best_epoch, "stopped_early": went.stopped_early,
                     "seconds": result.seconds, "lrs": went.lrs, "precision": result.precision,
                     "world_size": result.world_size, "probe": _probe_state(went.probe)})
    return result


def fit(model: StagedClassifier, data: TrainData, params: Params, device: torch.device,
        progress: bool = True, use_cache: bool = True, dist: Dist | None = None,
        probe_grid: tuple[float, ...] = C_GRID, store: PrefixStore | None = None,
        resume: ResumeSlot | None = None,
        on_epoch: Callable[[dict], None] | None = None) -> FitResult:
    """Train ``model`` in place; return the history and the best epoch's weights (the last
    epoch's when ``data`` has no val).

    With ``train.head_init: probe`` the new head starts from the linear probe (its L2 strength
    chosen on val from ``probe_grid``) before the first step: LP-FT.  ``store``: frozen-prefix
    outputs shared with other runs from the same starting weights (see :class:`PrefixStore`).
    ``dist``: this process's place among data-parallel processes
    (:func:`finetuner.training.distributed.setup`); None is one process on ``device``.  Every
    rank returns the same result; the caller writes files on rank 0 only.
    ``resume``: where the training state is saved after every epoch; a state found there (of
    the same inputs: :mod:`finetuner.training.resume`) is continued from, and gives the same
    weights as a run never stopped.  ``on_epoch``: called with each finished epoch's record
    (the resumed epochs' too, first), e.g. a live log.  An epoch whose mean training loss is
    not finite raises :class:`DivergedError` before anything of it is saved.
    """
    ctx = dist if dist is not None else Dist(device)
    start_time = time.perf_counter()
    run = _start(model, data, params, ctx, use_cache, store, progress)
    saved = resume.load() if resume is not None else None
    if saved is not None and saved["done"]:
        run.bar.close()
        return _finished(model, saved, on_epoch)
    went = _begin(run, saved, probe_grid, resume, on_epoch)
    seconds = lambda: went.earlier_seconds + time.perf_counter() - start_time  # noqa: E731
    for epoch in range(went.first, params.train.epochs if not went.stopped_early else went.first):
        try:
            record = _epoch(run, epoch, went)
        except DivergedError as error:
            error.earlier_seconds = went.earlier_seconds
            raise
        went.history.append(record)
        went.stopped_early = went.best.update(record, model, run.validating)
        if resume is not None:
            resume.save(_epoch_state(run, epoch + 1, went, seconds()))
        if on_epoch:
            on_epoch(record)
        if went.stopped_early:
            break
    return _end(run, went, seconds(), resume)
