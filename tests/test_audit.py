"""The data audit: the near-duplicate search, findings from features, and `finetuner audit` on
tiny generated images (a flipped label, an exact and a resized copy, a blank image): circles,
squares and triangles scattered on plain backgrounds, which an ImageNet backbone tells apart."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil

import numpy as np
import torch
import pytest
from PIL import Image

from conftest import SHAPES, jpeg_copy, load_stage, make_shapes_folder, shapes_image
from finetuner.audit.features import Features
from finetuner.audit.findings import (COLUMNS, alike_groups, alike_pairs, audit,
                                      centred_unit_rows, group_means, near_duplicate_pairs,
                                      outliers, thumbnail_correlation, unit_rows)
from finetuner.cli import main
from finetuner.data.near_duplicates import groups, hash_pairs, nearest, perceptual_hash

ARCH = "tf_efficientnet_lite0"  # small, and its ImageNet weights come with the package
ENSEMBLE = "tf_efficientnet_lite0+tf_efficientnet_lite2"  # as the photos preset: Lite0 at 260 px


# --- the search, without model code -----------------------------------------------------------

def test_nearest_in_blocks_is_a_full_sort_without_self():
    x = np.random.default_rng(0).normal(size=(50, 8))
    full = np.linalg.norm(x[:, None] - x[None], axis=2)
    dist, index = nearest(50, 4, lambda rows: full[rows], block=7)
    np.fill_diagonal(full, np.inf)
    assert (index == np.argsort(full, axis=1)[:, :4]).all()
    assert np.allclose(dist, np.sort(full, axis=1)[:, :4])
    dist, index = nearest(3, 4, lambda rows: full[:3, :3][rows])  # fewer rows than k
    assert (index[:, 2:] == -1).all() and np.isinf(dist[:, 2:]).all()


def test_nearest_breaks_ties_by_index_whatever_k():
    """Hamming-like distances tie often, identical images always: the first j columns of a
    search for k are the search for j, ties to the lower index."""
    rng = np.random.default_rng(0)
    d = rng.integers(0, 4, size=(40, 40)).astype(np.float32)
    d = np.minimum(d, d.T)
    d[20:30, 20:30] = 0.0  # ten identical rows
    ten = nearest(40, 10, lambda rows: d[rows], block=7)
    for j in (1, 5, 9):
        dist, index = nearest(40, j, lambda rows: d[rows], block=3)
        assert (index == ten[1][:, :j]).all() and (dist == ten[0][:, :j]).all()
    for row in range(40):
        others = [c for c in range(40) if c != row]
        expected = sorted(others, key=lambda c: (d[row, c], c))[:10]
        assert list(ten[1][row]) == expected

def test_a_resized_reencoded_copy_has_a_near_hash_and_others_do_not():
    rng = np.random.default_rng(1)
    images = [shapes_image("circles", rng) for _ in range(12)]
    hashes = [perceptual_hash(image) for image in images]
    hashes.append(perceptual_hash(jpeg_copy(images[3])))
    assert [(a, b) for a, b, _ in hash_pairs(hashes)] == [(3, 12)]


def test_the_guard_keeps_a_cluster_of_look_alike_hashes_from_chaining():
    base = 0x0F0F0F0F0F0F0F0F
    dense = [base] + [base ^ (1 << bit) for bit in range(8)]  # all within 2 bits of each other
    assert hash_pairs(dense) == []  # no pair stands out: the hash cannot tell them apart
    assert hash_pairs(dense + [dense[4]]) == [(4, 9, 0)]  # identical hashes always pair
    assert len(set(groups(10, hash_pairs(dense + [dense[4]])))) == 9


def test_the_ratio_test_pairs_twins_in_a_spread_and_in_a_dense_domain():
    rng = np.random.default_rng(0)
    for common in (0.0, 20.0):  # photos differ a lot; X-rays share most of their features
        x = common + rng.normal(size=(40, 64))
        twins = np.vstack([x, x[7], x[11] + 0.05 * rng.normal(size=64)])
        pairs = near_duplicate_pairs(twins, ratio=0.6)
        assert [(i, j) for i, j, _ in pairs] == [(7, 40), (11, 41)]
        assert pairs[0][2] == 1.0 and 0.6 < pairs[1][2] < 1.0  # identical: certain


def test_findings_come_by_kind_most_certain_first_and_the_summary_counts_them():
    rng = np.random.default_rng(0)
    pooled = np.vstack([rng.normal(loc, 0.3, size=(15, 16)) for loc in (-2.0, 2.0)])
    labels = np.repeat([0, 1], 15)
    labels[[3, 5]] = 1  # two flipped
    regional = rng.normal(size=(30, 32))
    regional[29] = regional[28] + 0.01 * rng.normal(size=32)  # a near copy
    paths = [f"{'ab'[n // 15]}/{n}.png" for n in range(30)]
    splits = ["train"] * 20 + ["val"] * 5 + ["test"] * 5
    splits[28] = "val"
    result = audit(Features(pooled, regional), labels, ["a", "b"], paths, splits, 0.6, 1.5, 0)
    kinds = [f.issue for f in result.findings]
    assert kinds == sorted(kinds, key=("label", "near_duplicate", "outlier").index)
    label_rows = [f for f in result.findings if f.issue == "label"]
    assert {f.path for f in label_rows} == {"a/3.png", "a/5.png"}
    assert all(f.given == "b" and f.suggested == "a" for f in label_rows)
    assert [f.score for f in label_rows] == sorted((f.score for f in label_rows), reverse=True)
    twin = next(f for f in result.findings if f.issue == "near_duplicate")
    assert (twin.path, twin.split, twin.other, twin.other_split) == (
        "b/29.png", "test", "b/28.png", "val")  # path: the copy in the later split
    summary = result.summary()
    assert summary["label"] == 2 and summary["near_duplicate_pairs_across_splits"] == 1
    assert list(COLUMNS) == list(twin.record()) and len(twin.row()) == len(COLUMNS)
    assert json.loads(json.dumps([f.record() for f in result.findings]))  # plain numbers


def test_an_image_far_in_either_representation_is_an_outlier():
    """The last stage alone can miss junk (a blank frame among objects on plain backgrounds),
    every stage alone can miss other junk (a screenshot among insects): either is enough."""
    rng = np.random.default_rng(0)
    last = np.abs(rng.normal(size=(40, 16)))
    taps = np.abs(rng.normal(size=(40, 8)))
    last[3] = 0.0
    last[3, 5] = 50.0  # unlike the rest in its last-stage features (cosine: the direction)
    taps[7] = 0.0
    taps[7, 0] = 50.0  # unlike the rest in its early stages only
    regional = rng.normal(size=(40, 256))  # no two images alike (no near-duplicate groups)
    only_last = audit(Features(last, regional), np.repeat([0, 1], 20),
                      ["a", "b"], [str(i) for i in range(40)], [""] * 40, 0.6, 2.0, 0)
    both = audit(Features(last, regional, taps), np.repeat([0, 1], 20),
                 ["a", "b"], [str(i) for i in range(40)], [""] * 40, 0.6, 2.0, 0)
    found = {f.path for f in both.findings if f.issue == "outlier"}
    assert "7" not in {f.path for f in only_last.findings if f.issue == "outlier"}
    assert {"3", "7"} <= found


def test_the_taps_are_every_stage_but_the_last_pooled_in_order():
    import torch
    from finetuner.audit.features import image_features
    from finetuner.models import build_model
    model = build_model("resnet18", "none", 2, layers="all").eval()
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    features = image_features(model, [images])
    with torch.no_grad():
        expected = model.features(torch.as_tensor(images).permute(0, 3, 1, 2)).numpy()
    assert np.allclose(features.every_stage(), expected, atol=1e-5)
    assert features.taps.shape[1] == expected.shape[1] - features.pooled.shape[1] > 0


def test_features_announced_are_written_into_place_the_same_numbers():
    """With the count known the features are held once, in arrays allocated at the first batch
    (no per-batch arrays joined at the end), and they are the same."""
    from finetuner.audit.features import FeatureRows, image_features
    from finetuner.models import build_model
    model = build_model("resnet18", "none", 2, layers="all").eval()
    images = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    batches = [images[:2], images[2:4], images[4:]]
    joined, written = image_features(model, batches), image_features(model, batches, count=5)
    for name in ("pooled", "regional", "taps", "thumbs"):
        a, b = getattr(joined, name), getattr(written, name)
        assert a.dtype == b.dtype and np.array_equal(a, b)
    rows = FeatureRows(np.float32, count=3)
    first = np.ones((2, 4), np.float32)
    rows.add(first)
    held = rows.parts[0]
    rows.add(np.zeros((1, 4), np.float32))
    assert rows.array() is held and len(rows.parts) == 1 and not np.shares_memory(held, first)
    with pytest.raises(ValueError):
        rows.add(np.zeros((1, 4), np.float32))
    with pytest.raises(ValueError):
        FeatureRows(np.float32, count=4).array()


def test_the_thumbnails_are_the_views_in_grey_averaged_down():
    from finetuner.audit.features import THUMB_SIDE, image_features
    from finetuner.models import build_model
    model = build_model("resnet18", "none", 2).eval()
    images = np.zeros((2, 64, 64, 3), dtype=np.uint8)
    images[0, :, 32:] = 255  # left half black, right half white
    images[1] = (200, 100, 50)
    thumbs = image_features(model, [images]).thumbs.reshape(2, THUMB_SIDE, THUMB_SIDE)
    half = THUMB_SIDE // 2
    assert thumbs.dtype == np.uint8 and (thumbs[0, :, :half] == 0).all()
    assert (thumbs[0, :, half:] == 255).all()
    grey = Image.new("RGB", (1, 1), (200, 100, 50)).convert("L").getpixel((0, 0))
    assert (thumbs[1] == grey).all()  # as PIL's convert("L")


def pairs_and_far(thumbs: np.ndarray | None, junk_regional=None) -> tuple[set, set]:
    """The near-duplicate pairs and the outliers the audit reports among 60 unlike photos (two
    of them shots of one object: alike in features, not in pixels) and two junk images, far
    from the photos and alike to the backbone (``junk_regional``: their regional features)."""
    rng = np.random.default_rng(0)
    photos = 60
    pooled = np.abs(rng.normal(size=(photos + 2, 16)))
    regional = rng.normal(size=(photos + 2, 256))
    regional[1] = regional[0] + 0.05 * rng.normal(size=256)
    pooled[photos:] = 0.0
    pooled[photos:, 5] = 50.0 + 0.01 * rng.normal(size=2)
    regional[photos:] = (10.0 + rng.normal(size=(2, 256)) if junk_regional is None
                         else junk_regional)
    paths = [str(i) for i in range(photos + 2)]
    result = audit(Features(pooled, regional, thumbs=thumbs), np.arange(photos + 2) % 2,
                   ["a", "b"], paths, [""] * len(paths), 0.6, 2.0, 0)
    return ({(f.other, f.path) for f in result.findings if f.issue == "near_duplicate"},
            {f.path for f in result.findings if f.issue == "outlier"})


def test_two_outliers_pair_only_when_their_thumbnails_agree():
    """A blank frame and a text page (/tmp/junkset: 19 % apart in features, each one's 5th
    nearest a photo): the ratio test cannot vouch for two outliers, their pixels must; two
    shots of one object (neighbours of their kind) pair on the features alone."""
    rng = np.random.default_rng(1)
    thumbs = rng.integers(0, 256, (62, 32 * 32), dtype=np.uint8)  # no two alike in pixels
    thumbs[60] = 255  # a blank frame: flat, correlates with nothing
    assert thumbnail_correlation(thumbs, 60, 61) == 0.0
    faint = thumbs.copy()  # nearly blank pages: faint gradients of 1-3 grey levels agree in shape
    faint[60] = (250 + np.arange(32 * 32) // 256).astype(np.uint8)
    faint[61] = (5 + np.arange(32 * 32) // 342).astype(np.uint8)
    assert thumbnail_correlation(faint, 60, 61) == 0.0
    assert pairs_and_far(thumbs) == ({("0", "1")}, {"60", "61"})
    copy = thumbs.copy()  # a copy in pixels too, cropped: shifted by two thumbnail pixels
    copy[60] = np.roll(copy[61].reshape(32, 32), 2, axis=1).ravel()
    assert thumbnail_correlation(copy, 60, 61, shift=0) < 0.1 < 0.99 < thumbnail_correlation(
        copy, 60, 61)
    assert pairs_and_far(copy) == ({("0", "1"), ("60", "61")}, {"60", "61"})
    assert pairs_and_far(None)[0] == {("0", "1"), ("60", "61")}  # no thumbnails: features
    same = np.tile(10.0 + rng.normal(size=256), (2, 1))  # identical features always pair
    assert pairs_and_far(thumbs, same)[0] == {("0", "1"), ("60", "61")}


def split_project(root, counts: dict[str, int], size: int = 32, workers: int = 0,
                  arch: str = ARCH):
    """In ``root``: images/ (96 px JPEGs of three shapes), the split stage's manifests of
    ``counts`` images per split, input_spec.json at ``size`` and params.yaml; returns root."""
    per_class = -(-sum(counts.values()) // len(SHAPES))
    make_shapes_folder(root / "images", per_class)
    files = [f"{kind}/img_{i:03d}.jpg" for i in range(per_class) for kind in SHAPES]  # mixed
    (root / "split").mkdir()
    for split, count in counts.items():
        rows, files = files[:count], files[count:]
        (root / "split" / f"{split}.csv").write_text("\n".join(
            ["path,label,sha256", *(f"{path},{path.split('/')[0]},0" for path in rows)]))
    (root / "split" / "summary.json").write_text(json.dumps({"classes": list(SHAPES)}))
    (root / "input_spec.json").write_text(json.dumps({"image_size": size, "crop_pct": 0.875}))
    (root / "params.yaml").write_text(
        f"preset: demo\nstrategy: probe\nmodel:\n  arch: {arch}\n  weights: none\n"
        f"preprocess:\n  workers: {workers}\n")
    return root


AUDIT_ARGS = ["images", "split", "input_spec.json", "audit/suspects.csv", "metrics"]


@pytest.mark.parametrize("arch", [ARCH, "tf_efficientnet_lite0+mobilenet_v3_small"])
def test_the_stage_writes_its_three_outputs_and_takes_an_empty_test_split(tmp_path, monkeypatch,
                                                                          arch):
    """An ensemble model.arch (the photos preset's kind): the audit reads its first member."""
    split_project(tmp_path, {"train": 9, "val": 3, "test": 0}, arch=arch)
    monkeypatch.chdir(tmp_path)
    load_stage("audit").main(*AUDIT_ARGS)
    counts = json.loads((tmp_path / "metrics" / "audit.json").read_text())
    assert counts["images"] == 12 and counts["arch"] == ARCH
    with open(tmp_path / "audit" / "suspects.csv") as f:
        assert tuple(csv.DictReader(f).fieldnames) == COLUMNS
    assert (tmp_path / "metrics" / "audit.png").stat().st_size > 0


def test_the_audit_and_the_folder_readers_see_the_pixels_preprocess_stores(tmp_path):
    """The audit decodes the images itself (so augmentation does not rerun it), and so do
    ``evaluate.test_dir``, ``finetuner predict`` and ``evaluate`` (finetuner.data.folders):
    their views are preprocess's evaluation views to the byte, JPEG draft decoding and 2
    workers included."""
    from finetuner.audit.features import folder_batches
    from finetuner.data.augment import Augmentation
    from finetuner.data.folders import eval_views
    from finetuner.data.manifest import read_manifests
    from finetuner.data.prepared import load_prepared
    from finetuner.data.preprocess import prepare
    split_project(tmp_path, {"train": 6, "val": 3, "test": 3}, size=24)
    (tmp_path / "prepared").mkdir()
    prepare(tmp_path / "split", tmp_path / "images", tmp_path / "prepared", 24, 0.875, 1,
            Augmentation(), 0, 0)
    prepared = load_prepared(tmp_path / "prepared")
    paths, labels, _ = read_manifests(tmp_path / "split").listed()
    views = np.concatenate([b.numpy() for b in folder_batches(
        [tmp_path / "images" / p for p in paths], 24, 0.875, batch_size=5, workers=2)])
    stored = np.concatenate([prepared.images[s] for s in ("train", "val", "test")])
    assert views.shape == (12, 24, 24, 3) and np.array_equal(views, stored)
    skipped = []
    read = np.concatenate([v for _, v in eval_views(
        [tmp_path / "images" / p for p in paths], 24, 0.875, 5,
        lambda *entry: skipped.append(entry))])
    assert not skipped and np.array_equal(read, stored)
    assert list(labels) == list(np.concatenate([prepared.labels[s] for s in
                                                 ("train", "val", "test")]))


def test_an_image_gone_after_the_split_stops_the_stage_with_one_line(tmp_path, monkeypatch):
    from conftest import ROOT, stage_exit
    split_project(tmp_path, {"train": 6, "val": 3, "test": 3}, workers=2)
    gone = (tmp_path / "split" / "val.csv").read_text().splitlines()[2].split(",")[0]
    (tmp_path / "images" / gone).unlink()
    code = stage_exit(tmp_path, ROOT / "stages" / "audit.py", AUDIT_ARGS, monkeypatch)
    assert code.startswith(f"audit: error: images/{gone}: cannot read") and "\n" not in code
    assert "did the data change after split?" in code
    assert not (tmp_path / "metrics" / "audit.json").exists()


def alike_junk(junk: int, photos: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """(pooled, regional) of ``photos`` unlike images and ``junk`` blank frames alike."""
    rng = np.random.default_rng(0)
    pooled = np.abs(rng.normal(size=(photos + junk, 16)))
    regional = rng.normal(size=(photos + junk, 256))  # no two photos alike
    pooled[photos:] = 0.0
    pooled[photos:, 5] = 50.0 + 0.01 * rng.normal(size=junk)  # alike, and unlike the photos
    regional[photos:] = 10.0 + 0.01 * rng.normal(size=(junk, 256))
    return pooled, regional


def outliers_found(junk: int, photos: int = 60) -> set[str]:
    pooled, regional = alike_junk(junk, photos)
    paths = [str(i) for i in range(photos + junk)]
    result = audit(Features(pooled, regional), np.arange(photos + junk) % 2, ["a", "b"], paths,
                   [""] * len(paths), 0.6, 2.0, 0)
    return {f.path for f in result.findings if f.issue == "outlier"}


def test_a_batch_of_ten_alike_is_found_and_of_eleven_is_not():
    """docs/audit.md, Limits: up to ten (the outlier check's k), each one's 10th nearest is a
    photo; from eleven on it is another of them, and the batch is a class of its own."""
    assert outliers_found(10) == {str(i) for i in range(60, 70)}
    assert not outliers_found(11) & {str(i) for i in range(60, 71)}


def test_a_batch_of_alike_junk_is_found_as_one_group():
    """Eight blank frames alike are each other's nearest images: scored apart they vouch for
    each other (one alone is found), as one batch (the ratio test against the 10th nearest
    image; too many to pair as near-duplicates against the 5th) they are one point far from
    every photo."""
    photos, junk = 60, 8
    pooled, regional = alike_junk(junk, photos)
    labels = np.arange(photos + junk) % 2
    paths = [str(i) for i in range(photos + junk)]
    result = audit(Features(pooled, regional), labels, ["a", "b"], paths, [""] * len(paths),
                   0.6, 2.0, 0)
    batch = alike_groups(regional, 0.6)
    assert len(set(batch[photos:])) == 1 and len(set(batch[:photos])) == photos
    scores = {f.path: f.score for f in result.findings if f.issue == "outlier"}
    assert set(scores) == set(paths[photos:])
    assert len(set(scores.values())) == 1  # one group, one score
    apart = {i for i, _ in outliers([pooled], 2.0)}  # each image its own point
    assert not apart & set(range(photos, photos + junk))
    assert photos in {i for i, _ in outliers([pooled[:photos + 1]], 2.0)}  # one frame alone
    means, member_of = group_means(pooled, groups(len(pooled), [(photos, photos + 1)]))
    assert len(means) == len(pooled) - 1 and member_of[photos] == member_of[photos + 1]
    assert np.allclose(means[member_of[photos]], pooled[photos:photos + 2].mean(0), atol=1e-4)
    for block in (1, 7):  # a few columns at a time: the same numbers
        assert np.array_equal(group_means(pooled, groups(len(pooled), [(photos, photos + 1)]),
                                          block)[0], means)


def test_centred_unit_rows_are_unit_rows_of_the_centred_in_one_copy():
    """Block by block, the same numbers as centring then scaling the whole; ``x`` untouched."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(70, 33)).astype(np.float32)
    x[5] = x.mean(0)  # a zero row once centred
    before = x.copy()
    expected = unit_rows(x - x.mean(0))
    for block in (1, 8, 1024):
        got = centred_unit_rows(x, block)
        assert got.dtype == np.float32 and np.array_equal(got, expected)
        assert not np.shares_memory(got, x)
    assert np.array_equal(x, before)


def test_one_search_gives_the_near_duplicates_and_the_batches():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 64))
    x[40:46] = x[40] + 0.01 * rng.normal(size=(6, 64))  # six alike: too many for the 5th
    x[49] = x[3] + 0.01 * rng.normal(size=64)  # a twin
    x[30:38] = x[30]  # eight identical: which twins are named must not depend on the search
    pairs, batches = alike_pairs(x, 0.6, (5, 10))
    assert pairs == near_duplicate_pairs(x, 0.6)
    assert [(i, j) for i, j, _ in pairs if not 30 <= i < j < 38] == [(3, 49)]
    assert groups(50, pairs)[30:38].tolist() == [groups(50, pairs)[30]] * 8
    assert {(i, j) for i, j, _ in batches} >= {(3, 49)} | {(i, j) for i in range(40, 46)
                                                             for j in range(i + 1, 46)}


# --- `finetuner audit` on tiny generated images -----------------------------------------------

def run_cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["audit", *args])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def faulty(tmp_path_factory):
    """A folder with one flipped label, an exact and a resized copy, a blank image; the CSV
    `finetuner audit` prints for it with an ensemble's name, as the photos preset's
    (its first member reads the views at the ensemble's size), and the summary on stderr."""
    root = make_shapes_folder(tmp_path_factory.mktemp("audit") / "set", 10)
    rng = np.random.default_rng(7)
    shapes_image("circles", rng).save(root / "squares" / "flipped.jpg", quality=95)
    shutil.copy(root / "triangles" / "img_000.jpg", root / "triangles" / "exact_copy.jpg")
    jpeg_copy(Image.open(root / "triangles" / "img_001.jpg")).save(
        root / "triangles" / "resized_copy.jpg")
    Image.new("RGB", (96, 96), "white").save(root / "circles" / "blank.jpg")
    code, out, err = run_cli(str(root), "--arch", ENSEMBLE)
    return code, list(csv.DictReader(io.StringIO(out))), err


def test_the_cli_prints_the_suspects_as_csv_and_exits_0(faulty):
    code, rows, err = faulty
    assert code == 0 and rows
    assert list(rows[0]) == list(COLUMNS)
    assert all(row["split"] == "" for row in rows)  # outside the pipeline: no splits
    assert f"({ARCH} at 260 px)" in err
    assert "likely wrong label(s) (the probe right on " in err


def test_the_line_says_how_right_the_probe_is_and_warns_when_it_is_weak():
    """A weak probe's label suspects are mostly right labels it confuses: the line says so."""
    from finetuner.audit.report import labels_phrase

    strong = labels_phrase({"label": 3, "probe_accuracy": 0.95})
    assert strong == "3 likely wrong label(s) (the probe right on 95% out of fold)"
    weak = labels_phrase({"label": 20, "probe_accuracy": 0.72})
    assert weak.startswith("20 likely wrong label(s) (the probe right on 72% out of fold: "
                           "a weak probe") and "look before you relabel" in weak
    assert "weak" not in labels_phrase({"label": 0, "probe_accuracy": 0.72})
    assert "right on 89% out of fold: a weak probe" in labels_phrase(  # never "90%" and weak
        {"label": 2, "probe_accuracy": 0.8995})
    assert labels_phrase({"label": 0, "probe_accuracy": None}) == "0 likely wrong label(s)"


def test_a_flipped_label_is_found_with_its_true_class_suggested(faulty):
    labels = [row for row in faulty[1] if row["issue"] == "label"]
    assert labels and labels[0]["path"] == "squares/flipped.jpg"
    assert (labels[0]["given"], labels[0]["suggested"]) == ("squares", "circles")


def test_an_exact_and_a_resized_copy_are_paired_with_their_originals(faulty):
    pairs = {frozenset((row["path"], row["other"])) for row in faulty[1]
             if row["issue"] == "near_duplicate"}
    assert frozenset(("triangles/img_000.jpg", "triangles/exact_copy.jpg")) in pairs
    assert frozenset(("triangles/img_001.jpg", "triangles/resized_copy.jpg")) in pairs


def test_a_blank_image_is_an_outlier(faulty):
    outliers = [row["path"] for row in faulty[1] if row["issue"] == "outlier"]
    assert outliers and outliers[0] == "circles/blank.jpg"


def test_the_cli_exits_0_with_a_json_list_for_a_clean_folder(tmp_path):
    root = make_shapes_folder(tmp_path / "clean", 3)
    shutil.rmtree(root / "triangles")
    (root / "stars").mkdir()  # an empty class folder: left out, with a warning
    code, out, err = run_cli(str(root), "--arch", ARCH, "--json", "--image-size", "48")
    assert code == 0 and isinstance(json.loads(out), list)
    assert f"({ARCH} at 48 px)" in err  # what a stage with preprocess.image_size: 48 reads
    assert (f"warning: {root}: class folder(s) with no usable image, left out: stars\n"
            in err)


def test_the_cli_says_what_is_wrong_with_its_arguments(tmp_path, capsys):
    assert main(["audit", str(tmp_path / "absent")]) == 2
    assert f"{tmp_path / 'absent'}: does not exist" in capsys.readouterr().err
    (tmp_path / "some_file.txt").write_text("x")
    assert main(["audit", str(tmp_path / "some_file.txt")]) == 2
    err = capsys.readouterr().err  # no pipeline hint (params.yaml) on the command line
    assert err.endswith("some_file.txt: is a file, not a folder (expected a folder with one "
                        "sub-folder per class)\n")
    make_shapes_folder(tmp_path / "one", 2)
    for kind in ("squares", "triangles"):
        shutil.rmtree(tmp_path / "one" / kind)
    assert main(["audit", str(tmp_path / "one")]) == 2
    assert "at least 2" in capsys.readouterr().err
    assert main(["audit", str(tmp_path / "one"), "--arch", "tf_efficientnet_lite9"]) == 2
    assert "tf_efficientnet_lite" in capsys.readouterr().err
    make_shapes_folder(tmp_path / "two", 2)
    assert main(["audit", str(tmp_path / "two"), "--arch", ARCH, "--image-size", "24"]) == 2
    assert "--image-size 24 is below" in capsys.readouterr().err  # Lite0's 32 px
    if not torch.cuda.is_available():  # a device that is not here: before any image is read
        assert main(["audit", str(tmp_path / "absent"), "--arch", ARCH, "--device", "cuda"]) == 2
        assert "--device is 'cuda' but CUDA is not available here" in capsys.readouterr().err


def test_a_file_gone_while_the_cli_reads_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    """scan_folder checked every file; one removed before its view is read is named, with
    what probably happened (no split here), not a traceback."""
    import finetuner.audit.features as features
    root = make_shapes_folder(tmp_path / "set", 3)
    real = features.folder_batches

    def remove_first_then_read(paths, *args, **kwargs):
        paths[0].unlink()
        return real(paths, *args, **kwargs)

    monkeypatch.setattr(features, "folder_batches", remove_first_then_read)
    assert main(["audit", str(root), "--arch", ARCH]) == 2
    err = capsys.readouterr().err
    assert "circles/img_000.jpg: cannot read" in err and "did the folder change while it was read?" in err
    assert "Traceback" not in err and "after split" not in err
