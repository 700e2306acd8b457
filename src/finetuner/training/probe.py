"""The linear probe: an exact softmax head on frozen, pooled backbone features, and
:func:`probe_head`, which fits it on a model's features and loads it into the model's head.

scikit-learn's ``LogisticRegression`` (L-BFGS, multinomial, L2) fits the head; its L2 strength
``C`` is chosen on the validation features from a fixed grid (best accuracy, ties broken by the
lower log-loss), so nothing is tuned by hand per data set.  Features are standardised for the
solver and the scaling is folded back into the weights, so the result is a plain
``nn.Linear`` on the raw features: ``features @ weight.T + bias`` gives the probe's logits.

Invariants: the probe's logits have the same argmax as ``LogisticRegression.predict`` on the
same features; a two-class probe is written as two symmetric rows (``-w/2``, ``+w/2``), which
gives the same probabilities as scikit-learn's single logistic row.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss

from ..models import StagedClassifier
from .batches import TrainData
from .distributed import Dist
from .prefix import FrozenPrefix, PrefixStore, prefix_for

C_GRID = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)


@dataclass(frozen=True)
class Probe:
    """A fitted head: logits = features @ weight.T + bias."""
    weight: np.ndarray  # (classes, features)
    bias: np.ndarray    # (classes,)
    C: float            # inverse L2 strength it was fitted with
    val_acc: float      # on the validation features (nan when none were given)
    val_loss: float

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


def _score(weight: np.ndarray, bias: np.ndarray, features: np.ndarray, labels: np.ndarray,
           num_classes: int) -> tuple[float, float]:
    logits = features @ weight.T + bias
    logits -= logits.max(1, keepdims=True)
    probabilities = np.exp(logits)
    probabilities /= probabilities.sum(1, keepdims=True)
    accuracy = float((logits.argmax(1) == labels).mean())
    return accuracy, float(log_loss(labels, probabilities, labels=list(range(num_classes))))


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
    return best


@torch.no_grad()
def pooled_features(model: StagedClassifier, prefix: FrozenPrefix,
                    batch_size: int = 256) -> np.ndarray:
    """Pooled backbone features (float32 numpy) of every row of ``prefix``, the stages after
    it run in eval mode."""
    n, parts = len(prefix.images), []
    for start in range(0, n, batch_size):
        x = prefix(torch.arange(start, min(start + batch_size, n)))
        if prefix.depth < model.num_stages:
            x = model.pool(model.forward_stages(x, prefix.depth))
        parts.append(x.float().cpu())
    return torch.cat(parts).numpy() if parts else np.zeros((0, model.classifier.in_features),
                                                            np.float32)


def probe_head(model: StagedClassifier, data: TrainData, device: torch.device, precision,
               budget: float, ctx: Dist, grid: tuple[float, ...] = C_GRID, depth: int | None = None,
               store: PrefixStore | None = None) -> Probe:
    """Fit the linear probe on the pooled features of every stored train view (its L2
    strength chosen on val from ``grid``) and load it into ``model.classifier``.

    The features are computed through the frozen prefix at ``depth`` (default: every stage),
    taken from or added to ``store``: fine-tuning from ``depth`` then reuses that cache.
    """
    depth = model.num_stages if depth is None else depth
    model.eval()
    with precision.autocast():
        train = prefix_for(store, "train", model, data.probe_rows, depth, device, budget, ctx)
        val = prefix_for(store, "val", model, data.val_images, depth, device, budget)
        train_x, val_x = pooled_features(model, train), pooled_features(model, val)
    labels = data.view_labels.numpy()
    probe = fit_probe(train_x, labels, data.num_classes, val_x, data.val_labels.numpy(), grid)
    probe.load_into(model.classifier)
    return probe
