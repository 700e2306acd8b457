"""Cost metrics, and the evaluate stage's outputs (eval.json with cost, PNGs) on tiny data."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from conftest import flat
from finetuner.evaluation.cost import (cost_report, count_params, cpu_latency_ms,
                                       cpu_throughput, gflops, trainable_params)
from finetuner.evaluation.plots import confusion_png, curves_png, mistakes_png
from finetuner.models import build_model
from finetuner.models.checkpoint import save_checkpoint


def test_params_total_is_the_models_parameter_count():
    model = build_model("resnet18", "none", 1000)
    assert count_params(model) == sum(p.numel() for p in torchvision.models.resnet18().parameters())


def test_params_trainable_follows_the_freeze_depth_and_leaves_the_flags_alone():
    model = build_model("resnet18", "none", 3)
    before = [p.requires_grad for p in model.parameters()]
    assert trainable_params(model, 0) == count_params(model)
    assert trainable_params(model, 5) == 512 * 3 + 3  # every stage frozen: only the head
    layer4 = sum(p.numel() for p in model.stages[4].parameters())
    assert trainable_params(model, 4) == layer4 + 512 * 3 + 3
    assert [p.requires_grad for p in model.parameters()] == before


@pytest.mark.parametrize("arch, size, gmacs", [("tf_efficientnet_lite0", 224, 0.40),
                                               ("tf_efficientnet_lite1", 240, 0.63),
                                               ("tf_efficientnet_lite2", 260, 0.89)])
def test_lite_gflops_are_twice_timms_published_gmacs(arch, size, gmacs):
    with torch.device("meta"):  # shapes are all FLOP counting needs
        model = build_model(arch, "none", 1000)
    assert gflops(model.eval(), size) / 2 == pytest.approx(gmacs, rel=0.10)


def test_gflops_on_cpu_equal_those_on_meta_and_grow_with_the_image():
    model = build_model("resnet18", "none", 3).eval()
    with torch.device("meta"):
        skeleton = build_model("resnet18", "none", 3).eval()
    assert gflops(model, 64) == pytest.approx(gflops(skeleton, 64))
    assert gflops(model, 64) == pytest.approx(4 * gflops(model, 32), rel=0.05)


def test_cpu_latency_and_throughput_are_positive():
    model = build_model("resnet18", "none", 3).eval()
    assert 0 < cpu_latency_ms(model, 32, runs=5, budget_s=1.0) < 10_000
    assert cpu_throughput(model, 32, batch_size=4, runs=3, budget_s=1.0) > 0


def test_cost_report_of_a_checkpoint(tmp_path):
    model = build_model("resnet18", "none", 3)
    path = tmp_path / "model.pt"
    save_checkpoint(path, model, "resnet18", ["a", "b", "c"], 32, 0.875, {})
    cost = cost_report(model, 32, 5, path, 12.34)
    assert cost["params_total"] == count_params(model)
    assert cost["params_trainable"] == 512 * 3 + 3
    assert cost["gflops"] == pytest.approx(gflops(model, 32), abs=1e-4)
    assert cost["cpu_latency_ms"] > 0 and cost["cpu_images_per_s"] > 0
    assert cost["cpu_threads"] == torch.get_num_threads() and 0 < cost["cpu_share"] <= 1.5
    assert cost["checkpoint_mb"] == pytest.approx(path.stat().st_size / 1e6, abs=0.01)
    assert cost["train_seconds"] == 12.3


def _png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        image.load()
        assert image.format == "PNG"
        return image.size


def test_plots_are_pngs_of_the_expected_size(tmp_path):
    names = ["a", "b", "c"]
    confusion_png(tmp_path / "confusion.png", [[2, 1, 0], [0, 3, 0], [1, 0, 2]], names)
    assert _png_size(tmp_path / "confusion.png") == (400, 400)  # 2.5 + 0.5 * 3 in at 100 dpi
    history = [{"epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e, "train_acc": 0.5,
                "val_acc": 0.4} for e in (1, 2, 3)]
    curves_png(tmp_path / "curves.png", history)
    assert _png_size(tmp_path / "curves.png") == (1000, 400)
    images = np.zeros((6, 8, 8, 3), np.uint8)
    labels = np.array([0, 1, 2, 0, 1, 2])
    probabilities = np.eye(3)[[1, 2, 0, 1, 2, 2]]  # 5 mistakes -> 2 rows of 4
    assert mistakes_png(tmp_path / "mistakes.png", images, labels, probabilities, names, 16) == 5
    assert _png_size(tmp_path / "mistakes.png") == (1200, 660)



def test_cjk_class_names_draw_without_missing_glyph_warnings(tmp_path, recwarn):
    """No CJK font is shipped: "猫" draws as a box, and matplotlib's warning is silenced."""
    names = ["猫", "犬"]
    confusion_png(tmp_path / "confusion.png", [[1, 0], [1, 1]], names)
    images = np.zeros((2, 8, 8, 3), np.uint8)
    mistakes_png(tmp_path / "mistakes.png", images, np.array([0, 1]), np.eye(2)[[1, 0]], names, 4)
    assert [str(w.message) for w in recwarn] == []
    assert _png_size(tmp_path / "confusion.png") == (350, 350)


def test_evaluate_stage_writes_headline_metrics_cost_and_pictures(evaluated):
    from finetuner.models.checkpoint import load_checkpoint
    model = load_checkpoint(evaluated / "model.pt").model
    metrics = json.loads((evaluated / "metrics" / "eval.json").read_text())
    assert {"accuracy", "macro_f1", "best_val_acc", "train_seconds"} <= set(metrics)
    assert metrics["train_seconds"] == 7.2 and metrics["test_images"] == 40
    assert metrics["probe_drop"] is None  # no LP-FT fell below its probe (strategy.probe_drop)
    assert metrics["refit"] is True and metrics["trained_images"] == 36  # train + val
    # the 95 % intervals sit beside their metrics: Wilson's for accuracy on these 40 images
    from finetuner.evaluation.intervals import wilson_interval
    low, high = wilson_interval(round(metrics["accuracy"] * 40), 40)
    assert metrics["accuracy_ci95"] == {"low": low, "high": high}
    assert low <= metrics["accuracy"] <= high
    assert metrics["macro_f1_ci95"]["low"] <= metrics["macro_f1"] <= metrics["macro_f1_ci95"]["high"]
    assert metrics["ci95"] == "Wilson; bootstrap 2000, seed 0"
    # no sentence among the metrics: `dvc metrics diff` pads every row to its longest string
    strings = [v for v in flat(metrics).values() if isinstance(v, str)]
    assert strings and max(map(len, strings)) <= 60, strings
    cost = metrics["cost"]
    assert cost["params_total"] == count_params(model)
    # frozen_stages of the last epoch (3): layer3, layer4 and the head train
    assert cost["params_trainable"] == sum(
        p.numel() for p in [*model.stages[3:].parameters(), *model.classifier.parameters()])
    assert cost["gflops"] > 0 and cost["cpu_latency_ms"] > 0 and cost["cpu_images_per_s"] > 0
    assert cost["checkpoint_mb"] == pytest.approx((evaluated / "model.pt").stat().st_size / 1e6,
                                                  abs=0.01)
    per_class = json.loads((evaluated / "metrics" / "per_class.json").read_text())
    assert set(per_class) == {"a", "b", "c"}
    assert sum(c["support"] for c in per_class.values()) == 40
    for name in ("confusion.png", "curves.png", "mistakes.png"):
        assert _png_size(evaluated / "metrics" / name)[0] > 0


def test_each_test_prediction_names_its_file(evaluated):
    """test_predictions.csv names each scored image's file (relative to data.dir), so a
    mistake can be found and looked at; its confidence is the calibrated one."""
    import csv
    with open(evaluated / "metrics" / "test_predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["path", "actual", "predicted", "confidence"]
    meta = json.loads((evaluated / "prepared" / "meta.json").read_text())
    assert [row["path"] for row in rows] == meta["paths"]["test"]
    assert all(row["path"].split("/")[0] == row["actual"] for row in rows)
    assert all(0 < float(row["confidence"]) <= 1 for row in rows)


def test_the_mistakes_gallery_names_each_file(tmp_path, monkeypatch):
    from finetuner import pictures
    captions = []
    monkeypatch.setattr(pictures, "save_png", lambda figure, path: captions.extend(
        ax.get_title() for ax in figure.axes if ax.get_title()) or pictures.plt.close(figure))
    images = np.zeros((3, 8, 8, 3), np.uint8)
    shown = mistakes_png(tmp_path / "m.png", images, np.array([0, 1, 0]),
                         np.eye(2)[[1, 1, 1]], ["a", "b"], 4,
                         paths=["a/x.jpg", "b/y.jpg", "a/z.jpg"])
    assert shown == 2 and [c.splitlines()[0] for c in captions] == ["x.jpg", "z.jpg"]


def test_the_pictures_name_the_images_they_scored(tmp_path, monkeypatch):
    """Scored on val (or a folder), a picture must not say "test split": eval.json says which."""
    from finetuner.data.folders import VAL_SOURCE
    from finetuner import pictures
    from finetuner.evaluation import plots

    titles = []

    def keep_titles(figure, path):
        titles.append(" ".join([figure._suptitle.get_text() if figure._suptitle else ""]
                               + [ax.get_title() for ax in figure.axes]).replace("\n", " "))
        plots.plt.close(figure)

    monkeypatch.setattr(plots, "save_png", keep_titles)
    monkeypatch.setattr(pictures, "save_png", keep_titles)
    names = ["a", "b"]
    plots.confusion_png(tmp_path / "c.png", [[1, 0], [1, 1]], names, VAL_SOURCE)
    plots.mistakes_png(tmp_path / "m.png", np.zeros((2, 8, 8, 3), np.uint8), np.array([0, 1]),
                       np.eye(2)[[1, 1]], names, 4, VAL_SOURCE)
    rows = [{"lower": 0.0, "upper": 1.0, "confidence": 0.5, "accuracy": 0.5, "count": 2}]
    plots.reliability_png(tmp_path / "r.png", rows, rows, 0.1, 0.05, 1.5, "folder photos/test")
    assert len(titles) == 3
    for text in titles[:2]:
        assert "val split (it chose the model: not an honest estimate)" in text
        assert "test split" not in text
    assert "folder photos/test" in titles[2] and "test split" not in titles[2]


def test_curves_leave_out_a_series_without_numbers_and_say_when_the_model_is_a_probe(
        tmp_path, monkeypatch):
    """A probe's one row is one point each (its fit on the training rows, its val score): the
    titles say so, however its columns are filled (before 2026-12-01 a probe logged no train
    values, and the titles were keyed to that)."""
    from finetuner import pictures
    from finetuner.evaluation import plots
    seen = []
    monkeypatch.setattr(plots, "save_png", lambda figure, path: seen.append(
        [(ax.get_title(), ax.get_legend_handles_labels()[1]) for ax in figure.axes])
        or pictures.plt.close(figure))
    nan = float("nan")
    plots.curves_png(tmp_path / "c.png", [{"epoch": 1, "train_loss": nan, "train_acc": nan,
                                           "val_loss": 0.3, "val_acc": 0.9}], probe=True)
    plots.curves_png(tmp_path / "c.png", [{"epoch": 1, "train_loss": 0.1, "train_acc": 1.0,
                                           "val_loss": 0.3, "val_acc": 0.9}], probe=True)
    plots.curves_png(tmp_path / "c.png", [{"epoch": e, "train_loss": 0.5, "train_acc": 0.8,
                                           "val_loss": nan, "val_acc": nan} for e in (1, 2)])
    assert seen[0] == [("loss (a probe: no epochs, one score)", ["val"]),
                       ("accuracy (a probe: no epochs, one score)", ["val"])]
    assert seen[1] == [("loss (a probe: no epochs, one score)", ["train", "val"]),
                       ("accuracy (a probe: no epochs, one score)", ["train", "val"])]
    assert seen[2] == [("loss", ["train"]), ("accuracy", ["train"])]  # a refit: no val left


def test_no_caption_of_a_gallery_runs_into_the_image_above(tmp_path, monkeypatch):
    """Three-line captions (file, true, predicted) below a row of images: each row leaves room."""
    from finetuner import pictures
    overlaps = []

    def check(figure, path):
        figure.canvas.draw()
        renderer = figure.canvas.get_renderer()
        shown = [ax for ax in figure.axes if ax.get_images()]
        for upper, lower in zip(shown, shown[4:]):  # the same column, one row down
            image_bottom = upper.get_window_extent(renderer).y0
            caption_top = lower.title.get_window_extent(renderer).y1
            overlaps.append(caption_top - image_bottom)
        pictures.plt.close(figure)

    monkeypatch.setattr(pictures, "save_png", check)
    images = np.zeros((9, 64, 64, 3), np.uint8)
    mistakes_png(tmp_path / "m.png", images, np.zeros(9, int), np.tile([[0.1, 0.9]], (9, 1)),
                 ["cardboard", "plastic"], 16, paths=[f"c/file_{i}.jpg" for i in range(9)])
    assert len(overlaps) == 5 and max(overlaps) <= 0, overlaps


def test_a_cross_validated_probe_s_curves_are_its_scores_against_c(tmp_path, monkeypatch):
    from finetuner import pictures
    from finetuner.evaluation import plots
    seen = []
    monkeypatch.setattr(plots, "save_png", lambda figure, path: seen.append(
        [(ax.get_title(), ax.get_xscale(), ax.get_legend_handles_labels()[1])
         for ax in figure.axes]) or pictures.plt.close(figure))
    path = [{"C": C, "cv_loss": loss, "cv_acc": acc}
            for C, loss, acc in ((0.01, 0.9, 0.6), (0.1, 0.5, 0.8), (1.0, 0.7, 0.8))]
    record = {"members": [{"C": 0.1, "cv_loss": 0.5, "cv_acc": 0.8, "path": path}] * 2}
    nan = float("nan")
    plots.curves_png(tmp_path / "c.png", [{"epoch": 1, "train_loss": nan, "train_acc": nan,
                                           "val_loss": 0.5, "val_acc": 0.8}], record,
                     ["tf_efficientnet_lite0", "tf_efficientnet_lite1"])
    (loss_title, scale, legend), _ = seen[0]
    assert "cross-validation" in loss_title and scale == "log"
    assert legend == ["tf_efficientnet_lite0: C 0.1", "tf_efficientnet_lite1: C 0.1"]


def test_the_cpu_share_counts_cpu_time_not_wall_time():
    """A timing that waited (here: slept) got little of the CPU; one that computed got its
    thread's time.  A process slowed by another one holding a core shows the same drop
    (measured: 0.99 idle, 0.65-0.69 beside one busy process, 2 threads)."""
    import time
    from finetuner.evaluation.cost import with_cpu_share
    result, share = with_cpu_share(lambda: time.sleep(0.2) or "slept")
    assert result == "slept" and share < 0.2
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _, busy = with_cpu_share(lambda: sum(i * i for i in range(2_000_000)))
    finally:
        torch.set_num_threads(before)
    assert busy > 0.2  # one thread computing: nearly all of its time on an idle core, and
    #                    more than sleeping gets on a busy one


def test_timings_on_a_busy_cpu_are_said_to_be_so():
    from finetuner.evaluation.report import busy_warning
    assert busy_warning({"cpu_share": 0.97, "cpu_threads": 2}) is None
    said = busy_warning({"cpu_share": 0.65, "cpu_threads": 2})
    assert "got 65% of its 2 thread(s)' time" in said and "dvc repro -f evaluate" in said
