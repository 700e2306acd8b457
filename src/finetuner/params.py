"""One typed, validated view of ``params.yaml``: the schema (a dataclass a section) and the
checks between values; reading YAML into it is :mod:`finetuner.typed_config`'s.

Every stage calls :func:`load_params` once.  Unknown keys fail with the closest valid name,
wrong types and out-of-range values fail with what is allowed, before any heavy work starts.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .typed_config import ParamsError, Schema, StrictLoader, build
from .typed_config import fail as _fail


def _choice(key: str, value, choices, or_else: str = "") -> None:
    """``value`` must be one of ``choices``; ``or_else`` describes what else the key takes (a
    number), for the message only: it is never itself a value."""
    if value not in choices:
        allowed = ", ".join(map(str, choices)) + (f", or {or_else}" if or_else else "")
        _fail(key, f"is {value!r}; allowed: {allowed}")


def _range(key: str, value, low=None, high=None, low_open=False) -> None:
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and value > high
    if too_low or too_high:
        lo = "" if low is None else f"{'>' if low_open else '>='} {low}"
        hi = "" if high is None else f"<= {high}"
        _fail(key, f"is {value!r}; must be {' and '.join(p for p in (lo, hi) if p)}")


_SHELL_SPECIAL = '"$`\n'  # what a shell still reads inside double quotes, and a newline


@dataclass(frozen=True)
class DataParams:
    """Where the labelled image folder is and how it is split.

    ``group_near_duplicates``: images whose perceptual hashes nearly match (a resized or
    re-encoded copy) stay in one split, as identical files always do.  ``ignore``: files the
    split leaves out, each with the reason (relative path -> reason), reported in skipped.csv.
    """
    dir: str = "data/digits"
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    group_near_duplicates: bool = False
    ignore: dict[str, str] = field(default_factory=dict)

    def validate(self, prefix: str) -> None:
        if not self.dir.strip():
            _fail(f"{prefix}.dir", "is empty; set it to a folder with one sub-folder per class")
        if set(self.dir) & set(_SHELL_SPECIAL):
            _fail(f"{prefix}.dir", f"is {self.dir!r}; dvc.yaml passes it to the stages in double "
                  "quotes, where a shell still reads \", $ and ` itself: rename the folder, or "
                  "link it under a plain name (ln -s)")
        for path, reason in self.ignore.items():
            if not path.strip() or path.startswith("/") or "\\" in path:
                _fail(f"{prefix}.ignore", f"has the path {path!r}; write each file relative to "
                      f"{prefix}.dir with forward slashes, as data/split/skipped.csv names it "
                      "(ants/123.jpg)")
            if not reason.strip():
                _fail(f"{prefix}.ignore", f"gives {path!r} no reason; write why the file is left "
                      "out (data/split/skipped.csv keeps it): {ants/123.jpg: a bee}")
        _range(f"{prefix}.val_fraction", self.val_fraction, 0.0, 1.0, low_open=True)
        _range(f"{prefix}.test_fraction", self.test_fraction, 0.0, 1.0)  # 0: evaluate.test_dir
        if self.val_fraction + self.test_fraction >= 1.0:
            _fail(f"{prefix}.val_fraction + test_fraction",
                  f"is {self.val_fraction + self.test_fraction:g}; the train fraction "
                  "(1 - val - test) must stay above 0")


@dataclass(frozen=True)
class PreprocessParams:
    """Decoding, resizing and the augmented views kept for each training image (``train_views``
    0: one canvas per image, and training draws fresh views every epoch: online augmentation)."""
    image_size: int | str = 64  # or "auto": the architecture's native input size
    train_views: int = 4
    crop_scale: tuple[float, float] = (0.7, 1.0)
    hflip: bool = False
    rotation: float = 10.0
    color_jitter: float = 0.2
    auto_augment: str = "none"  # none, trivial (TrivialAugmentWide), randaugment
    mixup: float = 0.0          # MixUp's Beta alpha; 0: off (online mode only)
    cutmix: float = 0.0         # CutMix's Beta alpha; 0: off (online mode only)
    workers: int = 2

    def validate(self, prefix: str) -> None:
        if isinstance(self.image_size, str):
            _choice(f"{prefix}.image_size", self.image_size, ["auto"], "an integer from 16 to 1024")
        else:
            _range(f"{prefix}.image_size", self.image_size, 16, 1024)
        _range(f"{prefix}.train_views", self.train_views, 0, 64)
        low, high = self.crop_scale
        if not 0 < low <= high <= 1:
            _fail(f"{prefix}.crop_scale", f"is {list(self.crop_scale)}; need 0 < min <= max <= 1")
        _range(f"{prefix}.rotation", self.rotation, 0, 180)
        _range(f"{prefix}.color_jitter", self.color_jitter, 0, 1)
        _choice(f"{prefix}.auto_augment", self.auto_augment, AUTO_AUGMENT)
        for key in ("mixup", "cutmix"):
            _range(f"{prefix}.{key}", getattr(self, key), 0, 10)
            if getattr(self, key) and self.train_views:
                _fail(f"{prefix}.{key}", f"is {getattr(self, key)}; MixUp and CutMix mix whole "
                      "batches, which needs online augmentation: set preprocess.train_views: 0")
        _range(f"{prefix}.workers", self.workers, 0, 64)


@dataclass(frozen=True)
class ModelParams:
    """Which pretrained backbone to start from."""
    arch: str = "tf_efficientnet_lite0"
    weights: str = "DEFAULT"  # DEFAULT, a torchvision weights name, none, or a file path

    def validate(self, prefix: str) -> None:
        if not self.arch:
            _fail(f"{prefix}.arch", "is empty; `python -m finetuner models` lists the names")
        # that the names are known: finetuner.arch_params (it needs the registry)


OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("constant", "step", "cosine", "onecycle")
MONITORS = ("val_acc", "val_loss")
CLASS_BALANCE = ("none", "weighted_loss", "sampler")
HEAD_INITS = ("random", "probe")
STRATEGIES = ("finetune", "probe", "auto")
AUTO_AUGMENT = ("none", "trivial", "randaugment")


@dataclass(frozen=True)
class TrainParams:
    """How the finetune stage trains (besides the top-level lr and freeze_depth)."""
    epochs: int = 10
    batch_size: int = 32
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 0.0
    label_smoothing: float = 0.0
    schedule: str = "cosine"
    warmup_epochs: int = 1
    step_size: int = 7
    gamma: float = 0.1
    backbone_lr_mult: float = 1.0
    stage_lr_decay: float = 1.0
    head_epochs: int = 0
    unfreeze_every: int = 0
    unfreeze_floor: int = 0
    early_stopping_patience: int = 0
    monitor: str = "val_loss"
    class_balance: str = "none"
    feature_cache_gb: float = 2.0
    loader_workers: int | str = "auto"  # processes reading batches; auto: 0 on CPU, <= 4 on CUDA
    head_init: str = "random"  # probe: the head starts from the linear probe (LP-FT)
    refit: bool = False        # retrain the chosen setup on train + val for the final model
    freeze_bn: bool = False    # BatchNorm statistics stay fixed in the stages that train
    resume: bool = True        # save the state every epoch; a rerun of the same inputs goes on

    def validate(self, prefix: str) -> None:
        _range(f"{prefix}.epochs", self.epochs, 1, 10_000)
        _range(f"{prefix}.batch_size", self.batch_size, 1, 65_536)
        _choice(f"{prefix}.optimizer", self.optimizer, OPTIMIZERS)
        _range(f"{prefix}.momentum", self.momentum, 0, 1)
        _range(f"{prefix}.weight_decay", self.weight_decay, 0)
        _range(f"{prefix}.label_smoothing", self.label_smoothing, 0, 1)
        _choice(f"{prefix}.schedule", self.schedule, SCHEDULES)
        _range(f"{prefix}.warmup_epochs", self.warmup_epochs, 0, self.epochs)
        _range(f"{prefix}.step_size", self.step_size, 1)
        _range(f"{prefix}.gamma", self.gamma, 0, 1, low_open=True)
        _range(f"{prefix}.backbone_lr_mult", self.backbone_lr_mult, 0)
        _range(f"{prefix}.stage_lr_decay", self.stage_lr_decay, 0, 1, low_open=True)
        _range(f"{prefix}.head_epochs", self.head_epochs, 0, self.epochs)
        _range(f"{prefix}.unfreeze_every", self.unfreeze_every, 0)
        _range(f"{prefix}.unfreeze_floor", self.unfreeze_floor, 0)
        _range(f"{prefix}.early_stopping_patience", self.early_stopping_patience, 0)
        _choice(f"{prefix}.monitor", self.monitor, MONITORS)
        _choice(f"{prefix}.class_balance", self.class_balance, CLASS_BALANCE)
        _range(f"{prefix}.feature_cache_gb", self.feature_cache_gb, 0)
        if isinstance(self.loader_workers, str):
            _choice(f"{prefix}.loader_workers", self.loader_workers, ["auto"],
                    "an integer from 0 to 64")
        else:
            _range(f"{prefix}.loader_workers", self.loader_workers, 0, 64)
        _choice(f"{prefix}.head_init", self.head_init, HEAD_INITS)


@dataclass(frozen=True)
class AuditParams:
    """What the audit stage reports (docs/audit.md): a pair is a near-duplicate when its
    feature distance is at most ``near_duplicate_ratio`` times each image's distance to its
    5th nearest image; an outlier when its mean distance to its nearest images is above the
    upper quartile by more than ``outlier_fence`` interquartile ranges (Tukey's fence), each
    batch of alike images (the same ratio against the 10th nearest image) counted as one."""
    near_duplicate_ratio: float = 0.6
    outlier_fence: float = 2.0
    gallery_size: int = 16

    def validate(self, prefix: str) -> None:
        _range(f"{prefix}.near_duplicate_ratio", self.near_duplicate_ratio, 0, 1)
        _range(f"{prefix}.outlier_fence", self.outlier_fence, 0)
        _range(f"{prefix}.gallery_size", self.gallery_size, 0, 100)


@dataclass(frozen=True)
class EvaluateParams:
    """How the evaluate stage reports."""
    batch_size: int = 64
    gallery_size: int = 16
    test_dir: str = ""  # a labelled folder scored instead of the test split ("": the split)

    def validate(self, prefix: str) -> None:
        _range(f"{prefix}.batch_size", self.batch_size, 1)
        _range(f"{prefix}.gallery_size", self.gallery_size, 0, 100)


# models.classifier.LAYERS, and auto (params import no model code)
PROBE_LAYERS = ("last", "all", "auto")


@dataclass(frozen=True)
class ProbeParams:
    """The linear probe of ``strategy: probe``: which pooled features it reads, and how its L2
    strength is chosen."""
    layers: str = "last"  # last: the last stage's pool; all: every stage's, concatenated;
    #                       auto: all or last, per backbone, by the cross-validation
    folds: int = 5        # k-fold cross-validation on train + val; 0: chosen on val, then refit

    def validate(self, prefix: str) -> None:
        _choice(f"{prefix}.layers", self.layers, PROBE_LAYERS)
        if self.folds != 0 and not 2 <= self.folds <= 20:
            _fail(f"{prefix}.folds", f"is {self.folds!r}; must be 0 (C chosen on val) or from 2 "
                  "to 20 (k-fold cross-validation on train + val)")
        if self.layers == "auto" and self.folds == 0:
            _fail(f"{prefix}.layers", "is 'auto' (every stage's features or the last stage's, "
                  f"chosen by cross-validation), but {prefix}.folds is 0: set {prefix}.folds "
                  f"to 2 or more (5 is usual), or {prefix}.layers to all or last")

    @property
    def model_layers(self) -> str:
        """What the model is built to read (``auto`` reads every stage; the probe may then
        weigh only the last stage's columns)."""
        return "all" if self.layers == "auto" else self.layers


DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")


def is_device_name(name: str) -> bool:
    """Whether ``name`` is one of :data:`DEVICES` (``cuda:N`` with N a number): the ``device``
    param's and the command line's ``--device``'s check."""
    return name in ("auto", "cpu", "cuda", "mps") or (name.startswith("cuda:")
                                                      and name[5:].isdigit())


PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class Params:
    """The whole of params.yaml."""
    preset: str = "demo"  # the conf/preset params.yaml was composed from: a record only
    seed: int = 0
    lr: float = 0.01
    freeze_depth: int | str = 0  # 0 trains everything; "all" (or the stage count) only the head
    strategy: str = "finetune"  # finetune, probe (linear probe only), auto (chosen on val)
    device: str = "auto"
    precision: str = "auto"
    threads: int = 0  # torch threads per process; 0: the cores this process may use
    nproc_per_node: int = 1
    data: DataParams = field(default_factory=DataParams)
    preprocess: PreprocessParams = field(default_factory=PreprocessParams)
    model: ModelParams = field(default_factory=ModelParams)
    train: TrainParams = field(default_factory=TrainParams)
    probe: ProbeParams = field(default_factory=ProbeParams)
    audit: AuditParams = field(default_factory=AuditParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)

    def validate(self, prefix: str = "") -> None:
        if not self.preset.strip():
            _fail("preset", "is empty; it names the conf/preset file params.yaml came from")
        _range("seed", self.seed, 0, 2**31 - 1)
        _range("lr", self.lr, 0, 10, low_open=True)
        if isinstance(self.freeze_depth, str):
            _choice("freeze_depth", self.freeze_depth, ["all"], "an integer >= 0")
        else:
            _range("freeze_depth", self.freeze_depth, 0)
        if not is_device_name(self.device):
            _fail("device", f"is {self.device!r}; allowed: {', '.join(DEVICES)}")
        _choice("precision", self.precision, PRECISIONS)
        _choice("strategy", self.strategy, STRATEGIES)
        _range("threads", self.threads, 0, 1024)
        _range("nproc_per_node", self.nproc_per_node, 1, 1024)
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if dataclasses.is_dataclass(value):
                value.validate(f.name)
        self._validate_probe_only()

    def _validate_probe_only(self) -> None:
        """Settings that only a probe can train: an ensemble (``a+b``), every layer's features."""
        if "+" in self.model.arch:
            if self.strategy != "probe":
                _fail("model.arch", f"is {self.model.arch!r}, an ensemble of several backbones;"
                      f" only strategy: probe trains one (strategy is {self.strategy!r})")
            if self.probe.folds == 0:
                _fail("probe.folds", "is 0 (L2 strength chosen on val), but an ensemble's "
                      "members are chosen by cross-validation: set 2 or more (5 is usual)")
        if self.probe.layers in ("all", "auto") and self.strategy != "probe":
            _fail("probe.layers", f"is {self.probe.layers!r}, which only strategy: probe trains "
                  f"(strategy is {self.strategy!r}); a fine-tune reads the last stage's pool")


# params.yaml is composed from conf/ (src/finetuner/presets.py): every value concrete.  Two
# values that are no values: OLD_PRESET, how a params.yaml of before conf/ asked for a preset's
# value, and MISSING, what Hydra leaves where conf/config.yaml says ??? and no preset set it.
OLD_PRESET = "preset"
MISSING = "???"
# The photos preset's backbones (conf/preset/photos.yaml's model.arch), the default of
# `finetuner audit --arch`, which runs without a project; tests/test_presets.py keeps them equal.
PHOTOS_ARCH = "tf_efficientnet_lite0+tf_efficientnet_lite1+tf_efficientnet_lite2"


def _placeholder(key: str, value) -> None:
    """Refuse a value that only stands for one (see OLD_PRESET and MISSING)."""
    if value == OLD_PRESET and key != "preset":
        _fail(key, "is 'preset', a params.yaml written before the presets moved to conf/: "
              "params.yaml now holds the values themselves.  Write it again from conf/ with "
              "`python -m finetuner.presets` (the demo; `python -m finetuner.presets photos` "
              "for the photos preset), or give this key a value (docs/params.md, Presets)")
    if value == MISSING:
        _fail(key, "is ??? (missing): conf/config.yaml leaves it to the preset, and "
              "conf/preset/<name>.yaml did not set it; set it there or with -S key=value")


# names people write for a key, where string similarity alone does not find it
ALIASES = {
    "learning_rate": "lr", "learningrate": "lr", "lr_rate": "lr", "base_lr": "lr",
    "random_seed": "seed", "rng_seed": "seed",
    "freeze": "freeze_depth", "frozen_stages": "freeze_depth", "freeze_layers": "freeze_depth",
    "arch": "model.arch", "architecture": "model.arch", "backbone": "model.arch",
    "model_name": "model.arch", "pretrained": "model.weights", "weights": "model.weights",
    "data_dir": "data.dir", "dataset": "data.dir", "path": "data.dir",
    "val_split": "data.val_fraction", "test_split": "data.test_fraction",
    "img_size": "preprocess.image_size", "size": "preprocess.image_size",
    "resolution": "preprocess.image_size", "num_workers": "preprocess.workers",
    "scheduler": "train.schedule", "lr_schedule": "train.schedule",
    "patience": "train.early_stopping_patience", "num_epochs": "train.epochs",
    "gpu": "device", "num_threads": "threads",
}


_SCHEMA = Schema(Params, ALIASES, _placeholder)


def parse_params(raw: dict | None) -> Params:
    """Build and validate :class:`Params` from the parsed YAML mapping: every check that needs
    no model code (those against the architecture registry: :mod:`finetuner.arch_params`)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError("params.yaml: the top level must be a mapping of keys to values")
    params = build(_SCHEMA, raw)
    params.validate()
    return params


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read ``path`` (safe YAML: no tags, no duplicate keys) and return the validated params
    (:func:`parse_params`; the stages that build a model add
    :func:`finetuner.arch_params.check_arch_params`)."""
    path = Path(path)
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=StrictLoader)
    except FileNotFoundError:
        raise ParamsError(f"{path}: not found; run from the project's root") from None
    except OSError as error:  # a folder, no permission to read
        raise ParamsError(f"{path}: cannot be read: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise ParamsError(f"{path}: not valid YAML: {error}") from None
    except UnicodeDecodeError as error:
        raise ParamsError(f"{path}: not UTF-8 text ({error.reason} at byte "
                          f"{error.start})") from None
    return parse_params(raw)


def to_dict(params: Params) -> dict:
    """Params as plain YAML-like data (for checkpoints and reports)."""
    def plain(value):
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value
    return plain(dataclasses.asdict(params))
