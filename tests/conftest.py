"""Shared helpers and fixtures: tiny image folders and training data made on the fly (nothing
stored in git).  Test files import the helpers from here (``from conftest import tiny_data``),
never from one another (tests/test_layout.py checks).  torch is imported only by the helpers that
need it, so test files without torch do not pay for it.
"""
from __future__ import annotations

import fnmatch
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"

# pytest-xdist runs the tests in one worker per core (pyproject's addopts): each worker, and the
# stages it starts, gets its share of the cores as torch threads, so the workers do not fight
# over the cores (set before any test imports torch; OMP_NUM_THREADS set by hand wins)
if os.environ.get("PYTEST_XDIST_WORKER") and "OMP_NUM_THREADS" not in os.environ:
    _workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    os.environ["OMP_NUM_THREADS"] = str(max(1, len(os.sched_getaffinity(0)) // _workers))


# the long files first, longest first (pyproject's --no-loadscope-reorder keeps this order), so
# pytest-xdist starts them at once and spreads the short files around them (a long chain
# started last would leave the other worker idle at the end)
FIRST = ["test_robustness_resume.py", "test_e2e.py", "test_robustness_faults.py",
         "test_resume.py", "test_probe.py", "test_distributed.py"]


@pytest.fixture(scope="session", autouse=True)
def dvc_leaves_nothing_behind(tmp_path_factory):
    """DVC keeps a folder per repository path under /var/tmp/dvc/repo (file hashes, link
    records) and never removes it: every temporary project of a run left one there (807 MB had
    gathered).  The DVC commands the tests start put it under pytest's temporary folder
    instead (DVC_SITE_CACHE_DIR, read by DVC >= 3.60.1), which pytest prunes.  And they send
    no usage report (DVC_NO_ANALYTICS; the project's .dvc/config says so too, but `dvc init`
    and projects without that config ran before it): with no network each report stayed in
    /tmp as a file."""
    values = {"DVC_SITE_CACHE_DIR": str(tmp_path_factory.getbasetemp() / "dvc-site-cache"),
              "DVC_NO_ANALYTICS": "1"}
    before = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    yield
    for key, value in before.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(FIRST)))  # stable: order kept


def built_once(tmp_path_factory, name: str, build) -> Path:
    """The folder ``name``, made by ``build(folder)`` once per test session and shared by every
    pytest-xdist worker (the first to ask builds it under a file lock; the others wait, then
    reuse it).  Treat it as read-only: copy it to change it."""
    from filelock import FileLock
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the session's folder, above each worker's own
    folder, done = root / f"built-{name}", root / f"built-{name}.done"
    with FileLock(str(folder) + ".lock"):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            build(folder)
            done.touch()
    return folder


def make_image_folder(root: Path, classes: dict[str, int], size: int = 20, seed: int = 0) -> Path:
    """``classes``: name -> image count; each class gets its own colour so it is learnable."""
    rng = np.random.default_rng(seed)
    for c, (name, count) in enumerate(classes.items()):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        base = np.array([(60 * c) % 256, (200 - 50 * c) % 256, (30 + 90 * c) % 256])
        for i in range(count):
            noise = rng.integers(-25, 25, (size, size, 3))
            pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"img_{i:03d}.png")
    return root


SHAPES = ("circles", "squares", "triangles")


def shapes_image(kind: str, rng: np.random.Generator, size: int = 96) -> Image.Image:
    """Eight to twelve small ``kind`` (one of :data:`SHAPES`) scattered at random on a plain
    background, in random contrasting colours: what an ImageNet backbone tells apart by kind,
    every image distinct, and a resized copy keeps its layout (what a perceptual hash and
    regional features see)."""
    from PIL import ImageDraw
    back = rng.integers(0, 256, 3)
    image = Image.new("RGB", (size, size), tuple(int(c) for c in back))
    draw = ImageDraw.Draw(image)
    fill = tuple(int(c) for c in 255 - back)
    for _ in range(int(rng.integers(8, 13))):
        cx, cy = rng.integers(8, size - 8, 2).tolist()
        r = int(rng.integers(4, 9))
        if kind == "circles":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        elif kind == "squares":
            draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
        else:
            draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    return image


def make_shapes_folder(root: Path, count: int, size: int = 96, seed: int = 0) -> Path:
    """``count`` :func:`shapes_image` JPEGs in each of the class folders :data:`SHAPES`."""
    rng = np.random.default_rng(seed)
    for kind in SHAPES:
        (root / kind).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            shapes_image(kind, rng, size).save(root / kind / f"img_{i:03d}.jpg", quality=95)
    return root


def jpeg_copy(image: Image.Image, scale: float = 0.8, quality: int = 70) -> Image.Image:
    """A near-duplicate of ``image``: resized by ``scale``, re-encoded as JPEG."""
    import io
    w, h = image.size
    buffer = io.BytesIO()
    image.resize((round(w * scale), round(h * scale)), Image.BICUBIC).save(
        buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


PROJECT_FILES = ["dvc.yaml", "stages", "src", ".dvcignore", "conf", "vendor"]


def demo_params(conf: Path = ROOT / "conf") -> str:
    """The text of params.yaml for the demo preset, composed from ``conf``: what the tests take
    for the project's params.  Never the workspace's params.yaml, which every `dvc exp run`
    rewrites with that experiment's values (a user's `-S evaluate.test_dir=...` once failed
    the tests that copied it)."""
    from finetuner.presets import params_yaml
    return params_yaml("demo", conf=conf)


def copy_project(repo: Path) -> Path:
    """The pipeline's files (not its data or outputs, nor .dvc/) copied into ``repo``, and a
    params.yaml of the demo composed from the copied conf/ (:func:`demo_params`)."""
    repo.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, repo / name)
    (repo / "params.yaml").write_text(demo_params(repo / "conf"))
    return repo


def flat(mapping: dict, prefix: str = "") -> dict:
    """``{"train": {"epochs": 3}}`` -> ``{"train.epochs": 3}``."""
    out = {}
    for key, value in mapping.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def edit_yaml(path: Path, changes: dict) -> None:
    """Update the YAML file ``path`` with the nested ``changes`` (comments are dropped; a
    Hydra ``# @package`` first line is kept)."""
    import yaml

    def merge(node: dict, extra: dict) -> None:
        for key, value in extra.items():
            if isinstance(value, dict):
                merge(node.setdefault(key, {}), value)
            else:
                node[key] = value

    text = path.read_text()
    first = text.splitlines()[0] + "\n" if text.startswith("# @package") else ""
    data = yaml.safe_load(text)
    merge(data, changes)
    path.write_text(first + yaml.safe_dump(data, sort_keys=False))


def tiny_conf(repo: Path, base: dict | None = None, demo: dict | None = None) -> None:
    """The copied project's conf/ made tiny (images of ``data/my photos``: a space, as a user's
    folder may have, through dvc.yaml's commands; 32 px, 2 views, 2 epochs of batch 8 at a
    constant lr, no pretrained weights), ``base`` and ``demo`` changes on top; then its
    params.yaml written from it, as `python -m finetuner.presets` writes it."""
    from finetuner.presets import params_yaml
    edit_yaml(repo / "conf" / "config.yaml", {
        "defaults": ["_self_", {"preset": "demo"}],  # whatever a user made the default
        "data": {"dir": "data/my photos"}, "preprocess": {"workers": 0},
        "model": {"weights": "none"}, "train": {"batch_size": 8, "schedule": "constant"}})
    edit_yaml(repo / "conf" / "preset" / "demo.yaml", {
        "preprocess": {"image_size": 32, "train_views": 2},
        "train": {"epochs": 2, "warmup_epochs": 0}})
    edit_yaml(repo / "conf" / "config.yaml", base or {})
    edit_yaml(repo / "conf" / "preset" / "demo.yaml", demo or {})
    (repo / "params.yaml").write_text(params_yaml(conf=repo / "conf"))


PLOTS_TEMPLATE = ROOT / "vendor" / "vega" / "offline.html"


def offline_plots_page(html: str) -> dict[str, dict]:
    """Check a page DVC wrote with the offline template (.dvc/config's plots.html_template):
    no script from the network, Vega, Vega-Lite and vega-embed inline before the plots, under
    3 MB; return each Vega plot's spec by its id."""
    import json
    import re
    assert len(html.encode()) < 3e6, f"{len(html.encode()) / 1e6:.1f} MB"
    sources = re.findall(r"<script\b[^>]*\bsrc\s*=\s*[\"']?([^\"'\s>]*)", html, re.I)
    assert not [s for s in sources if re.match(r"(https?:)?//", s, re.I)], sources
    assert "cdn.jsdelivr" not in html
    template = PLOTS_TEMPLATE.read_text(encoding="utf-8")
    libraries = template[template.index("<!-- vega "):template.rindex("</script>") + 9]
    assert libraries in html  # the three libraries, with their licences, as vendored
    body = html[html.rindex("<body>"):]
    specs = {}
    for match in re.finditer(r"var spec = (.*?);\s*vegaEmbed\('#([^']+)', spec\);", body, re.S):
        specs[match.group(2)] = json.loads(match.group(1))
    assert specs, "no Vega plot in the page"
    assert html.index(libraries) < html.rindex("<body>")  # loaded before any plot draws
    return specs


def noise_prepared(folder: Path, counts: dict[str, int], classes=("a", "b", "c"),
                   size: int = 32) -> Path:
    """A prepared folder (as the preprocess stage writes it) of random pixels: ``counts``
    images per split, labels cycling through ``classes``, each val and test image's file named
    ``<class>/<split>_<row>.png`` in meta.json's ``paths``."""
    from finetuner.io import write_json
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    paths = {}
    for split, count in counts.items():
        np.save(folder / f"{split}_images.npy",
                rng.integers(0, 255, (count, size, size, 3), dtype=np.uint8))
        labels = np.arange(count) % len(classes)
        np.save(folder / f"{split}_labels.npy", labels)
        if split != "train":  # as preprocess: the files of val and test
            paths[split] = [f"{classes[label]}/{split}_{row}.png"
                            for row, label in enumerate(labels)]
    write_json(folder / "meta.json", {"classes": list(classes), "image_size": size,
                                      "crop_pct": 0.875, "train_views": 1, "paths": paths})
    return folder


def load_stage(name: str):
    """The module of ``stages/<name>.py`` (stage scripts are not a package), to call its main."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(f"stage_{name}", ROOT / "stages" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_stage_here(cwd: Path, name: str, *args: str) -> str:
    """The ``main`` of ``stages/<name>.py`` called with ``args`` in ``cwd``, in this process (no
    new interpreter: torch, torchvision and timm are already imported, seconds saved a stage;
    not its ``__main__``: conftest.stage_exit runs that); returns what it printed on stdout (an
    exception propagates, and the stdout is lost).  What a stage sets for its process is put
    back: torch's thread count and the random generators (torch's, numpy's, Python's), which
    finetune seeds and preprocess draws from.  A stage that would replace this process by
    torchrun (``nproc_per_node`` > 1) fails instead."""
    import contextlib
    import io
    import random

    import torch

    from finetuner.training import distributed

    def no_relaunch(nproc, argv):
        raise AssertionError(f"{name} would relaunch under torchrun ({nproc} processes): run "
                             "it as a subprocess")
    threads, printed = torch.get_num_threads(), io.StringIO()
    numpy_state, python_state = np.random.get_state(), random.getstate()
    try:
        with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(printed), \
                torch.random.fork_rng(devices=[]):
            patch.chdir(cwd)
            patch.setattr(distributed, "relaunch_under_torchrun", no_relaunch)
            load_stage(name).main(*args)
    finally:
        torch.set_num_threads(threads)
        np.random.set_state(numpy_state)
        random.setstate(python_state)
    return printed.getvalue()


def stage_exit(cwd: Path, script: Path, args: list[str], monkeypatch):
    """Run the stage script ``script ARGS`` as ``__main__`` in this process (no new interpreter:
    torch is already imported), in ``cwd``; return its exit code: SystemExit's, which for an
    error is the one line that `python stages/...` prints before exiting with status 1.
    torch's thread count is restored (a stage sets its own)."""
    import runpy

    import torch
    threads = torch.get_num_threads()
    monkeypatch.chdir(cwd)
    monkeypatch.setattr("sys.argv", [f"stages/{script.name}", *args])
    try:
        with pytest.raises(SystemExit) as stop:
            runpy.run_path(str(script), run_name="__main__")
    finally:
        torch.set_num_threads(threads)
    return stop.value.code


def ignored(name: str) -> bool:
    """Whether the project's .gitignore hides ``name`` (so neither git nor `dvc exp` sees it)."""
    patterns = [line.strip() for line in (ROOT / ".gitignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    return any(fnmatch.fnmatch(name, p.strip("/")) for p in patterns)


def tiny_data(n_per_class=6, classes=3, views=2, size=32, seed=0):
    """A :class:`~finetuner.training.batches.TrainData` of noisy solid colours, one per class."""
    import torch
    from finetuner.training.batches import TrainData
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    colours = torch.tensor([[220, 30, 30], [30, 220, 30], [30, 30, 220]])[:classes]

    def images(lab, k):
        base = colours[lab].repeat_interleave(k, 0)[:, None, None, :].float()
        noise = torch.randint(-30, 30, (len(base), size, size, 3), generator=g)
        return (base + noise).clamp(0, 255).to(torch.uint8)

    return TrainData(images(labels, views), labels, images(labels, 1), labels.clone(), views, classes)


def fit_tiny(overrides: dict, data=None, use_cache=True, arch="resnet18"):
    """``fit`` a randomly initialised ``arch`` (3 classes, 32 px, 3 epochs of batch 8, lr 0.01,
    constant schedule without warmup, best epoch by val accuracy: fixed here, not taken from
    the params defaults) on :func:`tiny_data`,
    params ``overrides`` on top; returns ``(model, result)``."""
    import torch
    from finetuner.models import build_model
    from finetuner.params import parse_params
    from finetuner.training.loop import fit
    raw = {"lr": 0.01, "model": {"arch": arch, "weights": "none"}, "preprocess": {"image_size": 32},
           "train": {"epochs": 3, "batch_size": 8, "schedule": "constant", "warmup_epochs": 0,
                     "monitor": "val_acc"}}
    for key, value in overrides.items():
        if isinstance(value, dict):
            raw.setdefault(key, {}).update(value)
        else:
            raw[key] = value
    params = parse_params(raw)
    torch.manual_seed(params.seed)
    model = build_model(arch, "none", 3)
    result = fit(model, data or tiny_data(), params, torch.device("cpu"), progress=False,
                 use_cache=use_cache)
    return model, result


EVALUATED_CLASSES = ["a", "b", "c"]


@pytest.fixture(scope="session")
def evaluated(tmp_path_factory) -> Path:
    """One run of the evaluate stage, shared by tests/test_cost.py and tests/test_calibration.py
    (read-only): ``model.pt``, a resnet18 of random weights with an over-confident head (its
    weights x 40: large logits, mostly wrong on noise), whose history ends at 3 frozen stages
    after 7.25 s of training and which says it was refitted on train + val (so the temperature,
    fitted on val, gets a calibration note); ``prepared/`` of noise, 6 train, 30 val and 40
    test images of 32 px; the project's params.yaml; the stage's outputs in ``metrics/`` and
    what it printed in ``evaluate.log``."""
    def build(folder: Path) -> None:
        import torch
        from finetuner.models import build_model
        from finetuner.models.checkpoint import save_checkpoint
        noise_prepared(folder / "prepared", {"train": 6, "val": 30, "test": 40},
                       EVALUATED_CLASSES, 32)
        history = [{"epoch": e, "frozen_stages": depth, "train_loss": 1.0, "val_loss": 1.0,
                    "train_acc": 0.5, "val_acc": 0.5} for e, depth in ((1, 5), (2, 3))]
        torch.manual_seed(0)
        model = build_model("resnet18", "none", 3)
        with torch.no_grad():
            model.classifier.weight.mul_(40)
        save_checkpoint(folder / "model.pt", model, "resnet18", EVALUATED_CLASSES, 32, 0.875,
                        {"history": history, "best_epoch": 2, "best_val_acc": 0.5,
                         "train_seconds": 7.25, "epochs_run": 2,
                         "strategy": {"chosen": "finetune", "refit": True,
                                      "trained_on": {"train": 6, "val": 30}}})
        (folder / "params.yaml").write_text(demo_params())
        printed = run_stage_here(folder, "evaluate", "model.pt", "prepared", "metrics")
        (folder / "evaluate.log").write_text(printed)

    return built_once(tmp_path_factory, "evaluated", build)


@pytest.fixture
def image_folder(tmp_path) -> Path:
    return make_image_folder(tmp_path / "images", {"red": 10, "green": 10, "blue": 10})
