#!/usr/bin/env python
"""Why training from scratch (model.weights: none) on tiny images went to NaN: one difference at a
time between the project's step and plain timm + SGD, on the tiny stage tests' data.

    python benchmarks/from_scratch_divergence.py [--seeds 0 1 2] [--lr 0.02] [--epochs 4]

Data as in the stage tests: 3 classes of noisy solid colours, 6 images each at 32 px, 2 stored
views, batch size 8: 18 rows an epoch.  Each variant trains Lite0 (tf_efficientnet_lite0, no
pretrained weights) with SGD (momentum 0.9, cosine) for ``--epochs`` epochs and prints one line:
``variant=... seed=... finite=0|1 max_grad=... final_loss=...``.  Variants:

* ``model``: the project's staged model (new linear head, PyTorch's default init) or timm's own
  model with its own head init;
* ``layout``: channels_last (the project's) or contiguous;
* ``loss``: the summed loss over the batch size (the project's) or ``F.cross_entropy``'s mean;
* ``batches``: the sizes of an epoch's batches (``--batches``): ``8,8,2`` (the last rows as a
  batch of their own: the project's rule before the fix), ``8,5,5`` (a last batch under half
  the batch size evened out with the one before: the fix,
  :func:`finetuner.training.batches.epoch_batches`), ``8,8`` (the rest dropped, as timm's
  training script does with ``drop_last``), and ``8,7,3``, ``8,6,4``: how few rows BatchNorm
  can take at the 1 x 1 pixels Lite0's last stage has at 32 px.

Last lines: ``finite_<batches>=k/n`` over every variant and seed.
"""
from __future__ import annotations

import argparse
import itertools
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from finetuner.models import build_model  # noqa: E402
from finetuner.training.batches import epoch_order  # noqa: E402

ARCH, BATCH, VIEWS = "tf_efficientnet_lite0", 8, 2


def tiny(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 NCHW rows, labels of the rows): 6 images a class, 2 views each."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(3).repeat_interleave(6)
    colours = torch.tensor([[220, 30, 30], [30, 220, 30], [30, 30, 220]])
    base = colours[labels].repeat_interleave(VIEWS, 0)[:, :, None, None].float()
    noise = torch.randint(-30, 30, (len(base), 3, 32, 32), generator=g)
    return (base + noise).clamp(0, 255).to(torch.uint8), labels


def batches(labels: torch.Tensor, epoch: int, seed: int, rule: str) -> list[torch.Tensor]:
    """The epoch's order cut into batches of the sizes ``rule`` lists (rows left over: not
    trained this epoch)."""
    order = epoch_order(labels, VIEWS, epoch, seed, False)
    sizes = [int(n) for n in rule.split(",")]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    return [order[start:start + n] for start, n in zip(starts, sizes)]


def train(model_kind: str, layout: str, loss_kind: str, rule: str, seed: int, lr: float,
          epochs: int) -> tuple[bool, float, float]:
    """(every loss finite, largest gradient entry, last epoch's mean loss)."""
    rows, labels = tiny(seed)
    torch.manual_seed(seed)
    if model_kind == "staged":
        model = build_model(ARCH, "none", 3)
    else:
        import timm
        timm_model = timm.create_model(ARCH, pretrained=False, num_classes=3)
        mean, std = torch.tensor([0.5] * 3).view(1, 3, 1, 1), torch.tensor([0.5] * 3).view(1, 3, 1, 1)
        model = torch.nn.Sequential(_Normalise(mean, std), timm_model)
    if layout == "channels_last":
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    view_labels = labels.repeat_interleave(VIEWS)
    total = sum(len(batches(labels, e, seed, rule)) for e in range(epochs))
    step, grad_max, finite, last = 0, 0.0, True, math.nan
    for epoch in range(epochs):
        model.train()
        seen, summed = 0, 0.0
        for index in batches(labels, epoch, seed, rule):
            for group in optimizer.param_groups:
                group["lr"] = lr * (1 + math.cos(math.pi * step / total)) / 2
            logits = model(rows[index])
            target = view_labels[index]
            loss = (F.cross_entropy(logits.float(), target, reduction="sum") / len(index)
                    if loss_kind == "sum" else F.cross_entropy(logits, target))
            optimizer.zero_grad()
            loss.backward()
            grads = [p.grad.abs().max() for p in model.parameters() if p.grad is not None]
            grad_max = max(grad_max, float(torch.stack(grads).max()))
            optimizer.step()
            step += 1
            finite &= math.isfinite(loss.item())
            summed += loss.item() * len(index)
            seen += len(index)
        last = summed / seen
    return finite, grad_max, last


class _Normalise(torch.nn.Module):
    def __init__(self, mean, std):
        super().__init__()
        self.mean, self.std = mean, std

    def forward(self, x):
        return (x.float() / 255 - self.mean) / self.std


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batches", nargs="+",
                        default=["8,8,2", "8,7,3", "8,6,4", "8,5,5", "8,8"],
                        help="batch sizes of an epoch of 18 rows, e.g. 8,8,2")
    args = parser.parse_args()
    torch.set_num_threads(1)
    variants = [("staged", "channels_last", "sum"), ("staged", "contiguous", "sum"),
                ("staged", "channels_last", "mean"), ("timm", "contiguous", "mean")]
    counts: dict[str, list[int]] = {}
    for (model, layout, loss), rule, seed in itertools.product(
            variants, args.batches, args.seeds):
        finite, grad, last = train(model, layout, loss, rule, seed, args.lr, args.epochs)
        counts.setdefault(rule, []).append(int(finite))
        print(f"variant=model:{model},layout:{layout},loss:{loss},batches:{rule} seed={seed} "
              f"finite={int(finite)} max_grad={grad:.3g} final_loss={last:.4g}", flush=True)
    for rule, values in counts.items():
        print(f"finite_{rule.replace(',', '_')}={sum(values)}/{len(values)}")


if __name__ == "__main__":
    main()
