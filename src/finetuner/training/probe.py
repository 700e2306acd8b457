"""The linear probe on a model: the pooled features of its frozen backbone, and the probe
fitted on them (:mod:`finetuner.training.probe_fit`) loaded into its head: :func:`probe_head`
(C chosen on val; LP-FT's start) and :func:`cv_probe_heads` (C by cross-validation, for a
model or each member of an ensemble: ``strategy: probe``).
"""
from __future__ import annotations

import numpy as np
import torch

from ..models import ProbeEnsemble, StagedClassifier
from .batches import TrainData
from .distributed import Dist
from .prefix import FrozenPrefix, PrefixStore, prefix_for
from .probe_fit import C_GRID, Probe, fit_probe, fit_probe_cv_columns, scores


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


def cv_probe_heads(model: StagedClassifier | ProbeEnsemble, data: TrainData,
                   device: torch.device, precision, budget: float, ctx: Dist, folds: int,
                   seed: int, choose_layers: bool = False) -> dict:
    """Fit the probe of ``model`` (of each member of an ensemble) on train + val, its L2
    strength chosen by ``folds``-fold cross-validation there (:func:`fit_probe_cv`), and load
    it into the head (each member's record keeps its out-of-fold scores at every C tried:
    ``path``, what the evaluate stage's curves.png draws for a probe).  ``choose_layers``
    (``probe.layers: auto``; the model reads every stage): the same cross-validation also
    chooses, per member, between every stage's pooled features and the last stage's alone
    (:func:`fit_probe_cv_columns`).  Returns the record: each member's C, features read and
    out-of-fold scores, and the out-of-fold accuracy and log-loss of the whole model
    (members' probabilities averaged), an estimate from the training images alone (None,
    with no out-of-fold predictions, when a class has fewer than 2 images: the middle of the
    grid is used); ``train_acc`` and ``train_loss``: the whole model's on the rows it was
    fitted on (how well it fits them, not an estimate).  Nothing of the test split is read."""
    from scipy.special import softmax  # where a probe is fitted, as scikit-learn
    members = list(model.members) if isinstance(model, ProbeEnsemble) else [model]
    n_train, n_val = len(data.train_labels), len(data.val_labels)
    labels = np.concatenate([data.view_labels.numpy(), data.val_labels.numpy()])
    groups = np.concatenate([np.repeat(np.arange(n_train), data.views),
                             n_train + np.arange(n_val)])
    truth = np.concatenate([data.train_labels.numpy(), data.val_labels.numpy()])
    records, oofs, fitted = [], [], []
    for member in members:
        member.to(device).eval()
        with precision.autocast():
            train = prefix_for(None, "train", member, data.probe_rows, member.num_stages,
                               device, budget, ctx)
            val = prefix_for(None, "val", member, data.val_images, member.num_stages, device,
                             budget)
            features = np.concatenate([pooled_features(member, train),
                                       pooled_features(member, val)])
        last = member.pooled_width if choose_layers and member.layers == "all" else 0
        cv = fit_probe_cv_columns(features, labels, groups, data.num_classes, last, folds,
                                  seed=seed)
        cv.probe.load_into(member.classifier)
        fitted.append(softmax(cv.probe.logits(features), axis=1))
        layers = member.layers if cv.columns == "all" else "last"
        records.append({"C": cv.probe.C, "cv_acc": cv.probe.val_acc,
                        "cv_loss": cv.probe.val_loss, "layers": layers,
                        "features": int(features.shape[1] if cv.columns == "all" else last),
                        "path": [{"C": C, "cv_loss": loss, "cv_acc": acc}
                                 for C, loss, acc in cv.path]})
        oofs.append(cv.oof)
    train_acc, train_loss = scores(np.mean(fitted, 0), labels)  # the images it was fitted on
    fit = {"train_acc": train_acc, "train_loss": train_loss}
    if cv.folds < 2:  # a class of one image: no fold can hold it out, so nothing is scored
        return {"selection": f"no cross-validation (a class has fewer than 2 images): "
                             f"C {records[0]['C']:g}, the middle of the grid",
                "folds": 0, "members": records, "cv_acc": None, "cv_loss": None, **fit,
                "oof_log_probs": None, "oof_labels": None}
    mean = np.clip(np.mean(oofs, 0), 1e-12, 1)
    what = "L2 strength and stages read" if choose_layers else "L2 strength"
    return {"selection": f"{cv.folds}-fold cross-validation on train + val: {what}",
            "folds": cv.folds,
            "members": records, "cv_acc": float((mean.argmax(1) == truth).mean()),
            "cv_loss": float(-np.log(mean[np.arange(len(truth)), truth]).mean()), **fit,
            "oof_log_probs": np.log(mean).astype(np.float32), "oof_labels": truth}
