"""Inputs that cannot hurt (issue 9): every expected bad input is a one-line error that starts
with the offending file - split ids, decompression bombs, corrupt CAM files, broken masks,
label files and COCO JSON. Small synthetic trees in tmp_path; the real MSRC folder only read."""

from __future__ import annotations

import json
import pickle
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsss.data.voc import DatasetError, VOCLayout
from wsss.inference.store import CamRecord, cam_path, load_cam, save_cam
from wsss.io import (
    MAX_IMAGE_PIXELS,
    ImageTooLargeError,
    image_id_problem,
    one_line,
    open_image,
    read_index_png,
    read_json,
    save_palette_png,
)

CLASSES = ["background", "cat", "dog"]
SIZES = {"a": (6, 8), "b": (5, 7), "c": (4, 4)}  # id -> (H, W)


def _tree(root: Path, ids=("a", "b", "c"), split: str = "train") -> Path:
    """Tiny VOC folder: RGB PNG images, palette masks, class files (a: cat, b: dog, c: both)."""
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    for k, i in enumerate(ids):
        h, w = SIZES[i]
        Image.fromarray(np.full((h, w, 3), 30 * k, np.uint8)).save(root / "JPEGImages" / f"{i}.png")
        m = np.zeros((h, w), np.uint8)
        m[1:3, 1:3] = 1 + k % 2
        save_palette_png(root / "SegmentationClass" / f"{i}.png", m)
    lab = {"a": (1, -1), "b": (-1, 1), "c": (1, 1)}
    for c, name in enumerate(CLASSES[1:]):
        (root / "ImageSets/Main" / f"{name}_{split}.txt").write_text("".join(f"{i} {lab[i][c]}\n" for i in ids))
    (root / "ImageSets/Segmentation" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    return root


@pytest.fixture()
def tree(tmp_path) -> Path:
    return _tree(tmp_path / "voc")


def _one_line_error(exc_type, path, fn, *words: str) -> str:
    """Call fn, expect exc_type with a single-line message starting with ``path`` and holding ``words``."""
    with pytest.raises(exc_type) as info:
        fn()
    msg = str(info.value)
    assert "\n" not in msg and "\r" not in msg, msg
    assert msg.startswith(f"{path}"), msg
    for w in words:
        assert w in msg, msg
    return msg


# ----------------------------------------------------------------------------- image ids
@pytest.mark.parametrize("good", ["2007_000032", "10_10_s", "COCO_train2014_000000000009", "a.b", "x-y", "été"])
def test_image_id_ok(good):
    assert image_id_problem(good) is None


@pytest.mark.parametrize(
    "bad, why",
    [
        ("", "empty"),
        ("/etc/passwd", "absolute"),
        ("\\\\server\\x", "absolute"),
        ("C:x", "absolute"),
        ("..", ".."),
        ("a..b", ".."),
        ("../x", ".."),
        ("a/b", "separator"),
        ("a\\b", "separator"),
        ("a\x00b", "control"),
        ("a\tb", "control"),
        ("a\x1bb", "control"),
        ("a\x7fb", "control"),
        ("a\x85b", "control"),
        ("a\u200bb", "non-printable"),
        ("a\xa0b", "non-printable"),
        (".", "'.'"),
        (" a", "white space"),
        (3, "string"),
    ],
)
def test_image_id_problem(bad, why):
    problem = image_id_problem(bad)
    assert problem is not None and why in problem, problem


@pytest.mark.parametrize(
    "line, why",
    [
        ("/etc/passwd", "is an absolute path"),
        ("../../etc/passwd", "contains '..'"),
        ("..", "contains '..'"),
        ("sub/a", "contains a path separator"),
        ("sub\\a", "contains a path separator"),
        ("a\x00b", "contains a control character (U+0000)"),
        ("a\x1b[2Jb", "contains a control character (U+001B)"),
        ("\x0b", "contains a control character (U+000B)"),  # str.splitlines() would have hidden it
        ("a\u2028b", "contains a non-printable character (U+2028)"),  # line separator (Zl)
        ("a\u202eb", "contains a non-printable character (U+202E)"),  # right-to-left override (Cf)
    ],
)
def test_split_id_validated(tree, line, why):
    split = tree / "ImageSets/Segmentation/train.txt"
    split.write_text(f"a\n\n{line} extra-column\nb\n", encoding="utf-8")  # bad id on line 3
    msg = _one_line_error(DatasetError, f"{split}:3: invalid image id ", lambda: VOCLayout(tree, "train", check_files=False))
    assert msg.endswith(why), msg
    assert repr(line) in msg  # shown escaped: no raw control character reaches the terminal


def test_split_duplicate_id(tree):
    split = tree / "ImageSets/Segmentation/train.txt"
    split.write_text("a\nb\r\n\nc\na\n")
    msg = _one_line_error(DatasetError, split, lambda: VOCLayout(tree, "train"))
    assert msg == f"{split}:5: duplicate image id 'a' (first on line 1)"


def test_split_crlf_tabs_and_columns_ok(tree):
    split = tree / "ImageSets/Segmentation/train.txt"
    split.write_bytes(b"a\r\n  b\t1\r\n\r\nc -1\r\n")
    assert VOCLayout(tree, "train").ids == ["a", "b", "c"]


def test_split_not_utf8_and_bad_split_name(tree):
    split = tree / "ImageSets/Segmentation/train.txt"
    split.write_bytes(b"a\n\xff\xfeb\n")
    _one_line_error(DatasetError, split, lambda: VOCLayout(tree, "train"), "not UTF-8")
    _one_line_error(DatasetError, tree, lambda: VOCLayout(tree, "../train"), "invalid split name", "'..'")


def test_real_msrc_split_ids_are_valid(msrc_root):
    for split, n in (("train", 354), ("val", 118)):
        lay = VOCLayout(msrc_root, split, check_files=False)
        assert len(lay.ids) == n and all(image_id_problem(i) is None for i in lay.ids)


def test_cam_path_refuses_unsafe_ids(tmp_path):
    assert cam_path(tmp_path, "2007_000032") == tmp_path / "2007_000032.npz"
    for bad in ("../x", "/abs", "a/b", "a\x00"):
        _one_line_error(ValueError, tmp_path, lambda bad=bad: cam_path(tmp_path, bad), "invalid image id")


# ----------------------------------------------------------------------------- decompression bombs
def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def _png_header(w: int, h: int, colour_type: int = 2) -> bytes:
    """A 60-byte PNG whose IHDR claims w x h pixels (8-bit RGB = 2, grey = 0), no pixel data."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"")) + _chunk(b"IEND", b"")


@pytest.mark.parametrize("w, h", [(20000, 20000), (10000, 10000), (9000, 8000)])
def test_decompression_bomb_image(tree, w, h):
    """400 Mpx: above Pillow's error limit (2 x 89.5 Mpx); 100 Mpx: Pillow only warns; 72 Mpx:
    Pillow says nothing - all three refused with the same one-line message, no warning."""
    assert w * h > MAX_IMAGE_PIXELS == 64 * 1024 * 1024
    bomb = tree / "JPEGImages" / "b.png"
    bomb.write_bytes(_png_header(w, h))
    want = f"{bomb}: image of {w} x {h} pixels exceeds the limit of {MAX_IMAGE_PIXELS} pixels"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a DecompressionBombWarning would fail the test
        msg = _one_line_error(DatasetError, bomb, lambda: VOCLayout(tree, "train"))
        assert msg.startswith(want), msg
        lay = VOCLayout(tree, "train", check_files=False)
        assert str(pytest.raises(DatasetError, lay.image, "b").value).startswith(want)
        with pytest.raises(ImageTooLargeError) as info:
            with open_image(bomb):
                pass
        assert str(info.value).startswith(want)


def test_decompression_bomb_mask(tree):
    bomb = tree / "SegmentationClass" / "a.png"
    bomb.write_bytes(_png_header(30000, 30000, colour_type=0))
    want = f"{bomb}: image of 30000 x 30000 pixels exceeds the limit of"
    assert str(pytest.raises(DatasetError, VOCLayout, tree, "train").value).startswith(want)
    lay = VOCLayout(tree, "train", check_files=False)
    assert str(pytest.raises(DatasetError, lay.mask, "a").value).startswith(want)
    assert str(pytest.raises(ImageTooLargeError, read_index_png, bomb).value).startswith(want)


def test_pixel_limit_is_a_parameter(tree):
    """The 8 x 6 image 'a' (48 px) passes a limit of 48 and fails a limit of 47."""
    img = tree / "JPEGImages" / "a.png"
    assert VOCLayout(tree, "train", max_pixels=48).image("a").shape == (6, 8, 3)
    msg = _one_line_error(DatasetError, img, lambda: VOCLayout(tree, "train", max_pixels=47))
    assert msg.startswith(f"{img}: image of 8 x 6 pixels exceeds the limit of 47 pixels")
    lay = VOCLayout(tree, "train", max_pixels=47, check_files=False)
    _one_line_error(DatasetError, img, lambda: lay.image("a"), "8 x 6 pixels", "limit of 47")
    mask = tree / "SegmentationClass" / "a.png"
    _one_line_error(ValueError, mask, lambda: read_index_png(mask, max_pixels=47), "8 x 6 pixels")
    with pytest.raises(ValueError, match="max_pixels must be"):
        with open_image(img, max_pixels=0):
            pass


# ----------------------------------------------------------------------------- masks and labels
def test_mask_size_differs_without_check_files(tree):
    p = tree / "SegmentationClass" / "b.png"
    save_palette_png(p, np.zeros((5, 6), np.uint8))  # image b is 7 x 5
    lay = VOCLayout(tree, "train", check_files=False)
    msg = _one_line_error(DatasetError, p, lambda: lay.mask("b"))
    assert msg == f"{p}: mask size 6x5 differs from image b.png size 7x5"
    _one_line_error(DatasetError, p, lambda: VOCLayout(tree, "train"), "differs")


@pytest.mark.parametrize(
    "content, words",
    [
        (b"not a png", ["unreadable"]),
        (b"", ["unreadable"]),
        ("truncated", ["unreadable mask"]),
        ("rgb", ["mode RGB"]),
    ],
)
def test_unreadable_mask(tree, content, words):
    p = tree / "SegmentationClass" / "c.png"
    if content == "truncated":
        big = np.random.default_rng(0).integers(0, 3, (64, 64), dtype=np.uint8)
        save_palette_png(p, big)
        data = p.read_bytes()
        p.write_bytes(data[: len(data) // 2])
    elif content == "rgb":
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(p)
    else:
        p.write_bytes(content)
    lay = VOCLayout(tree, "train", check_files=False)
    _one_line_error(DatasetError, p, lambda: lay.mask("c"), *words)


def test_mask_value_above_class_count(tree):
    p = tree / "SegmentationClass" / "a.png"
    m = np.zeros((6, 8), np.uint8)
    m[0, 0] = 7  # only 2 foreground classes
    save_palette_png(p, m)
    msg = _one_line_error(DatasetError, p, lambda: VOCLayout(tree, "train", labels="masks"))
    assert msg == f"{p}: mask value 7 > number of classes 2"


def test_label_files(tree):
    cat = tree / "ImageSets/Main/cat_train.txt"
    cat.write_text("a 1\nb 2\n")
    _one_line_error(DatasetError, cat, lambda: VOCLayout(tree, "train"), "line 2", "expected '<id> <1|-1|0>'")
    cat.write_bytes(b"a 1\n\xffb -1\n")
    _one_line_error(DatasetError, cat, lambda: VOCLayout(tree, "train"), "not UTF-8")
    cat.write_text("a 1\nb -1\nc 1\n")
    zebra = tree / "ImageSets/Main/zebra_train.txt"
    zebra.write_text("a 1\n")
    _one_line_error(DatasetError, zebra, lambda: VOCLayout(tree, "train"), "unknown class 'zebra'")
    zebra.unlink()
    classes = tree / "classes.txt"
    classes.write_bytes(b"background\n\xe9cat\n")
    _one_line_error(DatasetError, classes, lambda: VOCLayout(tree, "train"), "not UTF-8")


def test_bad_image_files(tree):
    p = tree / "JPEGImages" / "c.png"
    p.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    _one_line_error(DatasetError, p, lambda: VOCLayout(tree, "train"), "corrupt")
    lay = VOCLayout(tree, "train", check_files=False)
    _one_line_error(DatasetError, p, lambda: lay.image("c"), "unreadable image")
    p.write_bytes(_png_header(4, 4))  # valid header, no pixel data: fails at decode
    _one_line_error(DatasetError, p, lambda: lay.image("c"), "cannot decode image")


def test_read_json_errors(tmp_path):
    missing = tmp_path / "none.json"
    _one_line_error(FileNotFoundError, missing, lambda: read_json(missing), "file not found")
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    _one_line_error(ValueError, bad, lambda: read_json(bad), "not valid JSON")
    bad.write_bytes(b'{"a": "\xff"}')
    _one_line_error(ValueError, bad, lambda: read_json(bad), "not UTF-8")


def test_one_line_collapses_whitespace_and_names_empty_errors():
    assert one_line(ValueError("bad\n  header\tline ")) == "bad header line"
    assert one_line(KeyError()) == "KeyError"  # an empty message falls back to the type name


# ----------------------------------------------------------------------------- CAM files
def _record(k: int = 2, h: int = 9, w: int = 10) -> CamRecord:
    rng = np.random.default_rng(1)
    return CamRecord(
        keys=np.arange(1, k + 1),
        high_res=rng.random((k, h, w), dtype=np.float32),
        strided=rng.random((k, -(-h // 4), -(-w // 4)), dtype=np.float32),
    )


def _npz(path: Path, **arrays) -> Path:
    np.savez_compressed(path, **arrays)
    return path


class _Evil:
    """Unpickling this would create a file: proves that load_cam never unpickles."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (Path.touch, (Path(self.target),))


def test_load_cam_roundtrip_and_empty(tmp_path):
    rec = _record()
    save_cam(tmp_path / "ok.npz", rec)
    got = load_cam(tmp_path / "ok.npz")
    assert got.keys.dtype == np.int64 and got.high_res.dtype == np.float32
    np.testing.assert_array_equal(got.keys, [1, 2])
    np.testing.assert_array_equal(got.high_res, rec.high_res)
    np.testing.assert_array_equal(got.strided, rec.strided)
    empty = CamRecord(np.zeros(0, np.int64), np.zeros((0, 9, 10), np.float32), np.zeros((0, 3, 3), np.float32))
    save_cam(tmp_path / "empty.npz", empty)
    assert load_cam(tmp_path / "empty.npz").keys.shape == (0,)


def _corrupt_cases(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    good = tmp_path / "good.npz"
    save_cam(good, _record())
    data = good.read_bytes()
    rec = _record()
    cases: dict[str, tuple[Path, str]] = {}

    def raw(name: str, payload: bytes, why: str) -> None:
        p = tmp_path / f"{name}.npz"
        p.write_bytes(payload)
        cases[name] = (p, why)

    raw("truncated", data[: len(data) // 2], "BadZipFile")
    raw("truncated_tail", data[:-30], "")
    raw("empty", b"", "EOFError")
    raw("garbage", b"\x00\x01garbage" * 50, "")
    raw("pickle", pickle.dumps(_Evil(str(tmp_path / "pwned"))), "pickled or object data, refused")
    p = tmp_path / "single.npz"
    with open(p, "wb") as fh:
        np.save(fh, rec.high_res)
    cases["single_npy"] = (p, "a single .npy array")
    cases["object_array"] = (
        _npz(tmp_path / "object_array.npz", keys=np.array([1]), high_res=np.array([_Evil(str(tmp_path / "pwned"))], dtype=object),
             strided=rec.strided[:1]),
        "pickled or object data, refused",
    )
    cases["wrong_keys"] = (_npz(tmp_path / "wrong_keys.npz", cams=rec.high_res), "arrays ['cams'], expected ['high_res', 'keys', 'strided']")
    cases["extra_key"] = (
        _npz(tmp_path / "extra_key.npz", keys=rec.keys, high_res=rec.high_res, strided=rec.strided, extra=rec.keys),
        "expected ['high_res', 'keys', 'strided']",
    )
    cases["k_mismatch"] = (_npz(tmp_path / "k_mismatch.npz", keys=np.array([1]), high_res=rec.high_res, strided=rec.strided), "disagree on K")
    cases["high_2d"] = (_npz(tmp_path / "high_2d.npz", keys=rec.keys, high_res=rec.high_res[0], strided=rec.strided), "high_res must be a 3-D float array")
    cases["grid"] = (
        _npz(tmp_path / "grid.npz", keys=rec.keys, high_res=rec.high_res, strided=rec.strided[:, :2]),
        "strided grid (2, 3) is not ceil(H/4), ceil(W/4) = (3, 3)",
    )
    cases["float_keys"] = (_npz(tmp_path / "float_keys.npz", keys=rec.keys.astype(np.float32), high_res=rec.high_res, strided=rec.strided),
                           "keys must be a 1-D integer array")
    cases["background_key"] = (_npz(tmp_path / "background_key.npz", keys=np.array([0, 1]), high_res=rec.high_res, strided=rec.strided),
                               "keys must be foreground classes >= 1")
    nan = rec.high_res.copy()
    nan[0, 0, 0] = np.nan
    cases["nan"] = (_npz(tmp_path / "nan.npz", keys=rec.keys, high_res=nan, strided=rec.strided), "high_res holds NaN or inf")
    cases["range"] = (_npz(tmp_path / "range.npz", keys=rec.keys, high_res=rec.high_res * 5, strided=rec.strided), "expected [0, 1]")
    return cases


def test_load_cam_corrupt_files(tmp_path):
    for name, (path, why) in _corrupt_cases(tmp_path).items():
        msg = _one_line_error(ValueError, path, lambda path=path: load_cam(path), "corrupt CAM file")
        assert msg.startswith(f"{path}: corrupt CAM file ("), (name, msg)
        assert msg.endswith("); delete it and re-run 'wsss infer'"), (name, msg)
        assert why in msg, (name, msg)
        assert "allow_pickle=True" not in msg and "unsafely" not in msg, (name, msg)
    assert not (tmp_path / "pwned").exists()  # nothing was unpickled


def test_load_cam_uses_allow_pickle_false(tmp_path, monkeypatch):
    calls = []
    real = np.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(np, "load", spy)
    save_cam(tmp_path / "x.npz", _record())
    load_cam(tmp_path / "x.npz")
    assert calls and all(c.get("allow_pickle") is False for c in calls)


def test_load_cam_missing_and_save_cam_checks(tmp_path):
    _one_line_error(FileNotFoundError, tmp_path / "no.npz", lambda: load_cam(tmp_path / "no.npz"), "CAM file not found")
    rec = _record()
    bad = CamRecord(rec.keys, rec.high_res, rec.strided[:, :1])
    _one_line_error(ValueError, tmp_path / "s.npz", lambda: save_cam(tmp_path / "s.npz", bad), "inconsistent CAM record", "strided grid")
    assert not (tmp_path / "s.npz").exists()


# ----------------------------------------------------------------------------- COCO JSON
def _coco(tmp_path: Path, mutate) -> tuple[Path, Path, Path]:
    imgs = tmp_path / "imgs"
    imgs.mkdir(exist_ok=True)
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(imgs / "a.jpg")
    data = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 10, "height": 10}],
        "categories": [{"id": 1, "name": "cat"}],
        "annotations": [{"id": 7, "image_id": 1, "category_id": 1, "segmentation": [[0, 0, 5, 0, 5, 5, 0, 5]]}],
    }
    data = mutate(data) or data
    js = tmp_path / "instances.json"
    js.write_text(json.dumps(data))
    return js, imgs, tmp_path / "out"


def _set(path: str, value):
    def mutate(d):
        keys = path.split(".")
        obj = d
        for k in keys[:-1]:
            obj = obj[int(k)] if k.isdigit() else obj[k]
        obj[keys[-1]] = value

    return mutate


@pytest.mark.parametrize(
    "mutate, words",
    [
        (lambda d: [1, 2], ["top level is list"]),
        (_set("images", {}), ["'images' must be a list"]),
        (_set("images.0.file_name", "../../etc/a.jpg"), ["unsafe file_name"]),
        (_set("images.0.file_name", "/etc/a.jpg"), ["unsafe file_name"]),
        (_set("images.0.file_name", "sub/a\x00.jpg"), ["invalid image id", "control"]),
        (_set("images.0.height", "10"), ["image #0 field 'height' has type str"]),
        (lambda d: d["images"][0].update(width=100000, height=100000), ["100000 x 100000", "exceeds the limit"]),
        (_set("annotations.0.segmentation", "x"), ["annotation #0 field 'segmentation'"]),
        (lambda d: d["annotations"][0].pop("category_id") and None, ["annotation #0 has no 'category_id'"]),
        (_set("annotations.0.segmentation", {"counts": 5, "size": [10, 10]}), ["annotation 7 has an undecodable segmentation"]),
        (_set("categories", [{"id": 1, "name": "cat"}, {"id": 1, "name": "dog"}]), ["duplicate category id 1"]),
    ],
)
def test_coco_bad_json(tmp_path, mutate, words):
    pytest.importorskip("pycocotools")
    from wsss.data.coco import coco_to_voc_layout

    js, imgs, out = _coco(tmp_path, mutate)
    _one_line_error(ValueError, js, lambda: coco_to_voc_layout(js, imgs, out, "train"), *words)


def test_coco_good_json_still_converts(tmp_path):
    pytest.importorskip("pycocotools")
    from wsss.data.coco import coco_to_voc_layout

    js, imgs, out = _coco(tmp_path, lambda d: None)
    coco_to_voc_layout(js, imgs, out, "train")
    lay = VOCLayout(out, "train")
    assert lay.ids == ["a"] and lay.mask("a")[2, 2] == 1 and lay.mask("a")[8, 8] == 0


def test_atomic_write_gives_plain_file_permissions(tmp_path):
    """Outputs written atomically get 0o666 minus the umask (mkstemp alone would give 0o600)."""
    import os

    from wsss.io import atomic_write_bytes

    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "a.bin", b"x")
        os.umask(0o077)
        atomic_write_bytes(tmp_path / "b.bin", b"y")
    finally:
        os.umask(old)
    assert (tmp_path / "a.bin").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.bin").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "a.bin").read_bytes() == b"x" and not list(tmp_path.glob(".*.tmp"))


def test_unreadable_image_error_keeps_message_and_reason(tmp_path):
    """open_image's error on a non-image names the file once and carries the bare reason."""
    from wsss.io import UnreadableImageError, open_image

    p = tmp_path / "x.jpg"
    p.write_bytes(b"not an image at all")
    with pytest.raises(UnreadableImageError) as info:
        with open_image(p):
            pass
    assert str(info.value) == f"{p}: unreadable image (not a format Pillow can decode)"
    assert info.value.reason == "not a format Pillow can decode" and isinstance(info.value, ValueError)
