#!/usr/bin/env python
"""What a run costs as the dataset grows: disk, memory and speed of the stages at N photos.

    python benchmarks/scale.py [--images 2000 20000] [--size 96] [--workdir DIR] [--keep]

For the largest N it writes N photo-like JPEGs (500 x 375: random crops, flips and colour
shifts of the shared photos, eight classes) once; each smaller N is a folder of hard links to
its first N.  Then, for every N, in a fresh workspace (params.yaml = the project's, with the
keys below written over it), it runs the stage scripts as the pipeline does:
split -> input_spec -> preprocess (online mode: one canvas per photo) -> finetune (one epoch of
full fine-tuning of EfficientNet-Lite0, batch 32, ``--size`` px), then ``dvc add`` of the
prepared folder with the project's cache link type, and prints one line per N:

    images= preprocess_images_per_s= canvas_bytes= prepared_bytes_per_image=
    cache_bytes_per_image= finetune_peak_rss_mb= train_images_per_s=

``finetune_peak_rss_mb`` is the stage process's peak resident memory (``os.wait4``: its own
and its waited-for children's; Linux keeps a process's peak across ``exec``, so everything
heavy here, generating photos included, runs in a child and this process stays small); ``cache_bytes_per_image`` the disk DVC's cache adds on top of
the workspace (every inode counted once, as ``du`` does); ``train_images_per_s`` the training
images of the epoch over its seconds (validation included).  At the smallest N the same epoch
also runs in this process from the canvases read whole into RAM (``train_images_per_s_in_ram``
and the ratio): the cost of streaming.  The last line is ``rss_growth_mb`` (peak RSS at the
largest N minus at the smallest).  Needs ../shared/datasets (the shared photo sets).
"""
from __future__ import annotations

import argparse
import configparser
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageEnhance, ImageOps

from shared_sets import shared_sets

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [shared_sets()[name] for name in ("hymenoptera", "trashnet")]
PHOTO = (500, 375)


def source_photos() -> list[tuple[str, Path]]:
    """(class, path) of every shared photo that opens; the GIF placeholder is left out."""
    found = []
    for root in SOURCES:
        if not root.is_dir():
            sys.exit(f"scale.py: {root} is missing; this benchmark needs ../shared/datasets")
        for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
            found += [(class_dir.name, p) for p in sorted(class_dir.iterdir())
                      if p.suffix.lower() in (".jpg", ".jpeg")]
    return found


def photo_like(source: Image.Image, rng: random.Random) -> Image.Image:
    """A new 500 x 375 photo from ``source``: random crop, maybe mirrored, colour shifted."""
    w, h = source.size
    scale = rng.uniform(0.6, 1.0)
    cw, ch = max(1, int(w * scale)), max(1, int(h * scale))
    left, top = rng.randint(0, w - cw), rng.randint(0, h - ch)
    image = source.crop((left, top, left + cw, top + ch)).resize(PHOTO, Image.BILINEAR)
    if rng.random() < 0.5:
        image = ImageOps.mirror(image)
    image = ImageEnhance.Color(image).enhance(rng.uniform(0.7, 1.3))
    return ImageEnhance.Brightness(image).enhance(rng.uniform(0.8, 1.2))


def generate(folder: Path, n: int, seed: int = 0) -> None:
    photos, rng = source_photos(), random.Random(seed)
    decoded: dict[Path, Image.Image] = {}
    start = time.perf_counter()
    for i in range(n):
        label, path = photos[i % len(photos)]
        if path not in decoded:
            with Image.open(path) as image:
                decoded[path] = ImageOps.exif_transpose(image).convert("RGB")
        out = folder / label / f"{i:06d}.jpg"
        out.parent.mkdir(parents=True, exist_ok=True)
        photo_like(decoded[path], rng).save(out, quality=85)
    print(f"# generated {n} photos in {time.perf_counter() - start:.0f} s", flush=True)


def linked_subset(source: Path, folder: Path, n: int) -> None:
    """The first ``n`` generated photos (by number) as hard links."""
    files = sorted(source.rglob("*.jpg"), key=lambda p: p.name)[:n]
    for path in files:
        target = folder / path.parent.name / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(path, target)


def write_params(workspace: Path, size: int) -> None:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params.update(seed=0, lr=0.01, freeze_depth=0, strategy="finetune", threads=0,
                  device="auto", nproc_per_node=1)
    params["data"].update(dir="images", val_fraction=0.1, test_fraction=0.1)
    params["preprocess"].update(image_size=size, train_views=0, crop_scale=[0.5, 1.0],
                                hflip=True, rotation=0.0, color_jitter=0.2, workers=2)
    params["model"].update(arch="tf_efficientnet_lite0", weights="DEFAULT")
    params["train"].update(epochs=1, batch_size=32, head_init="random", refit=False,
                           freeze_bn=False, schedule="constant")
    (workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def run_stage(workspace: Path, stage: str, *args: str) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of one stage script run in ``workspace``."""
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, str(ROOT / "stages" / f"{stage}.py"), *args],
                               cwd=workspace, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = process.stdout.read().decode(errors="replace")
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"scale.py: {stage} failed in {workspace}:\n{output[-3000:]}")
    print(f"# {stage}: {seconds:.1f} s, peak RSS {usage.ru_maxrss / 1024:.0f} MB", flush=True)
    return seconds, usage.ru_maxrss / 1024


def disk_bytes(*folders: Path) -> int:
    """Bytes of the files under ``folders``, each inode once (hard links and DVC links)."""
    seen, total = set(), 0
    for folder in folders:
        for path in folder.rglob("*"):
            info = path.lstat()
            if path.is_file() and not path.is_symlink() and (info.st_dev, info.st_ino) not in seen:
                seen.add((info.st_dev, info.st_ino))
                total += info.st_size
    return total


def cache_type() -> str:
    """The project's ``cache.type`` (.dvc/config), else DVC's default."""
    config = configparser.ConfigParser()
    config.read(ROOT / ".dvc" / "config")
    return config.get("cache", "type", fallback="reflink,copy").strip().strip('"')


def dvc_cache_bytes(workspace: Path, link: str) -> int:
    """Disk that ``dvc add data/prepared`` adds with the cache link type ``link``."""
    before = disk_bytes(workspace / "data")
    for command in (["dvc", "init", "--no-scm", "-q"], ["dvc", "config", "cache.type", link],
                    ["dvc", "add", "-q", "data/prepared"]):
        subprocess.run(command, cwd=workspace, check=True, capture_output=True)
    return disk_bytes(workspace / "data", workspace / ".dvc" / "cache") - before


def train_in_ram(workspace: Path) -> float:
    """Training images/s of the same epoch with the canvases read whole into RAM."""
    sys.path.insert(0, str(ROOT / "src"))
    from finetuner.data.augment import AugmentedRows
    from finetuner.data.prepared import load_prepared
    from finetuner.data.rows import ArrayRows, CentreRows
    from finetuner.models import build_model
    from finetuner.params import load_params
    from finetuner.runtime import (resolve_device, reuse_freed_memory, seed_everything,
                                   set_threads)
    from finetuner.training.batches import TrainData
    from finetuner.training.loop import fit

    params = load_params(workspace / "params.yaml")
    set_threads(params.threads)
    reuse_freed_memory()  # as the finetune stage does
    prepared = load_prepared(workspace / "data" / "prepared")
    streamed = TrainData.from_prepared(prepared, params.seed)
    canvases = ArrayRows(np.array(prepared.images["train"]))
    data = TrainData(AugmentedRows(canvases, prepared.image_size, prepared.augmentation,
                                   params.seed), streamed.train_labels,
                     ArrayRows(np.array(prepared.images["val"])), streamed.val_labels, 1,
                     streamed.num_classes, streamed.mix, CentreRows(canvases, prepared.image_size))
    seed_everything(params.seed)
    model = build_model(params.model.arch, params.model.weights, data.num_classes)
    result = fit(model, data, params, resolve_device(params.device), progress=False)
    return len(data.train_labels) / result.history[0]["seconds"]


def measure(workspace: Path, n: int, size: int, link: str, compare: bool) -> dict:
    write_params(workspace, size)
    run_stage(workspace, "split", "images", "data/split")
    run_stage(workspace, "input_spec", "data/input_spec.json")
    seconds, _ = run_stage(workspace, "preprocess", "images", "data/split",
                           "data/input_spec.json", "data/prepared")
    _, rss = run_stage(workspace, "finetune", "data/prepared", "models/model.pt", "dvclive")
    from finetuner.models.checkpoint import load_checkpoint
    epoch = load_checkpoint(workspace / "models" / "model.pt").info["history"][0]
    prepared = workspace / "data" / "prepared"
    train = np.load(prepared / "train_images.npy", mmap_mode="r")
    result = {"images": n, "preprocess_images_per_s": round(n / seconds, 1),
              "canvas_bytes": int(np.prod(train.shape[1:])),
              "prepared_bytes_per_image": round(disk_bytes(prepared) / n),
              "cache_bytes_per_image": round(dvc_cache_bytes(workspace, link) / n),
              "finetune_peak_rss_mb": round(rss),
              "train_images_per_s": round(len(train) / float(epoch["seconds"]), 1)}
    if compare:
        in_ram = float(subprocess.run([sys.executable, __file__, "--in-ram", str(workspace)],
                                      check=True, capture_output=True, text=True).stdout)
        result["train_images_per_s_in_ram"] = round(in_ram, 1)
        result["streamed_vs_in_ram"] = round(result["train_images_per_s"] / in_ram, 3)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, nargs="+", default=[2000, 20000])
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the generated workspaces")
    parser.add_argument("--generate", nargs=2, help=argparse.SUPPRESS)  # FOLDER N, in a child
    parser.add_argument("--in-ram", type=Path, help=argparse.SUPPRESS)  # WORKSPACE, in a child
    args = parser.parse_args()
    if args.generate:
        return generate(Path(args.generate[0]), int(args.generate[1]))
    if args.in_ram:
        return print(train_in_ram(args.in_ram))
    counts = sorted(set(args.images))
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="finetuner-scale-"))
    workdir.mkdir(parents=True, exist_ok=True)
    link = cache_type()
    print(f"# workdir {workdir}, DVC cache.type {link}", flush=True)
    try:
        photos = workdir / "photos"
        if not photos.is_dir():
            subprocess.run([sys.executable, __file__, "--generate", str(photos),
                            str(counts[-1])], check=True)
        rss = {}
        for n in counts:
            workspace = workdir / f"n{n}"
            shutil.rmtree(workspace, ignore_errors=True)
            linked_subset(photos, workspace / "images", n)
            result = measure(workspace, n, args.size, link, compare=n == counts[0])
            rss[n] = result["finetune_peak_rss_mb"]
            print(" ".join(f"{k}={v}" for k, v in result.items()), flush=True)
            shutil.rmtree(workspace / ".dvc" / "cache", ignore_errors=True)
        print(f"rss_growth_mb={rss[counts[-1]] - rss[counts[0]]}")
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
