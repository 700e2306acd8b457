#!/usr/bin/env python
"""The data audit against injected faults on the shared sets, and its cost as a set grows.

    python benchmarks/audit.py [--sets hymenoptera trashnet chest_xray] [--seeds 0 1 2]
        [--arch ARCH] [--ratio 0.55] [--out benchmarks/out/audit]
    python benchmarks/audit.py --scale 600 20000 [--workdir DIR]
    python benchmarks/audit.py --analysis 600 20000

**Faults** (per set; the features are computed once, from the files, exactly as
``python -m finetuner audit FOLDER`` computes them, with the same functions).  ``--arch``
(default: the photos preset's, an ensemble) gives the input size and the backbones: every
fault is scored with the features of each member (``features=NAME``; the audit reads the
first: ``audit_arch``) and, for an ensemble, of all members side by side
(``features=side_by_side``), the alternative measured against it:

* ``unchanged``: the set as it is: how many findings of each kind.  The suspects are written
  to ``--out``/SET/FEATURES/suspects.csv and a gallery to ``--out``/SET/FEATURES/audit.png to
  look at.
* ``flips``: per seed, 5 % of the images get a random other class.  Features do not depend
  on labels, so this is the audit of a folder with those files moved.  ``flip_recall`` is the
  fraction of the flips among the first 2 x (number of flips) ``label`` rows (target >= 0.70).
* ``copies``: per seed, 10 % of the images get a near-duplicate in their own class: resized
  to 80 %, re-encoded at JPEG quality 70, 5 % cropped from one edge (chosen at random), saved
  as a new file whose features are computed from the file.  ``copy_recall``: injected pairs
  reported (target >= 0.90); ``false_fraction``: reported pairs that are neither injected nor
  found in the unchanged set, over all reported pairs (target <= 0.10); ``preexisting``: pairs
  the unchanged set has too (look at them in its gallery).  The split's perceptual-hash
  grouping is scored on the same copies (``hash_recall``, ``hash_false``).
* ``junk`` (once per set): images that do not belong, each added to the set alone: three
  blank frames and two screenshots (``made``, ``made_found``) and 10 photos of each other
  shared set (``foreign``, ``foreign_found``): how many the outlier check reports, and
  (``*_last_stage_only``) how many it would on the last stage's pooled features alone.
  Then each kind added all at once (``made_together_found``, ``foreign_together_found``),
  and (``*_ungrouped``) how many it would find scoring each image apart instead of each
  batch of alike images as one; ``*_together_pairs``: the near-duplicate pairs reported among
  them (none of them are copies of each other), and (``*_features_only``) how many the
  features alone would give, without the pixel check of two outliers.
  ``--first-only`` computes only the member the audit reads (a quarter of the time).

Prints ``name=value`` lines per set, seed and features, then per set and features the mean
and sample sd over seeds.

**Scale** (``--scale N ...``): N photo-like JPEGs made as ``benchmarks/scale.py`` makes them
(random crops of the shared photos, eight classes), then the split, input_spec, preprocess
and audit stages as the pipeline runs them with the photos preset (composed from conf/);
prints the audit stage's seconds, its feature seconds and its peak RSS (``os.wait4``) per N,
and the split's and preprocess's seconds beside them.  The photos are made in a child
process, so this one stays small (a child's peak RSS starts from its parent's).  Needs
../shared/datasets.

**Analysis** (``--analysis N ...``): the part of the stage after the features (near-duplicate
search in blocks, the cross-validated probe and cleanlab, the outlier score) on N synthetic
images with Lite0's feature widths (1,280 pooled, 1,792 regional; eight Gaussian classes, 1 %
twins), in a child process per N: ``analysis_seconds`` and ``analysis_peak_rss_mb`` (of which
the features are ``features_mb``).  What grows with N besides the features is what this shows.
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from shared_sets import shared_sets

ROOT = Path(__file__).resolve().parents[1]
SETS = shared_sets()
FLIP_FRACTION = 0.05
COPY_FRACTION = 0.10
FOREIGN = 10  # photos of each other shared set, added one at a time


def near_copy(image: Image.Image, rng: random.Random) -> Image.Image:
    """Resized to 80 %, JPEG quality 70, 5 % cropped from one edge."""
    w, h = image.size
    image = image.resize((max(1, round(w * 0.8)), max(1, round(h * 0.8))), Image.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=70)
    image = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    w, h = image.size
    dx, dy = round(w * 0.05), round(h * 0.05)
    box = {"left": (dx, 0, w, h), "right": (0, 0, w - dx, h), "top": (0, dy, w, h),
           "bottom": (0, 0, w, h - dy)}[rng.choice(["left", "right", "top", "bottom"])]
    return image.crop(box)


def side_by_side(parts: list):
    """Several backbones' features of the same images, concatenated per image, each part's
    vectors scaled to unit length first (each backbone weighs the same in a cosine); the
    thumbnails (pixels, the same in every part) the first part's."""
    from finetuner.audit.features import Features
    from finetuner.audit.findings import unit_rows
    return Features(*(np.hstack([unit_rows(getattr(p, name)) for p in parts])
                      for name in ("pooled", "regional", "taps")), parts[0].thumbs)


class SetUnderTest:
    """One shared set: its files, labels, perceptual hashes and features, computed once: the
    features of each member of ``arch`` (one, or an ensemble's) at ``arch``'s input size, as
    the audit stage computes them from the evaluation views (it reads the first member's:
    ``audit_arch``), and for an ensemble all members' features :func:`side_by_side`, the
    alternative it was measured against."""

    def __init__(self, root: Path, arch: str, first_only: bool = False,
                 image_size: int | None = None):
        from finetuner.data.scan import scan_folder
        from finetuner.models import build_model, input_spec, member_names
        self.root, self.arch = root, arch
        items, _ = scan_folder(root, progress=False)
        self.paths = [item.path for item in items]
        self.classes = sorted({item.label for item in items})
        self.labels = np.array([self.classes.index(item.label) for item in items])
        self.hashes = [item.phash for item in items]
        spec = input_spec(arch)  # or the views at image_size, as the stage prepares them
        self.spec = spec if image_size is None else dataclasses.replace(spec, size=image_size)
        names = member_names(arch)[:1] if first_only else member_names(arch)
        self.members = {name: build_model(name, "DEFAULT", len(self.classes)) for name in names}
        self.feature_seconds: dict[str, float] = {}
        self.features = self.features_of([root / p for p in self.paths], self.feature_seconds)

    def features_of(self, files: list[Path], seconds: dict | None = None) -> dict:
        """{variant: Features of ``files``}: each member's, and all of them ``side_by_side``."""
        from finetuner.audit.features import folder_batches, image_features
        batches = list(folder_batches(files, self.spec.size, self.spec.crop_pct))
        features = {}
        for name, model in self.members.items():
            start = time.perf_counter()
            features[name] = image_features(model, batches)
            if seconds is not None:
                seconds[name] = time.perf_counter() - start
        if len(self.members) > 1:
            features["side_by_side"] = side_by_side(list(features.values()))
        return features


def run_audit(features, labels, classes, paths, ratio: float, seed: int):
    from finetuner.audit.findings import audit
    from finetuner.params import AuditParams
    return audit(features, labels, classes, paths, [""] * len(paths), ratio,
                 AuditParams().outlier_fence, seed)


def pairs_of(result) -> set[frozenset]:
    return {frozenset((f.path, f.other)) for f in result.findings if f.issue == "near_duplicate"}


def unchanged(s: SetUnderTest, variant: str, ratio: float, out: Path):
    from finetuner.audit.report import suspects_png, write_suspects
    from finetuner.data.views import eval_view_of
    result = run_audit(s.features[variant], s.labels, s.classes, s.paths, ratio, 0)
    out.mkdir(parents=True, exist_ok=True)
    write_suspects(out / "suspects.csv", result)
    view = lambda p: eval_view_of(s.root / p, s.spec.size, s.spec.crop_pct)  # noqa: E731
    suspects_png(out / "audit.png", result, view, 24)
    return result


def flips(s: SetUnderTest, variant: str, ratio: float, seed: int) -> dict:
    rng = np.random.default_rng(seed)  # the same flips for every variant of a seed
    n, k = len(s.labels), len(s.classes)
    count = max(1, round(FLIP_FRACTION * n))
    flipped = rng.choice(n, count, replace=False)
    labels = s.labels.copy()
    labels[flipped] = (labels[flipped] + rng.integers(1, k, count)) % k
    result = run_audit(s.features[variant], labels, s.classes, s.paths, ratio, seed)
    rows = [f.path for f in result.findings if f.issue == "label"]
    top = set(rows[:2 * count])
    found = sum(s.paths[i] in top for i in flipped)
    return {"flips": count, "label_rows": len(rows), "flips_in_top": found,
            "flip_recall": round(found / count, 4)}


class Copies:
    """Per seed, 10 % of a set's images copied (:func:`near_copy`) into ``work``: the copies'
    names, features (per variant) and perceptual hashes."""

    def __init__(self, s: SetUnderTest, seed: int, work: Path):
        from finetuner.data.images import decode_image
        from finetuner.data.near_duplicates import HASH_SIDE, perceptual_hash
        rng = random.Random(seed)
        self.chosen = sorted(rng.sample(range(len(s.paths)),
                                        max(1, round(COPY_FRACTION * len(s.paths)))))
        folder = work / f"copies-{seed}"
        files, self.names = [], []
        for i in self.chosen:
            name = f"{Path(s.paths[i]).parent}/copy_of_{Path(s.paths[i]).stem}.jpg"
            file = folder / name
            file.parent.mkdir(parents=True, exist_ok=True)
            near_copy(decode_image(s.root / s.paths[i]), rng).save(file, quality=95)
            files.append(file)
            self.names.append(name)
        self.features = s.features_of(files)
        self.hashes = [perceptual_hash(decode_image(f, min_side=HASH_SIDE)) for f in files]
        shutil.rmtree(folder)


def copies(s: SetUnderTest, variant: str, c: Copies, ratio: float, seed: int,
           before: set) -> dict:
    from finetuner.audit.features import Features
    features = Features.concatenate([s.features[variant], c.features[variant]])
    paths = s.paths + c.names
    labels = np.concatenate([s.labels, s.labels[c.chosen]])
    result = run_audit(features, labels, s.classes, paths, ratio, seed)
    injected = {frozenset((s.paths[i], name)) for i, name in zip(c.chosen, c.names)}
    reported = pairs_of(result)
    found = len(reported & injected)
    preexisting = reported & before
    # a copy paired with an image its original already pairs with is a true pair too
    twins = {name: s.paths[i] for i, name in zip(c.chosen, c.names)}
    derived = {pair for pair in reported - injected - before
               if any(p in twins and frozenset((twins[p], *(pair - {p}))) in before
                      for p in pair)}
    false = len(reported - injected - before - derived)
    return {"copies": len(injected), "found": found, "copy_recall": round(found / len(injected), 4),
            "reported": len(reported), "preexisting": len(preexisting),
            "derived": len(derived), "false": false,
            "false_fraction": round(false / max(1, len(reported)), 4)}


def screenshot(seed: int) -> Image.Image:
    """A page of random words under a title bar, as a screen capture of a document."""
    from PIL import ImageDraw
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (1280, 800), (250, 250, 250))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, 1280, 40), fill=(40, 60, 90))
    for y in range(70, 780, 22):
        words = ("".join(chr(c) for c in rng.integers(97, 123, rng.integers(2, 9)))
                 for _ in range(rng.integers(5, 18)))
        draw.text((30, y), " ".join(words), fill=(20, 20, 20))
    return image


class Junk:
    """Images that do not belong to a set, each added to it alone: blank frames (grey, black,
    white), two screenshots, and ``FOREIGN`` photos of each other shared set."""

    def __init__(self, s: SetUnderTest, work: Path):
        blanks = {f"blank_{name}": Image.new("RGB", (500, 375), colour)
                  for name, colour in (("grey", (128,) * 3), ("black", (0,) * 3),
                                       ("white", (255,) * 3))}
        made = {**blanks, "screenshot_0": screenshot(0), "screenshot_1": screenshot(1)}
        files = []
        for name, image in made.items():
            files.append(work / f"{name}.png")
            image.save(files[-1])
        self.kinds = ["made"] * len(files)
        from finetuner.data.scan import scan_folder
        rng = random.Random(0)
        for other, root in SETS.items():
            if root != s.root and root.is_dir():  # (verifies every file only to sample 10)
                items, _ = scan_folder(root, progress=False)
                files += [root / item.path for item in rng.sample(items, FOREIGN)]
                self.kinds += [other] * FOREIGN
        self.features = s.features_of(files)


def last_stage_outliers(features) -> int:
    """How many outliers the last stage's pooled features alone give (the alternative)."""
    from finetuner.audit.findings import outliers
    from finetuner.params import AuditParams
    return len(outliers([features.pooled], AuditParams().outlier_fence))


def junk_outliers(features, ratio: float, grouped: bool = True) -> set[int]:
    """The outliers the audit reports among ``features`` (its rule: batches of alike images
    scored as one image; ``grouped=False``: each image alone, the rule before 2026-11-30)."""
    from finetuner.audit.findings import alike_groups, audit_outliers
    from finetuner.params import AuditParams
    group = alike_groups(features.regional, ratio) if grouped else None
    return {i for i, _ in audit_outliers(features, AuditParams().outlier_fence, group)}


def junk(s: SetUnderTest, variant: str, j: Junk, ratio: float) -> dict:
    """How many junk images the outlier check reports: each added alone, and each kind (made,
    foreign) added all together (``*_together``: alike junk is each other's nearest image)."""
    from finetuner.audit.features import Features
    from finetuner.audit.findings import outliers
    from finetuner.params import AuditParams
    fence, extra, n = AuditParams().outlier_fence, j.features[variant], len(s.paths)
    some = lambda rows: Features(extra.pooled[rows], extra.regional[rows],  # noqa: E731
                                 extra.taps[rows], extra.thumbs[rows])
    found = {key: 0 for key in ("made", "foreign", "made_last", "foreign_last")}
    for k in range(len(extra)):
        both = Features.concatenate([s.features[variant], some([k])])
        kind = "made" if j.kinds[k] == "made" else "foreign"
        found[kind] += n in junk_outliers(both, ratio)
        # the alternative: the last stage's pooled features alone (the rule before 2026-11-30)
        found[f"{kind}_last"] += n in {i for i, _ in outliers([both.pooled], fence)}
    made = j.kinds.count("made")
    record = {"made": made, "made_found": found["made"], "foreign": len(j.kinds) - made,
              "foreign_found": found["foreign"], "made_found_last_stage_only": found["made_last"],
              "foreign_found_last_stage_only": found["foreign_last"]}
    for kind, rows in (("made", list(range(made))), ("foreign", list(range(made, len(extra))))):
        together = Features.concatenate([s.features[variant], some(rows)])
        added = set(range(n, n + len(rows)))
        record[f"{kind}_together_found"] = len(junk_outliers(together, ratio) & added)
        record[f"{kind}_together_found_ungrouped"] = len(
            junk_outliers(together, ratio, grouped=False) & added)
        record.update(junk_pairs(together, added, kind, ratio))
    return record


def junk_pairs(features, added: set[int], kind: str, ratio: float) -> dict:
    """How many near-duplicate pairs the audit reports among the ``added`` junk images, and
    how many it would on the features alone (the rule before 2026-12-01: no pixel check)."""
    from finetuner.audit.findings import near_duplicate_pairs, pairs_and_outliers
    from finetuner.params import AuditParams
    reported, _ = pairs_and_outliers(features, ratio, AuditParams().outlier_fence)
    among = lambda pairs: sum(i in added and j in added for i, j, _ in pairs)  # noqa: E731
    return {f"{kind}_together_pairs": among(reported),
            f"{kind}_together_pairs_features_only": among(
                near_duplicate_pairs(features.regional, ratio))}


def hash_copies(s: SetUnderTest, c: Copies) -> dict:
    """The split's perceptual-hash grouping scored on the same copies."""
    from finetuner.data.near_duplicates import hash_pairs
    paths, hashes = s.paths + c.names, s.hashes + c.hashes
    labels = np.concatenate([s.labels, s.labels[c.chosen]])
    injected = {frozenset((s.paths[i], name)) for i, name in zip(c.chosen, c.names)}
    found = false = 0
    for label in range(len(s.classes)):
        members = np.flatnonzero(labels == label)
        for a, b, _ in hash_pairs([hashes[m] for m in members]):
            pair = frozenset((paths[members[a]], paths[members[b]]))
            found += pair in injected
            false += pair not in injected
    return {"hash_recall": round(found / len(injected), 4), "hash_false": false}


def faults(args) -> None:
    from finetuner.runtime import set_threads
    set_threads(0)
    for name in args.sets:
        root = SETS[name]
        if not root.is_dir():
            print(f"skipped: {root} not found (../shared is absent)")
            continue
        s = SetUnderTest(root, args.arch, args.first_only, args.image_size)
        print(f"set={name} images={len(s.paths)} classes={len(s.classes)} arch={args.arch} "
              f"size={s.spec.size} " + " ".join(f"feature_seconds_{m}={t:.1f}"
                                                for m, t in s.feature_seconds.items()),
              flush=True)
        before = {}
        for variant in s.features:
            base = unchanged(s, variant, args.ratio, args.out / name / variant)
            before[variant] = pairs_of(base)
            print(f"set={name} features={variant} unchanged "
                  + " ".join(f"{k}={v}" for k, v in base.summary().items())
                  + f" outlier_last_stage_only={last_stage_outliers(s.features[variant])}"
                  + f" suspects={args.out / name / variant / 'suspects.csv'}", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            j = Junk(s, Path(tmp))
        for variant in s.features:
            print(f"set={name} features={variant} junk "
                  + " ".join(f"{k}={v}" for k, v in junk(s, variant, j, args.ratio).items()),
                  flush=True)
        rows: dict[tuple[str, str], list[float]] = {}
        with tempfile.TemporaryDirectory() as tmp:
            for seed in args.seeds:
                c = Copies(s, seed, Path(tmp))
                result = hash_copies(s, c)
                print(f"set={name} seed={seed} hash " + " ".join(f"{k}={v}"
                                                                 for k, v in result.items()))
                rows.setdefault(("hash", "hash_recall"), []).append(result["hash_recall"])
                for variant in s.features:
                    for kind, result in (
                            ("flips", flips(s, variant, args.ratio, seed)),
                            ("copies", copies(s, variant, c, args.ratio, seed, before[variant]))):
                        print(f"set={name} seed={seed} features={variant} {kind} "
                              + " ".join(f"{k}={v}" for k, v in result.items()), flush=True)
                        for key in ("flip_recall", "copy_recall", "false_fraction"):
                            if key in result:
                                rows.setdefault((variant, key), []).append(result[key])
        for (variant, key), values in rows.items():
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            print(f"set={name} features={variant} {key}={statistics.mean(values):.3f} "
                  f"sd={sd:.3f} per_seed={','.join(f'{v:.3f}' for v in values)}", flush=True)


# --- scale ------------------------------------------------------------------------------------

def scale(args) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import scale as photos  # benchmarks/scale.py: the same generated photos
    from finetuner.presets import compose
    counts = sorted(set(args.scale))
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="finetuner-audit-scale-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"# workdir {workdir}", flush=True)
    try:
        folder = workdir / "photos"
        if not folder.is_dir():  # in a child: this process stays small (peak RSS is inherited)
            import subprocess
            subprocess.run([sys.executable, str(ROOT / "benchmarks" / "scale.py"), "--generate",
                            str(folder), str(counts[-1])], check=True)
        for n in counts:
            workspace = workdir / f"n{n}"
            shutil.rmtree(workspace, ignore_errors=True)
            photos.linked_subset(folder, workspace / "images", n)
            # the photos preset as `dvc exp run -S preset=photos` composes it from conf/
            raw = compose("photos", ["data.dir=images", "threads=0", "device=cpu",
                                     "preprocess.workers=2"], ROOT / "conf")
            (workspace / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
            times = {}
            for stage, stage_args in (
                    ("split", ["images", "data/split"]),
                    ("input_spec", ["data/input_spec.json"]),
                    ("preprocess", ["images", "data/split", "data/input_spec.json",
                                    "data/prepared"]),
                    ("audit", ["images", "data/split", "data/input_spec.json",
                               "data/audit/suspects.csv", "metrics"])):
                times[stage] = photos.run_stage(workspace, stage, *stage_args)
            metrics = json.loads((workspace / "metrics" / "audit.json").read_text())
            seconds, rss = times["audit"]
            print(f"images={n} audit_seconds={seconds:.1f} "
                  f"audit_feature_seconds={metrics['feature_seconds']} "
                  f"audit_rest_seconds={metrics['seconds'] - metrics['feature_seconds']:.1f} "
                  f"audit_peak_rss_mb={rss:.0f} split_seconds={times['split'][0]:.1f} "
                  f"preprocess_seconds={times['preprocess'][0]:.1f} "
                  + " ".join(f"{k}={metrics[k]}" for k in ("label", "near_duplicate",
                                                           "outlier", "arch")), flush=True)
            shutil.rmtree(workspace)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


def analysis_child(n: int) -> None:
    """Run in a child: the analysis of n synthetic images; prints seconds and peak RSS."""
    import resource
    from finetuner.audit.features import Features
    from finetuner.audit.findings import audit
    from finetuner.params import AuditParams
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 8, n)
    centres = rng.normal(size=(8, 1280)).astype(np.float32)
    pooled = np.abs(centres[labels] + 2.0 * rng.normal(size=(n, 1280)).astype(np.float32))
    regional = rng.normal(size=(n, 1792)).astype(np.float32)
    twins = rng.choice(n, (max(1, n // 100), 2), replace=False)
    regional[twins[:, 1]] = regional[twins[:, 0]] + 0.05 * rng.normal(size=(len(twins), 1792))
    taps = np.abs(rng.normal(size=(n, 192)).astype(np.float32))  # Lite0's, beside its pool
    features = Features(pooled, regional, taps)
    a = AuditParams()
    start = time.perf_counter()
    result = audit(features, labels, [str(c) for c in range(8)], [str(i) for i in range(n)],
                   [""] * n, a.near_duplicate_ratio, a.outlier_fence, 0)
    seconds = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    features_mb = (pooled.nbytes + regional.nbytes + taps.nbytes) / 2**20
    print(f"images={n} analysis_seconds={seconds:.1f} analysis_peak_rss_mb={rss:.0f} "
          f"features_mb={features_mb:.0f} near_duplicate={result.count('near_duplicate')} "
          f"twins={len(twins)}", flush=True)


def analysis(args) -> None:
    import subprocess
    for n in sorted(set(args.analysis)):
        subprocess.run([sys.executable, __file__, "--analysis-child", str(n)], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arch", default=None, help="default: the photos preset's")
    parser.add_argument("--image-size", type=int, default=None,
                        help="the views' size (default: --arch's native size; the photos "
                             "preset's stage reads 300)")
    parser.add_argument("--first-only", action="store_true",
                        help="only the member the audit reads (not the alternatives)")
    parser.add_argument("--ratio", type=float, default=None,
                        help="audit.near_duplicate_ratio (default: the params default)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "audit")
    parser.add_argument("--scale", type=int, nargs="+", help="time the stage at these sizes")
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--keep", action="store_true", help="keep the scale workdir")
    parser.add_argument("--analysis", type=int, nargs="+",
                        help="time the analysis after the features at these sizes")
    parser.add_argument("--analysis-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.analysis_child:
        return analysis_child(args.analysis_child)
    from finetuner.params import PHOTOS_ARCH, AuditParams
    args.arch = args.arch or PHOTOS_ARCH
    args.ratio = AuditParams().near_duplicate_ratio if args.ratio is None else args.ratio
    if args.analysis:
        return analysis(args)
    scale(args) if args.scale else faults(args)


if __name__ == "__main__":
    main()
