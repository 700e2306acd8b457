"""The linear probe's fitting, on feature arrays alone (numpy and scikit-learn; torch only to
copy a fitted probe into a head): an exact softmax head on frozen, pooled backbone features.

scikit-learn's ``LogisticRegression`` (L-BFGS, multinomial, L2) fits the head; its L2 strength
``C`` is chosen from a fixed grid, so nothing is tuned by hand per data set: on the validation
features (:func:`fit_probe`: best accuracy, ties broken by the lower log-loss), or by k-fold
cross-validation on every labelled training image (:func:`fit_probe_cv`: the best mean
out-of-fold log-likelihood, ties to the stronger penalty), after which the probe is fitted on
all of them.  Features are standardised for the solver and the scaling is folded back into
the weights, so the result is a plain ``nn.Linear`` on the raw features:
``features @ weight.T + bias`` gives the probe's logits.

Invariants: the probe's logits have the same argmax as ``LogisticRegression.predict`` on the
same features; a two-class probe is written as two symmetric rows (``-w/2``, ``+w/2``), which
gives the same probabilities as scikit-learn's single logistic row.  scikit-learn is imported
where a probe is fitted: a finetune stage that fits none starts about 1.6 s sooner.
"""
from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass

import numpy as np
import torch

C_GRID = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
# by cross-validation (standardised features of 1,472-1,488 dimensions a member): the chosen C
# was 0.03-0.3 on TrashNet and chest X-rays, up to 1 (the top of a grid that ended there) on
# ants/bees, and 3-10 on the demo's digits when the grid went on to 100 (docs/recipe.md)
CV_GRID = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0)


@dataclass(frozen=True)
class Probe:
    """A fitted head: logits = features @ weight.T + bias."""
    weight: np.ndarray  # (classes, features)
    bias: np.ndarray    # (classes,)
    C: float            # inverse L2 strength it was fitted with
    val_acc: float      # on the validation features (nan when none were given)
    val_loss: float
    train_acc: float = float("nan")   # on the features it was fitted on (how well it fits)
    train_loss: float = float("nan")

    def logits(self, features: np.ndarray) -> np.ndarray:
        return features @ self.weight.T + self.bias

    def load_into(self, linear: torch.nn.Linear) -> None:
        """Copy the probe into ``linear`` (same class count and feature size)."""
        with torch.no_grad():
            linear.weight.copy_(torch.as_tensor(self.weight, dtype=linear.weight.dtype))
            linear.bias.copy_(torch.as_tensor(self.bias, dtype=linear.bias.dtype))


def _fit(features: np.ndarray, labels: np.ndarray, num_classes: int, C: float,
         mean: np.ndarray, scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(weight, bias) on raw features of a logistic regression fitted on standardised ones."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    model = LogisticRegression(C=C, max_iter=2000, tol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit((features - mean) / scale, labels)
    coef = np.zeros((num_classes, features.shape[1]))
    intercept = np.zeros(num_classes)
    if len(model.classes_) == 2:  # one logistic row: split it symmetrically over two classes
        rows = np.stack([-model.coef_[0] / 2, model.coef_[0] / 2])
        intercepts = np.array([-model.intercept_[0] / 2, model.intercept_[0] / 2])
    else:
        rows, intercepts = model.coef_, model.intercept_
    present = model.classes_.astype(int)
    coef[present], intercept[present] = rows, intercepts
    if len(present) < num_classes:  # a class without training features never wins
        intercept[np.setdiff1d(np.arange(num_classes), present)] = -1e4
    weight = coef / scale
    return weight.astype(np.float32), (intercept - weight @ mean).astype(np.float32)


def _standardiser(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = features.mean(0)
    scale = features.std(0)
    return mean, np.where(scale > 1e-6, scale, 1.0)


def scores(probabilities: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(accuracy, log-loss) of class ``probabilities`` against ``labels``."""
    from sklearn.metrics import log_loss
    accuracy = float((probabilities.argmax(1) == labels).mean())
    return accuracy, float(log_loss(labels, probabilities,
                                    labels=list(range(probabilities.shape[1]))))


def _score(weight: np.ndarray, bias: np.ndarray, features: np.ndarray, labels: np.ndarray,
           num_classes: int) -> tuple[float, float]:
    from scipy.special import softmax
    return scores(softmax(features @ weight.T + bias, axis=1), labels)


def fit_probe(train_features: np.ndarray, train_labels: np.ndarray, num_classes: int,
              val_features: np.ndarray | None = None, val_labels: np.ndarray | None = None,
              grid: tuple[float, ...] = C_GRID) -> Probe:
    """Fit the probe on ``train_features``; with val features, choose ``C`` on them.

    Without val features (or with one value in ``grid``) the first ``C`` of ``grid`` is used.
    """
    train_features = np.asarray(train_features, dtype=np.float64)
    mean, scale = _standardiser(train_features)
    has_val = val_features is not None and len(val_features) > 0
    best = None
    for C in grid if has_val else grid[:1]:
        weight, bias = _fit(train_features, train_labels, num_classes, C, mean, scale)
        if has_val:
            acc, loss = _score(weight, bias, np.asarray(val_features, np.float64), val_labels,
                               num_classes)
        else:
            acc, loss = float("nan"), float("nan")
        if best is None or (acc, -loss) > (best.val_acc, -best.val_loss):
            best = Probe(weight, bias, C, acc, loss)
    fit_acc, fit_loss = _score(best.weight, best.bias, train_features, train_labels, num_classes)
    return dataclasses.replace(best, train_acc=fit_acc, train_loss=fit_loss)


@dataclass(frozen=True)
class CrossValidated:
    """A probe chosen by cross-validation, and its out-of-fold class probabilities of each
    image's first row (its evaluation view), in image order: honest scores of the training
    images, each predicted by a probe that did not learn from it."""
    probe: Probe        # val_acc / val_loss: out-of-fold accuracy and log-loss
    oof: np.ndarray     # (images, classes)
    folds: int
    columns: str = "all"  # "all" the features given, or "last": only their last columns
    path: tuple[tuple[float, float, float], ...] = ()  # (C, out-of-fold log-loss, accuracy)
    #                                                    for each C of the grid, ascending


def fit_probe_cv_columns(features: np.ndarray, labels: np.ndarray, groups: np.ndarray,
                         num_classes: int, last: int, folds: int = 5,
                         grid: tuple[float, ...] = CV_GRID, seed: int = 0) -> CrossValidated:
    """:func:`fit_probe_cv` on every column and on the ``last`` columns alone (the last
    stage's pooled features of a ``layers: all`` model), same folds; the better out-of-fold
    log-likelihood is kept (ties: every column).  A probe of the last columns gets zero
    weights on the others, so it is a head of the same width: ``logits(features)`` holds.
    Whatever is chosen, it is chosen on ``features`` and ``labels`` alone."""
    every = fit_probe_cv(features, labels, groups, num_classes, folds, grid, seed)
    width = np.asarray(features).shape[1]
    if not 0 < last < width or not every.folds:
        return every
    alone = fit_probe_cv(np.asarray(features)[:, width - last:], labels, groups, num_classes,
                         folds, grid, seed)
    if alone.probe.val_loss >= every.probe.val_loss:
        return every
    weight = np.zeros((num_classes, width), np.float32)
    weight[:, width - last:] = alone.probe.weight
    return CrossValidated(dataclasses.replace(alone.probe, weight=weight), alone.oof,
                          alone.folds, "last", alone.path)


def fit_probe_cv(features: np.ndarray, labels: np.ndarray, groups: np.ndarray,
                 num_classes: int, folds: int = 5, grid: tuple[float, ...] = CV_GRID,
                 seed: int = 0) -> CrossValidated:
    """Choose ``C`` by ``folds``-fold cross-validation, then fit on every row.

    ``groups``: the image of each row (an image's stored views share one, ascending from 0,
    its first row its evaluation view); the folds are stratified by class and never split an
    image.  Only the evaluation view of a held-out image is scored.  With fewer than two images
    in some class no fold can hold it out: the middle of ``grid`` is used and ``oof`` is nan.
    Deterministic for a ``seed``; reads nothing but its arguments.
    """
    features, grid = np.asarray(features, dtype=np.float64), tuple(sorted(grid))
    labels, groups = np.asarray(labels), np.asarray(groups)
    first = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])  # each image's first row
    counts = np.bincount(labels[first], minlength=num_classes)
    folds = int(min(folds, counts[counts > 0].min()))
    mean, scale = _standardiser(features)
    if folds < 2:
        C = grid[len(grid) // 2]
        weight, bias = _fit(features, labels, num_classes, C, mean, scale)
        nan = np.full((len(first), num_classes), np.nan)
        return CrossValidated(Probe(weight, bias, C, float("nan"), float("nan")), nan, 0)
    z = (features - mean) / scale
    oof = np.zeros((len(grid), len(first), num_classes))
    from sklearn.model_selection import StratifiedGroupKFold
    splitter = StratifiedGroupKFold(folds, shuffle=True, random_state=seed)
    for fit_rows, held_rows in splitter.split(z, labels, groups):
        held = np.searchsorted(first, held_rows[np.isin(held_rows, first)])
        oof[:, held] = _path(z[fit_rows], labels[fit_rows], z[first[held]], grid, num_classes)
    truth = labels[first]
    likelihood = [np.log(np.clip(p[np.arange(len(truth)), truth], 1e-12, 1)).mean() for p in oof]
    accuracy = [float((p.argmax(1) == truth).mean()) for p in oof]
    best = int(np.argmax(likelihood))  # first maximum: the strongest penalty among ties
    weight, bias = _fit(features, labels, num_classes, grid[best], mean, scale)
    probe = Probe(weight, bias, grid[best], accuracy[best], float(-likelihood[best]))
    path = tuple((C, float(-l), a) for C, l, a in zip(grid, likelihood, accuracy))
    return CrossValidated(probe, oof[best], folds, path=path)


def _path(x: np.ndarray, y: np.ndarray, held: np.ndarray, grid: tuple[float, ...],
          num_classes: int) -> np.ndarray:
    """Class probabilities (len(grid), len(held), classes) of ``held`` for each C of ``grid``
    (ascending), each fit starting from the previous solution (a warm start: far fewer
    iterations than from zero)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    model = LogisticRegression(max_iter=2000, tol=1e-5, warm_start=True)
    out = np.zeros((len(grid), len(held), num_classes))
    for i, C in enumerate(grid):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.set_params(C=C).fit(x, y)
        out[i][:, model.classes_] = model.predict_proba(held)
    return out
