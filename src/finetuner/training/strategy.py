"""What the finetune stage trains: the linear probe, a fine-tune, or the better of the two on val,
and then, with ``train.refit``, the chosen setup once more on train + val.

``strategy``:

* ``finetune``: :func:`~finetuner.training.loop.fit` as configured (with
  ``train.head_init: probe`` the head starts from the linear probe: LP-FT);
* ``probe``: only the linear probe on the frozen backbone's pooled features, no gradient step;
  with ``probe.folds`` (the photos preset) its L2 strength is chosen by cross-validation on
  train + val and it is fitted there at once (``probe_cv``: no val choice, so no refit);
* ``auto``: one LP-FT run; its starting point *is* the probe, so both candidates are scored on
  val for the price of one run; the probe is kept unless the fine-tune beats it on val by more
  than one standard error (:func:`_prefer_probe`).

Invariants: nothing here looks at the test split; every choice (the probe's L2 strength, the
best epoch, probe or fine-tune) is made on val, or by cross-validation on train + val.  The
refit repeats the chosen setup (same probe strength, all ``train.epochs`` with their schedule,
no early stopping) on train + val and keeps its last epoch, since no val is left to choose one
or to stop on; the numbers measured on val before the refit are then selection scores, not
estimates of the final model.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..models import StagedClassifier
from ..params import Params
from ..runtime import resolve_precision
from . import distributed
from .distributed import Dist
from .batches import TrainData
from .loop import DivergedError, fit
from .prefix import PrefixStore, merged_store
from .probe import cv_probe_heads, probe_head
from .probe_fit import C_GRID, Probe
from .resume import ResumeSlot, ResumeStore

Builder = Callable[[], StagedClassifier]
Observer = Callable[[str, StagedClassifier], None]


@dataclass(frozen=True)
class Outcome:
    """What was trained, what was chosen, and on how many images the final weights learnt.
    Frozen: each step returns a new one (``dataclasses.replace``), none is changed in place."""
    chosen: str                      # "probe" or "finetune"
    candidates: dict[str, dict]      # name -> {"val_acc", "val_loss"} on val
    history: list[dict]              # the selection run's epochs (one row for a probe)
    best_epoch: int
    seconds: float
    precision: str
    world_size: int
    probe_C: float | None
    refit: bool
    stopped_early: bool = False
    trained_on: dict[str, int] = field(default_factory=dict)  # split -> images learnt from
    refit_problem: str | None = None  # why a diverged refit was dropped
    cross_validation: dict | None = None  # the probe's choice by CV (probe.folds)
    out_of_fold: dict | None = None  # its out-of-fold log-probabilities and labels (tensors)
    probe_drop: dict | None = None  # an LP-FT that fell below its probe on val (probe_drop())
    earlier_seconds: float = 0.0  # training done before this process: resumed fits' seconds

    @property
    def best_val_acc(self) -> float:
        return self.candidates[self.chosen]["val_acc"]

    def info(self) -> dict:
        """The checkpoint's and eval.json's record of the choice."""
        return {"chosen": self.chosen, "candidates": self.candidates, "probe_C": self.probe_C,
                "refit": self.refit, "refit_problem": self.refit_problem,
                "trained_on": self.trained_on, "cross_validation": self.cross_validation,
                "probe_drop": self.probe_drop}


def _probe_only(model: StagedClassifier, data: TrainData, params: Params, ctx: Dist,
                grid: tuple[float, ...], store: PrefixStore | None) -> Probe:
    precision = resolve_precision(params.precision, ctx.device)
    model.to(ctx.device)
    budget = params.train.feature_cache_gb * 1e9
    depth = min((d for d, _ in store), default=None) if store else None  # any cached depth
    return probe_head(model, data, ctx.device, precision, budget, ctx, grid, depth, store)


def _probe_history(probe: Probe, frozen: int, seconds: float) -> list[dict]:
    """One history row for a probe, in the columns of a fine-tune's history."""
    return [{"epoch": 1, "frozen_stages": frozen, "lr": 0.0, "train_loss": probe.train_loss,
             "train_acc": probe.train_acc, "val_loss": probe.val_loss, "val_acc": probe.val_acc,
             "seconds": seconds}]


def _scores(history: list[dict], best_epoch: int) -> dict:
    row = history[best_epoch - 1]
    return {"val_acc": row["val_acc"], "val_loss": row["val_loss"]}


def train_model(build_fresh: Builder, data: TrainData, params: Params,
                ctx: Dist, progress: bool = True, observe: Observer | None = None,
                spill_dir: str | None = None, resume: ResumeStore | None = None,
                on_epoch: Callable[[str, dict], None] | None = None,
                ) -> tuple[StagedClassifier, Outcome]:
    """Build, train and choose as ``params.strategy`` says; returns the final model.

    Every model after the first starts from the first one's initial weights (its random head
    included), so the frozen-prefix outputs computed once hold for all of them.  ``observe``
    (benchmarks) is called with each candidate's name and model before the choice and refit.
    ``spill_dir``: a temporary folder for frozen-prefix caches over ``train.feature_cache_gb``.
    ``resume``: where each fit() saves its state every epoch (slots ``finetune`` and ``refit``)
    and continues from; ``on_epoch(phase, record)``: each finished epoch, e.g. a live log.
    """
    start = time.perf_counter()
    name = selection_of(params)
    if name == "auto":  # an LP-FT (its start is the probe), and so is its refit
        params = dataclasses.replace(
            params, train=dataclasses.replace(params.train, head_init="probe"))
    refit = name in REFITTED and params.train.refit and len(data.val_labels) > 0
    store = None if ctx.enabled or name not in REFITTED else PrefixStore(spill_dir)
    run = Selection(_builder(build_fresh), data, params, ctx, store, refit, start, progress,
                    observe, resume, on_epoch)  # the store: frozen-prefix outputs, reused
    model, outcome = SELECTIONS[name](run)
    if not outcome.trained_on:  # a val selection learnt from train alone (a refit adds val)
        outcome = dataclasses.replace(outcome, trained_on={"train": len(data.train_labels)})
    if run.refit:
        model, outcome = _refit_or_keep(run, model, outcome)
    seconds = time.perf_counter() - start + outcome.earlier_seconds
    return model, dataclasses.replace(outcome, seconds=seconds)


@dataclass(frozen=True)
class Selection:
    """What a selection (choosing among candidates, on val or by cross-validation) reads: the
    builder, the data, the params, the process group, the frozen-prefix store, whether a refit
    follows, and the callbacks."""
    build: Builder
    data: TrainData
    params: Params
    ctx: Dist
    store: PrefixStore | None
    refit: bool
    start: float
    progress: bool
    observe: Observer | None
    resume: ResumeStore | None
    on_epoch: Callable[[str, dict], None] | None


def _refit_or_keep(run: Selection, model: StagedClassifier, outcome: Outcome
                   ) -> tuple[StagedClassifier, Outcome]:
    """The chosen setup refitted on train + val, or, when that refit diverged, the model chosen
    on val kept (with the reason in ``refit_problem``)."""
    data, resume = run.data, run.resume
    merged = merged_store(run.store, data.views) if run.store is not None else None
    refitted, problem, seconds = _refit(run.build, data.with_val_in_train(), run.params,
                                        outcome, run.ctx, run.progress, merged,
                                        resume.slot("refit") if resume else None,
                                        _phase(run.on_epoch, "refit"))
    earlier = outcome.earlier_seconds + seconds
    if problem:  # a diverged refit: keep the model chosen on val
        print(f"finetune: warning: {problem}; keeping the model chosen on val")
        return model, dataclasses.replace(outcome, refit=False, refit_problem=problem,
                                          earlier_seconds=earlier)
    trained_on = {**outcome.trained_on, "val": len(data.val_labels)}
    return refitted, dataclasses.replace(outcome, trained_on=trained_on, earlier_seconds=earlier)


def _builder(build_fresh: Builder) -> Builder:
    """A builder whose first call returns a model built now and every later call a fresh one
    with that model's initial weights."""
    unused = [build_fresh()]
    initial = {k: v.detach().clone() for k, v in unused[0].state_dict().items()}

    def build() -> StagedClassifier:
        if unused:
            return unused.pop()
        model = build_fresh()
        model.load_state_dict(initial)
        return model
    return build


def _val_probe(run: Selection) -> tuple[StagedClassifier, Outcome]:
    """``strategy: probe`` with ``probe.folds: 0``: C chosen on val (refit afterwards)."""
    model = run.build()
    probe = _probe_only(model, run.data, run.params, run.ctx, C_GRID, run.store)
    outcome = Outcome("probe", {"probe": {"val_acc": probe.val_acc, "val_loss": probe.val_loss}},
                      _probe_history(probe, model.num_stages, time.perf_counter() - run.start),
                      1, 0.0, resolve_precision(run.params.precision, run.ctx.device).name,
                      run.ctx.world_size, probe.C, run.refit)
    _log_probe(run.on_epoch, outcome)
    return model, outcome


def _finetune_and_choose(run: Selection) -> tuple[StagedClassifier, Outcome]:
    """``strategy: finetune``, or ``auto`` (``params`` with ``head_init: probe``): one LP-FT
    run, then the probe it started from kept instead unless the fine-tune wins by the
    one-standard-error rule."""
    build, data, params, ctx, store, observe = (run.build, run.data, run.params, run.ctx,
                                                run.store, run.observe)
    model = build()
    result = fit(model, data, params, ctx.device, progress=run.progress, dist=ctx, store=store,
                 resume=run.resume.slot("finetune") if run.resume else None,
                 on_epoch=_phase(run.on_epoch, "finetune"))
    candidates = {"finetune": _scores(result.history, result.best_epoch)}
    if observe:
        observe("finetune", model)
    chosen, history, best_epoch = "finetune", result.history, result.best_epoch
    stopped_early = result.stopped_early
    if params.strategy == "auto":
        candidates["probe"], probe_model = _auto_probe(build, data, params, ctx, store,
                                                       result.probe, candidates["finetune"],
                                                       observe)
        if probe_model is not None:  # the record describes the model kept, not the one dropped
            chosen, model, best_epoch, stopped_early = "probe", probe_model, 1, False
            history = _probe_history(result.probe, model.num_stages,
                                     time.perf_counter() - run.start)
    drop = (probe_drop(result.history, result.probe.val_acc, data.val_labels,
                       params.train.freeze_bn)  # LP-FT: did it keep what its start knew?
            if result.probe is not None else None)
    return model, Outcome(chosen, candidates, history, best_epoch, 0.0, result.precision,
                          result.world_size, result.probe.C if result.probe else None,
                          run.refit, stopped_early, probe_drop=drop,
                          earlier_seconds=result.earlier_seconds)


def _cv_probe(run: Selection) -> tuple[StagedClassifier, Outcome]:
    """``strategy: probe`` with ``probe.folds``: the probe of each member fitted on train + val,
    its C chosen by cross-validation there: no val choice, so no refit."""
    model = run.build()
    outcome = _cross_validated_probe(model, run.data, run.params, run.ctx, run.start)
    _log_probe(run.on_epoch, outcome)
    return model, outcome


# which candidates each selection trains and how it chooses among them (selection_of() names
# the one params ask for); those in REFITTED choose on val, so a refit on train + val follows
SELECTIONS: dict[str, Callable[[Selection], tuple[StagedClassifier, Outcome]]] = {
    "probe_cv": _cv_probe, "probe": _val_probe, "finetune": _finetune_and_choose,
    "auto": _finetune_and_choose}
REFITTED = ("probe", "finetune", "auto")


def selection_of(params: Params) -> str:
    """The SELECTIONS entry ``params`` ask for: ``strategy``, except that ``probe`` with
    ``probe.folds`` is the cross-validated probe (``probe_cv``)."""
    if params.strategy == "probe" and params.probe.folds:
        return "probe_cv"
    return params.strategy


def _auto_probe(build: Builder, data: TrainData, params: Params, ctx: Dist,
                store: PrefixStore | None, probe: Probe, finetune: dict,
                observe: Observer | None) -> tuple[dict, StagedClassifier | None]:
    """(the probe's val scores, its model when the one-standard-error rule keeps it over the
    fine-tune's ``finetune`` scores, else None); one decision for every rank."""
    scores = {"val_acc": probe.val_acc, "val_loss": probe.val_loss}
    # one decision for every rank, even if their float arithmetic differed in a tie
    votes = distributed.all_reduce_sum(
        [float(_prefer_probe(scores, finetune, len(data.val_labels)))], ctx)[0]
    prefer = votes * 2 > ctx.world_size
    if not (prefer or observe):
        return scores, None
    probe_model = build()
    _probe_only(probe_model, data, params, ctx, (probe.C,), store)
    if observe:
        observe("probe", probe_model)
    return scores, (probe_model if prefer else None)


def _cross_validated_probe(model, data: TrainData, params: Params, ctx: Dist,
                           start: float) -> Outcome:
    """The record of :func:`_cv_probe`'s fit: each member's probe on train + val."""
    precision = resolve_precision(params.precision, ctx.device)
    record = cv_probe_heads(model, data, ctx.device, precision,
                            params.train.feature_cache_gb * 1e9, ctx, params.probe.folds,
                            params.seed, params.probe.layers == "auto")
    scores = {"val_acc": _or_nan(record["cv_acc"]), "val_loss": _or_nan(record["cv_loss"])}
    seconds = time.perf_counter() - start
    history = [{"epoch": 1, "frozen_stages": _stages(model), "lr": 0.0,
                "train_loss": record["train_loss"], "train_acc": record["train_acc"], **scores,
                "seconds": seconds}]
    log_probs, labels = record.pop("oof_log_probs"), record.pop("oof_labels")
    oof = (None if log_probs is None else
           {"log_probs": torch.from_numpy(log_probs), "labels": torch.from_numpy(labels)})
    Cs = [m["C"] for m in record["members"]]
    return Outcome("probe", {"probe": scores}, history, 1, seconds, precision.name,
                   ctx.world_size, Cs[0] if len(Cs) == 1 else None, False,
                   trained_on={"train": len(data.train_labels), "val": len(data.val_labels)},
                   cross_validation=record, out_of_fold=oof)


def _or_nan(value: float | None) -> float:
    return float("nan") if value is None else value


def _log_probe(on_epoch: Callable[[str, dict], None] | None, outcome: Outcome) -> None:
    """A probe trains no epochs: its one history row (its fit on the training rows, its val or
    out-of-fold scores) is the live log's one step, so the log (an output DVC expects) exists
    for every strategy, train and val curves both (`dvc plots diff` reads both)."""
    if on_epoch:
        on_epoch("finetune", outcome.history[0])


def _stages(model) -> int:
    """Every stage of the model (of each member): a probe freezes them all."""
    return min(m.num_stages for m in getattr(model, "members", [model]))


def _phase(on_epoch: Callable[[str, dict], None] | None, name: str):
    return (lambda record: on_epoch(name, record)) if on_epoch else None


def probe_drop(history: list[dict], probe_val_acc: float, val_labels,
               freeze_bn: bool = True) -> dict | None:
    """An LP-FT's worst fall below the linear probe it started from, on val: None when every
    epoch kept the probe's val accuracy within two standard errors (at least two photos), else
    ``{"probe_val_acc", "epoch", "val_acc", "majority", "collapsed", "freeze_bn"}``, where
    ``collapsed`` says the epoch did no better than predicting val's most common class (+ two
    photos) and ``freeze_bn`` is the run's ``train.freeze_bn`` (what to change depends on it).
    A fall is reported, never acted on: the best epoch and the probe-or-fine-tune choice stay.
    """
    n = len(val_labels)
    if not n or not history or math.isnan(probe_val_acc):
        return None
    worst = min(history, key=lambda row: row["val_acc"])
    error = max(2 * math.sqrt(probe_val_acc * (1 - probe_val_acc) / n), 2 / n)
    if worst["val_acc"] >= probe_val_acc - error - 1e-9:  # exactly two photos: kept
        return None
    majority = torch.as_tensor(val_labels).bincount().max().item() / n
    return {"probe_val_acc": probe_val_acc, "epoch": worst["epoch"], "val_acc": worst["val_acc"],
            "majority": majority, "collapsed": worst["val_acc"] <= majority + 2 / n + 1e-9,
            "freeze_bn": freeze_bn}


def drop_message(drop: dict, chosen: str = "finetune") -> str:
    """One line for the finetune stage's output, with the first thing to change: BatchNorm
    statistics move whatever the learning rate (docs/strategies.md), so with them training
    ``train.freeze_bn: true``, else a lower ``lr`` / ``train.backbone_lr_mult``.  ``chosen``:
    the candidate kept; when it is the probe the line says so (the fall is still reported)."""
    what = (f"collapsed (predicting the most common class gives {drop['majority']:.3f})"
            if drop["collapsed"] else "lost what the probe knew")
    fix = ("train.freeze_bn: true keeps the BatchNorm statistics the probe was fitted with"
           if not drop.get("freeze_bn", True) else "a lower lr or train.backbone_lr_mult")
    return (f"the fine-tune started from the linear probe (val acc {drop['probe_val_acc']:.3f}) "
            f"and {what}: val acc {drop['val_acc']:.3f} after epoch {drop['epoch']}; try "
            f"{fix} (docs/strategies.md)"
            + ("; the probe was kept, so the model is not affected" if chosen == "probe" else ""))


def _prefer_probe(probe: dict, finetune: dict, n_val: int) -> bool:
    """The one-standard-error rule (Breiman et al., as in choosing a tree's size by CV): the
    simpler model, the probe, is kept unless the fine-tune's val accuracy is higher by more
    than that accuracy's standard error on ``n_val`` photos (at least one photo's worth)."""
    accuracy = finetune["val_acc"]
    error = max(math.sqrt(accuracy * (1 - accuracy) / max(1, n_val)), 1 / max(1, n_val))
    return probe["val_acc"] >= accuracy - error


# how far the refit's last-epoch train accuracy may fall below the chosen epoch's: further
# means it diverged (no val is left to notice), and the model chosen on val is kept
REFIT_TOLERANCE = 0.1


def _refit(build: Callable[[], StagedClassifier], data: TrainData, params: Params,
           outcome: Outcome, ctx: Dist, progress: bool, store: PrefixStore | None,
           resume: ResumeSlot | None = None, on_epoch: Callable[[dict], None] | None = None,
           ) -> tuple[StagedClassifier, str | None, float]:
    """The chosen setup again, from the pretrained weights, on ``data`` (train + val); the
    frozen-prefix outputs of the selection run are reused (same starting weights).  Returns
    the model, why the refit diverged (None when it did not), and the seconds an earlier,
    resumed process spent on it."""
    grid = (outcome.probe_C,) if outcome.probe_C is not None else C_GRID
    model = build()
    if outcome.chosen == "probe":
        _probe_only(model, data, params, ctx, grid, store)
        return model, None, 0.0
    try:
        result = fit(model, data, params, ctx.device, progress=progress, dist=ctx,
                     probe_grid=grid, store=store, resume=resume, on_epoch=on_epoch)
    except DivergedError as error:
        return model, f"the refit on train + val diverged: {error}", error.earlier_seconds
    chosen_run = outcome.history[outcome.best_epoch - 1]["train_acc"]
    if result.history[-1]["train_acc"] < chosen_run - REFIT_TOLERANCE:
        return model, (f"the refit on train + val ended at train accuracy "
                       f"{result.history[-1]['train_acc']:.3f}, the run chosen on val at "
                       f"{chosen_run:.3f}"), result.earlier_seconds
    return model, None, result.earlier_seconds

