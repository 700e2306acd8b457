"""Dirty image folders: every case a real folder throws at split and preprocess.

The folder is generated in a temp dir (nothing stored in git).  Each file has an expected
outcome: kept under a class, or skipped with a reason that says why; the test checks every one
against the split stage's real output (``skipped.csv`` and the manifests), then runs the
preprocess stage on it and checks pixels (EXIF rotation, 16-bit, transparency, CMYK).
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from conftest import ROOT, SHARED, load_stage, make_image_folder
from finetuner.data import images as images_module
from finetuner.data.images import MAX_PIXELS, ImageError, decode_image
from finetuner.data.scan import DatasetError
from finetuner.data.split import split_folder

PARAMS = {"seed": 0, "data": {"val_fraction": 0.2, "test_fraction": 0.2},
          "preprocess": {"image_size": 32, "train_views": 2, "workers": 0},
          "model": {"arch": "tf_efficientnet_lite0", "weights": "none"}}


# --- writing every kind of file -----------------------------------------------------------

def _pixels(colour, size=(24, 24), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = rng.integers(-20, 20, (size[1], size[0], 3))
    return np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def png_bytes(width: int, height: int, colour_type: int = 0, depth: int = 8,
              rows: bytes | None = None, write_rows: int | None = None) -> bytes:
    """A PNG written by hand: any header (a bomb can claim any size), zero pixels by default."""
    channels = {0: 1, 2: 3, 6: 4}[colour_type]
    row = rows if rows is not None else b"\0" * (1 + width * channels * depth // 8)
    count = height if write_rows is None else write_rows
    packer = zlib.compressobj(9)
    data = b"".join(packer.compress(row) for _ in range(count)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", data)
            + _chunk(b"IEND", b""))


def jpeg_bytes(pixels: np.ndarray, **save) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=95, **save)
    return buffer.getvalue()


def two_colour(width=48, height=24) -> np.ndarray:
    """Left half red, right half blue: where red ends up tells the orientation."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:, : width // 2] = (255, 0, 0)
    pixels[:, width // 2:] = (0, 0, 255)
    return pixels


def rotated_jpeg(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return jpeg_bytes(two_colour(), exif=exif)


def save(path: Path, data: bytes | Image.Image, fmt: str | None = None, **options) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        data.save(path, fmt, **options)


KEPT = "kept"


def build_dirty_folder(root: Path) -> dict[str, tuple[str, str]]:
    """Write the dirty folder; return {relative path: (KEPT, label) or ("skipped", reason part)}."""
    expect: dict[str, tuple[str, str]] = {}

    def kept(rel, label=None):
        expect[rel] = (KEPT, label or rel.split("/")[0])

    def skipped(rel, reason):
        expect[rel] = ("skipped", reason)

    colours = {"ants": (200, 60, 40), "bees": (40, 160, 220), "wasps": (230, 220, 30)}
    for c, (label, count) in enumerate((("ants", 10), ("bees", 10), ("wasps", 2))):
        for i in range(count):
            name = f"{label}/good_{i:02d}.jpg"
            save(root / name, jpeg_bytes(_pixels(colours[label], seed=1000 + 100 * c + i)))
            kept(name)
    ants = root / "ants"
    good = (ants / "good_00.jpg").read_bytes()

    # broken files
    save(ants / "truncated.jpg", good[: len(good) // 2])
    skipped("ants/truncated.jpg", "truncated or corrupt")
    header_broken = bytearray(good)
    header_broken[2:40] = b"\xff" * 38
    save(ants / "corrupt_header.jpg", bytes(header_broken))
    skipped("ants/corrupt_header.jpg", "not an image")
    data_broken = bytearray(good)
    for i in range(len(good) // 2, len(good) - 8, 7):
        data_broken[i] = 0
    save(ants / "corrupt_data.jpg", bytes(data_broken))
    skipped("ants/corrupt_data.jpg", "cannot decode")
    save(ants / "empty.jpg", b"")
    skipped("ants/empty.jpg", "empty file (0 bytes)")
    save(ants / "notes.png", b"these are my notes, not a picture\n")
    skipped("ants/notes.png", "not an image")
    save(ants / "page.jpg", b"<html><body>404 Not Found</body></html>")
    skipped("ants/page.jpg", "not an image")

    # formats: GIF refused by policy, the others accepted
    save(ants / "imageNotFound.gif", Image.fromarray(_pixels((128, 128, 128))), "GIF")
    skipped("ants/imageNotFound.gif", "unsupported format GIF")
    for name, fmt in (("photo.webp", "WEBP"), ("photo.bmp", "BMP"), ("photo.tiff", "TIFF")):
        save(ants / name, Image.fromarray(_pixels(colours["ants"], seed=len(name) + ord(fmt[0]))),
             fmt)
        kept(f"ants/{name}")
    save(ants / "formica.jpeg", jpeg_bytes(_pixels(colours["ants"], seed=77)))
    kept("ants/formica.jpeg")

    # modes
    save(ants / "cmyk.jpg", Image.fromarray(_pixels((220, 20, 20), seed=5)).convert("CMYK"), "JPEG")
    kept("ants/cmyk.jpg")
    save(ants / "gray16.png", Image.fromarray(np.full((24, 24), 128 * 257, np.uint16)), "PNG")
    kept("ants/gray16.png")
    row16 = b"\0" + struct.pack(">HHH", 65535, 0, 128 * 257) * 24  # 16-bit RGB, by hand
    save(ants / "rgb16.png", png_bytes(24, 24, colour_type=2, depth=16, rows=row16))
    kept("ants/rgb16.png")
    palette = Image.fromarray(_pixels(colours["ants"], seed=11)).convert("P")
    save(ants / "palette.png", palette, "PNG")
    kept("ants/palette.png")
    transparent = Image.new("P", (24, 24), 0)
    transparent.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    transparent.paste(1, (0, 0, 12, 24))  # left half red, right half index 0 = transparent
    save(ants / "palette_alpha.png", transparent, "PNG", transparency=0)
    kept("ants/palette_alpha.png")
    save(ants / "gray.png", Image.fromarray(_pixels(colours["ants"], seed=12)).convert("L"), "PNG")
    kept("ants/gray.png")
    rgba = np.zeros((24, 24, 4), np.uint8)
    rgba[:, :12] = (0, 200, 0, 255)  # left opaque green, right fully transparent
    save(ants / "rgba.png", Image.fromarray(rgba, "RGBA"), "PNG")
    kept("ants/rgba.png")
    save(ants / "rotated.jpg", rotated_jpeg(6))
    kept("ants/rotated.jpg")

    # decompression bombs: a real one (tiny file, 81 Mpx of zeros) and a header that lies
    save(ants / "bomb.png", png_bytes(9000, 9000))
    skipped("ants/bomb.png", "refused without decoding")
    save(ants / "bomb_header.png", png_bytes(100_000, 100_000, colour_type=2, write_rows=1))
    skipped("ants/bomb_header.png", "refused without decoding")

    # hidden files and folders, files outside any class folder
    save(ants / ".DS_Store", b"\0\0\0\1Bud1")
    skipped("ants/.DS_Store", "hidden file")
    save(ants / "._good_00.jpg", b"\0\5\26\7AppleDouble")
    skipped("ants/._good_00.jpg", "hidden file")
    save(ants / ".thumbnails" / "t.jpg", good)
    skipped("ants/.thumbnails/t.jpg", "hidden file")
    save(root / ".git" / "HEAD", b"ref: refs/heads/main\n")
    skipped(".git/HEAD", "hidden file")
    save(root / "README.txt", b"photos of insects\n")
    skipped("README.txt", "not inside a class folder")

    # nested folders belong to their class; odd names are kept as they are
    save(ants / "field" / "2019" / "nested.png", Image.fromarray(_pixels(colours["ants"], seed=21)),
         "PNG")
    kept("ants/field/2019/nested.png")
    for name in ("fourmi_été.png", "蟻 アリ.png", "comma, \"quote\".png"):
        save(ants / name, Image.fromarray(_pixels(colours["ants"], seed=len(name.encode()) * 3)),
             "PNG")
        kept(f"ants/{name}")
    save(root / "bees" / "abeille_ß.jpg", jpeg_bytes(_pixels(colours["bees"], seed=31)))
    kept("bees/abeille_ß.jpg")
    with open(os.fsencode(ants) + b"/caf\xe9.png", "wb") as f:  # Latin-1 bytes: not UTF-8
        f.write(png_bytes(8, 8))
    skipped("ants/caf\\xe9.png", "not valid UTF-8")

    # links
    outside = root.parent / f"{root.name}_outside"
    save(outside / "x.png", Image.fromarray(_pixels((0, 0, 0))), "PNG")
    os.symlink(outside, ants / "linked_folder")
    skipped("ants/linked_folder", "a link to a folder (not followed")
    os.symlink(root / "nowhere.png", ants / "dangling.png")
    skipped("ants/dangling.png", "a broken symbolic link")

    # duplicates inside a class: one group, one split; across classes: a label conflict
    dup = png_bytes(16, 16, rows=b"\0" + bytes(range(16)))
    for name in ("dup_a.png", "dup_b.png", "field/dup_c.png"):
        save(ants / name, dup)
        kept(f"ants/{name}")
    conflict = jpeg_bytes(_pixels((90, 90, 90), seed=41))
    save(ants / "conflict.jpg", conflict)
    save(root / "bees" / "conflict_copy.jpg", conflict)
    skipped("ants/conflict.jpg", "label conflict: the same image is under classes ants, bees")
    skipped("bees/conflict_copy.jpg", "label conflict")
    return expect


@contextlib.contextmanager
def inside(directory: Path):
    old = Path.cwd()
    os.chdir(directory)
    try:
        yield
    finally:
        os.chdir(old)



def write_params(directory: Path, **changes) -> None:
    import yaml
    params = json.loads(json.dumps(PARAMS))
    for key, value in changes.items():
        params[key] = value
    (directory / "params.yaml").write_text(yaml.safe_dump(params))


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def dirty(tmp_path_factory):
    """The dirty folder, and the split stage's output for it (run twice, to two places)."""
    base = tmp_path_factory.mktemp("dirty")
    data = base / "photos"
    expect = build_dirty_folder(data)
    write_params(base)
    split = load_stage("split")
    with inside(base):
        split.main(str(data), "split_a")
        split.main(str(data), "split_b")
    return {"base": base, "data": data, "expect": expect, "out": base / "split_a"}


# --- the split stage on the dirty folder ------------------------------------------------------

def test_every_file_is_either_in_one_split_or_reported_with_its_reason(dirty):
    out, expect = dirty["out"], dirty["expect"]
    skipped = {row["path"]: row["reason"] for row in read_rows(out / "skipped.csv")}
    placed = {}
    for split in ("train", "val", "test"):
        for row in read_rows(out / f"{split}.csv"):
            assert row["path"] not in placed, f"{row['path']} is in two splits"
            placed[row["path"]] = (split, row["label"])
    for path, (outcome, detail) in expect.items():
        if outcome == KEPT:
            assert path in placed, f"{path} should be kept; skipped as {skipped.get(path)!r}"
            assert placed[path][1] == detail, f"{path}: label {placed[path][1]}, expected {detail}"
        else:
            assert path in skipped, f"{path} should be skipped ({detail}): {placed.get(path)}"
            assert detail in skipped[path], f"{path}: reason {skipped[path]!r} lacks {detail!r}"
    assert set(skipped) == {p for p, (o, _) in expect.items() if o != KEPT}, "unexpected skips"
    assert set(placed) == {p for p, (o, _) in expect.items() if o == KEPT}, "unexpected items"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped"] == len(skipped)
    assert summary["classes"] == ["ants", "bees", "wasps"]


def test_reasons_are_one_line_and_never_name_the_data_folder(dirty):
    text = (dirty["out"] / "skipped.csv").read_text(encoding="utf-8")
    assert str(dirty["data"]) not in text and str(dirty["base"]) not in text
    for row in read_rows(dirty["out"] / "skipped.csv"):
        assert row["reason"] and "\n" not in row["reason"]


def test_identical_files_in_a_class_land_in_one_split(dirty):
    homes = {split for split in ("train", "val", "test")
             for row in read_rows(dirty["out"] / f"{split}.csv")
             if row["path"] in {"ants/dup_a.png", "ants/dup_b.png", "ants/field/dup_c.png"}}
    assert len(homes) == 1


def test_a_class_too_small_for_three_splits_goes_to_train_with_a_warning(dirty):
    summary = json.loads((dirty["out"] / "summary.json").read_text())
    assert any("'wasps'" in w and "all go to train" in w for w in summary["warnings"])
    for split, expected in (("train", 2), ("val", 0), ("test", 0)):
        rows = read_rows(dirty["out"] / f"{split}.csv")
        assert sum(r["label"] == "wasps" for r in rows) == expected
    for label in ("ants", "bees"):  # the others still get all three splits
        for split in ("train", "val", "test"):
            assert any(r["label"] == label for r in read_rows(dirty["out"] / f"{split}.csv"))


def test_the_split_is_byte_identical_when_run_again_or_from_another_place(dirty, tmp_path):
    first, second = dirty["out"], dirty["base"] / "split_b"
    moved = tmp_path / "elsewhere" / "copy"
    shutil.copytree(dirty["data"], moved, symlinks=True)
    write_params(tmp_path)
    with inside(tmp_path):
        load_stage("split").main(str(moved), "split_c")
    third = tmp_path / "split_c"
    names = ["train.csv", "val.csv", "test.csv", "skipped.csv", "summary.json",
             "near_duplicates.csv"]
    assert sorted(p.name for p in first.iterdir()) == sorted(names)
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
        assert (first / name).read_bytes() == (third / name).read_bytes(), name


def test_preprocess_decodes_every_kept_file_with_the_right_pixels(dirty):
    base, out = dirty["base"], dirty["base"] / "prepared"
    (base / "input_spec.json").write_text('{"image_size": 32, "crop_pct": 0.875}')
    with inside(base):  # the dvc.yaml form: DATA_DIR SPLIT_DIR INPUT_SPEC OUT_DIR
        load_stage("preprocess").main(str(dirty["data"]), "split_a", "input_spec.json", "prepared")
    meta = json.loads((out / "meta.json").read_text())
    rows = {s: read_rows(dirty["out"] / f"{s}.csv") for s in ("train", "val", "test")}
    assert meta["counts"] == {s: len(r) for s, r in rows.items()}
    assert not [p.name for p in base.iterdir() if ".tmp-" in p.name]

    def view(path):  # the plain (view 0) 32x32 picture of ``path``
        for split, split_rows in rows.items():
            for index, row in enumerate(split_rows):
                if row["path"] == path:
                    array = np.load(out / f"{split}_images.npy")
                    return array[index * (meta["train_views"] if split == "train" else 1)]
        raise AssertionError(f"{path} not in any split")

    rotated = view("ants/rotated.jpg").astype(int)  # portrait after rotation: red on top
    assert rotated[2, 16, 0] > 200 and rotated[2, 16, 2] < 60
    assert rotated[-3, 16, 2] > 200 and rotated[-3, 16, 0] < 60
    assert abs(int(view("ants/gray16.png")[16, 16, 0]) - 128) <= 2
    assert list(view("ants/rgb16.png")[16, 16]) == [255, 0, 128]
    close = lambda pixel, rgb: np.abs(pixel.astype(int) - rgb).max() <= 3
    alpha = view("ants/palette_alpha.png")  # transparent -> white
    assert close(alpha[16, 2], [255, 0, 0]) and close(alpha[16, 29], [255, 255, 255])
    rgba = view("ants/rgba.png")
    assert close(rgba[16, 2], [0, 200, 0]) and close(rgba[16, 29], [255, 255, 255])
    cmyk = view("ants/cmyk.jpg").astype(int)
    assert cmyk[..., 0].mean() > 170 and cmyk[..., 1].mean() < 70


@pytest.mark.parametrize("case, words", [
    ("no split", ["summary.json", "run the split stage first"]),
    ("no spec", ["input_spec.json is missing", "input_spec stage"]),
    ("bad spec", ["input_spec.json is damaged"]),
    ("foreign label", ["label 'moths'", "not one of the classes"]),
])
def test_preprocess_checks_its_inputs_before_decoding(dirty, tmp_path, case, words):
    split = tmp_path / "split"
    if case != "no split":
        shutil.copytree(dirty["out"], split)
    if case == "bad spec":
        (tmp_path / "input_spec.json").write_text('{"image_size": "big"')
    elif case != "no spec":
        (tmp_path / "input_spec.json").write_text('{"image_size": 32, "crop_pct": 0.875}')
    if case == "foreign label":
        with (split / "val.csv").open("a") as f:
            f.write("moths/x.jpg,moths,0\n")
    write_params(tmp_path)
    stage = load_stage("preprocess")
    with inside(tmp_path), pytest.raises(stage.InputError) as error:
        stage.main(str(dirty["data"]), "split", "input_spec.json", "prepared")
    for word in words:
        assert word in str(error.value)
    assert not (tmp_path / "prepared").exists()


# --- decoding, one case at a time -------------------------------------------------------------

@pytest.mark.parametrize("orientation, top, bottom, shape", [
    (6, "red", "blue", (48, 24)), (8, "blue", "red", (48, 24)), (1, None, None, (24, 48))])
def test_exif_orientation_is_applied(tmp_path, orientation, top, bottom, shape):
    path = tmp_path / "photo.jpg"
    path.write_bytes(rotated_jpeg(orientation))
    pixels = np.asarray(decode_image(path)).astype(int)
    assert pixels.shape[:2] == shape
    channel = {"red": 0, "blue": 2}
    if top:
        assert pixels[2, 12, channel[top]] > 200 and pixels[-3, 12, channel[bottom]] > 200


def test_a_bomb_is_refused_from_its_header_without_decoding(tmp_path, monkeypatch):
    loads = []
    for cls in (ImageFile.ImageFile, Image.Image):
        original = cls.load
        monkeypatch.setattr(cls, "load", lambda self, _o=original: loads.append(self) or _o(self))
    real, liar = tmp_path / "real.png", tmp_path / "liar.png"
    real.write_bytes(png_bytes(9000, 9000))  # 81 Mpx of zeros in 79 kB
    liar.write_bytes(png_bytes(100_000, 100_000, colour_type=2, write_rows=1))
    assert real.stat().st_size < 200_000
    for path in (real, liar):
        with pytest.raises(ImageError, match="refused without decoding") as error:
            decode_image(path)
        assert f"{MAX_PIXELS:,}" in str(error.value)
    assert loads == [], "the decoder ran on a bomb"


def test_a_bomb_needs_no_memory(tmp_path):
    """Under an address-space limit far below what decoding would need, the refusal still works."""
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_bytes(9000, 9000))  # decoding it would take 81 MB
    code = textwrap.dedent(f"""
        import resource, re
        from finetuner.data.images import decode_image, ImageError
        size = int(re.search(r"VmSize:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1))
        limit = size * 1024 + 48 * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        try:
            decode_image({str(bomb)!r})
        except ImageError as error:
            print(error)
    """)
    if not Path("/proc/self/status").exists():
        pytest.skip("needs /proc (Linux)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, env=dict(os.environ, OMP_NUM_THREADS="1",
                                                OPENBLAS_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr
    assert "refused without decoding" in done.stdout, done.stdout + done.stderr


def test_images_at_the_limit_are_decoded(tmp_path, monkeypatch):
    monkeypatch.setattr(images_module, "MAX_PIXELS", 24 * 24)
    path = tmp_path / "small.png"
    Image.fromarray(_pixels((1, 2, 3))).save(path)
    assert decode_image(path).size == (24, 24)
    Image.fromarray(_pixels((1, 2, 3), size=(25, 24))).save(path)
    with pytest.raises(ImageError, match="25x24"):
        decode_image(path)


def test_a_missing_or_unreadable_file_is_an_image_error(tmp_path):
    with pytest.raises(ImageError, match="cannot read"):
        decode_image(tmp_path / "gone.jpg")
    with pytest.raises(ImageError, match="cannot read"):
        decode_image(tmp_path)
    assert str(tmp_path) not in str(pytest.raises(ImageError, decode_image, tmp_path).value)


# --- whole-folder errors -----------------------------------------------------------------------

def test_a_class_folder_without_a_usable_image_is_named_with_the_reasons(tmp_path):
    make_image_folder(tmp_path, {"ants": 5, "bees": 5})
    save(tmp_path / "flies" / "placeholder.gif", Image.fromarray(_pixels((5, 5, 5))), "GIF")
    save(tmp_path / "flies" / "empty.jpg", b"")
    save(tmp_path / "moths" / ".DS_Store", b"\0")
    (tmp_path / "beetles").mkdir()
    with pytest.raises(DatasetError) as error:
        split_folder(tmp_path, 0.2, 0.2, 0, progress=False)
    message = str(error.value)
    assert "no usable image: beetles, flies, moths" in message
    assert "flies/placeholder.gif: unsupported format GIF" in message
    assert "flies/empty.jpg: empty file" in message


@pytest.mark.parametrize("classes, found", [({"only": 6}, "1 class folder(s) (only)"),
                                            ({}, "0 class folder(s) (none)")])
def test_fewer_than_two_classes_is_an_error(tmp_path, classes, found):
    make_image_folder(tmp_path, classes)
    with pytest.raises(DatasetError, match="needs at least 2") as error:
        split_folder(tmp_path, 0.1, 0.1, 0, progress=False)
    assert found in str(error.value)


def test_images_outside_any_class_folder_are_named_in_the_error(tmp_path):
    make_image_folder(tmp_path, {"cats": 4})
    for name in ("a.png", "b.png"):
        shutil.copy(tmp_path / "cats" / "img_000.png", tmp_path / name)
    with pytest.raises(DatasetError, match="needs at least 2") as error:
        split_folder(tmp_path, 0.1, 0.1, 0, progress=False)
    assert str(error.value).endswith("; 2 file(s) are directly in it, outside any class folder: "
                                     "images go in the sub-folder named after their class")


def test_a_missing_data_folder_says_which_param_to_set(tmp_path):
    with pytest.raises(DatasetError, match="data.dir"):
        split_folder(tmp_path / "nope", 0.1, 0.1, 0, progress=False)


def test_the_split_stage_reports_errors_in_one_line_and_writes_nothing(tmp_path):
    make_image_folder(tmp_path / "photos", {"only": 4})
    write_params(tmp_path)
    done = subprocess.run([sys.executable, str(ROOT / "stages" / "split.py"), "photos", "out"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("split: error:") and "needs at least 2" in last
    assert "Traceback" not in done.stderr and "verify images" not in done.stderr  # no scan
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml", "photos"]


# --- the real photos --------------------------------------------------------------------------

HYMENOPTERA = SHARED / "datasets" / "hymenoptera" / "train"


def test_real_hymenoptera_folder_reports_the_gif_placeholder(tmp_path):
    if not HYMENOPTERA.is_dir():
        pytest.skip(f"{HYMENOPTERA} is absent")
    write_params(tmp_path)
    with inside(tmp_path):
        load_stage("split").main(str(HYMENOPTERA), "split")
    skipped = read_rows(tmp_path / "split" / "skipped.csv")
    assert [row["path"] for row in skipped] == ["ants/imageNotFound.gif"]
    assert "unsupported format GIF" in skipped[0]["reason"]
    placed = {row["path"]: row["label"] for split in ("train", "val", "test")
              for row in read_rows(tmp_path / "split" / f"{split}.csv")}
    assert placed["ants/formica.jpeg"] == "ants"  # .jpeg beside .jpg is fine
    files = [p for p in HYMENOPTERA.rglob("*") if p.is_file()]
    assert len(placed) + len(skipped) == len(files)
    summary = json.loads((tmp_path / "split" / "summary.json").read_text())
    assert summary["classes"] == ["ants", "bees"] and summary["skipped"] == 1
