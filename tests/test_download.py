"""Downloads without the network: file:// URLs to small archives built in tmp_path."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from wsss.data.download import (
    SBD_MD5,
    SBD_URL,
    VOC12_MD5,
    VOC12_URL,
    convert_sbd,
    download_sbd,
    download_voc12,
    fetch,
    main_download,
    md5sum,
    read_sbd_mat,
)
from wsss.data.voc import VOCLayout
from wsss.io import read_index_png, save_palette_png


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _tar(src_dir: Path, archive: Path, mode: str = "w") -> Path:
    with tarfile.open(archive, mode) as tar:
        for p in sorted(src_dir.rglob("*")):
            tar.add(p, arcname=str(p.relative_to(src_dir)), recursive=False)
    return archive


def test_official_constants():
    assert VOC12_URL == "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar"
    assert VOC12_MD5 == "6cd6e144f989b92b3379bac3b3de84fd"
    assert SBD_URL.endswith("www2.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/benchmark.tgz")
    assert SBD_MD5 == "82b4d87ceb2ed10f6038a1cba92111cb"


def test_fetch_md5_ok_and_mismatch(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"hello wsss" * 1000)
    assert md5sum(src) == _md5(src)
    out = fetch(src.as_uri(), tmp_path / "dl" / "file.bin", _md5(src), progress=False)
    assert out.read_bytes() == src.read_bytes()
    assert not (tmp_path / "dl" / "file.bin.part").exists()
    target = tmp_path / "dl" / "other.bin"
    with pytest.raises(ValueError) as info:
        fetch(src.as_uri(), target, "0" * 32, progress=False)
    msg = str(info.value)
    assert msg.startswith(str(target) + ".part") and "MD5 mismatch" in msg and "\n" not in msg
    assert not target.exists() and not Path(str(target) + ".part").exists()


def _fake_voc(root: Path, ids_train, ids_val, sizes) -> None:
    """Tiny VOC2012 tree with JPEGs, masks, XML annotations and split files."""
    for sub in ("JPEGImages", "SegmentationClass", "Annotations", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for k, (i, (h, w)) in enumerate(sizes.items()):
        Image.fromarray(np.full((h, w, 3), 40 * k, np.uint8)).save(root / "JPEGImages" / f"{i}.jpg")
        names = ["dog"] if k % 2 else ["person", "car"]
        objs = "".join(f"<object><name>{n}</name></object>" for n in names)
        (root / "Annotations" / f"{i}.xml").write_text(f"<annotation>{objs}</annotation>")
    for i in list(ids_train) + list(ids_val):
        h, w = sizes[i]
        m = np.zeros((h, w), np.uint8)
        m[1:3, 1:3] = 15
        m[0, :] = 255
        save_palette_png(root / "SegmentationClass" / f"{i}.png", m)
    (root / "ImageSets/Segmentation/train.txt").write_text("".join(f"{i}\n" for i in ids_train))
    (root / "ImageSets/Segmentation/val.txt").write_text("".join(f"{i}\n" for i in ids_val))


def test_download_voc12_from_file_url(tmp_path):
    build = tmp_path / "build"
    _fake_voc(build / "VOCdevkit/VOC2012", ["a"], ["b"], {"a": (6, 8), "b": (5, 7)})
    archive = _tar(build, tmp_path / "VOCtrainval_11-May-2012.tar")
    dest = tmp_path / "data"
    root = download_voc12(dest, url=archive.as_uri(), md5=_md5(archive), progress=False)
    assert root == dest / "VOCdevkit/VOC2012"
    assert (root / "JPEGImages/a.jpg").is_file()
    assert not (dest / "VOCtrainval_11-May-2012.tar").exists()  # removed after extraction
    assert not list(dest.glob(".extract-*"))
    lay = VOCLayout(root, "train")
    assert lay.ids == ["a"] and lay.has_masks
    # a complete folder is never touched: no download happens even with a bogus URL
    sentinel = root / "mine.txt"
    sentinel.write_text("keep")
    assert download_voc12(dest, url="file:///nonexistent/x.tar", progress=False) == root
    assert sentinel.read_text() == "keep"
    # incomplete existing folder: refused, left as it is
    dest2 = tmp_path / "data2"
    (dest2 / "VOCdevkit/VOC2012/JPEGImages").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="incomplete"):
        download_voc12(dest2, url=archive.as_uri(), md5=_md5(archive), progress=False)
    # md5 mismatch: error naming the part file, nothing extracted
    dest3 = tmp_path / "data3"
    with pytest.raises(ValueError, match=r"\.part: MD5 mismatch"):
        download_voc12(dest3, url=archive.as_uri(), md5="f" * 32, progress=False)
    assert not (dest3 / "VOCdevkit").exists() and not list(dest3.glob("*.part"))


def test_unsafe_archive_rejected(tmp_path):
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tar:
        data = b"pwned"
        info = tarfile.TarInfo("../evil.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    dest = tmp_path / "dest"
    with pytest.raises(ValueError, match="unsafe or corrupt"):
        download_voc12(dest, url=archive.as_uri(), md5=_md5(archive), progress=False)
    assert not (tmp_path / "evil.txt").exists()


def _cells(items) -> np.ndarray:
    out = np.empty((len(items), 1), dtype=object)
    for k, a in enumerate(items):
        out[k, 0] = a
    return out


def _save_gtcls(path: Path, seg: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(
        path,
        {
            "GTcls": {
                "Boundaries": _cells([np.zeros(seg.shape, np.uint8) for _ in range(20)]),
                "Segmentation": seg.astype(np.uint8),
                "CategoriesPresent": np.unique(seg[seg > 0]).astype(np.uint8),
            }
        },
    )


def test_read_sbd_mat(tmp_path):
    seg = np.arange(12, dtype=np.uint8).reshape(3, 4) % 21
    _save_gtcls(tmp_path / "x.mat", seg)
    out = read_sbd_mat(tmp_path / "x.mat")
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, seg)
    scipy.io.savemat(tmp_path / "bad.mat", {"GTinst": {"Segmentation": seg}})
    with pytest.raises(ValueError, match="no GTcls"):
        read_sbd_mat(tmp_path / "bad.mat")
    _save_gtcls(tmp_path / "big.mat", np.full((2, 2), 40, np.uint8))
    with pytest.raises(ValueError) as info:
        read_sbd_mat(tmp_path / "big.mat")
    assert str(info.value).startswith(str(tmp_path / "big.mat"))


def test_download_sbd_converts_to_voc_layout(tmp_path):
    sizes = {"a": (6, 8), "b": (5, 7), "x": (4, 9), "y": (7, 5), "z": (5, 5)}
    dest = tmp_path / "data"
    voc = dest / "VOCdevkit/VOC2012"
    _fake_voc(voc, ["a"], ["b", "y"], sizes)  # JPEGs + XML for all five, VOC masks for a, b, y
    build = tmp_path / "build"
    ds = build / "benchmark_RELEASE/dataset"
    segs = {}
    for k, i in enumerate(["x", "y", "z", "a"]):
        h, w = sizes[i]
        seg = np.zeros((h, w), np.uint8)
        seg[: h // 2, : w // 2] = 1 + k * 5  # 1, 6, 11, 16
        segs[i] = seg
        _save_gtcls(ds / "cls" / f"{i}.mat", seg)
    (ds / "train.txt").write_text("x\ny\n")
    (ds / "val.txt").write_text("z\na\n")
    archive = _tar(build, tmp_path / "benchmark.tgz", "w:gz")
    root = download_sbd(dest, url=archive.as_uri(), md5=_md5(archive), progress=False)
    assert root == voc
    # (SBD train + SBD val + VOC train) - VOC val = {x, y, z, a} + {a} - {b, y}
    assert (voc / "ImageSets/Segmentation/train_aug.txt").read_text().split() == ["a", "x", "z"]
    aug = voc / "SegmentationClassAug"
    np.testing.assert_array_equal(read_index_png(aug / "x.png"), segs["x"])
    np.testing.assert_array_equal(read_index_png(aug / "z.png"), segs["z"])
    # VOC's own mask wins over SBD for VOC trainval ids
    np.testing.assert_array_equal(read_index_png(aug / "a.png"), read_index_png(voc / "SegmentationClass/a.png"))
    assert not (dest / "benchmark.tgz").exists()
    lay = VOCLayout(voc, "train_aug")  # labels from Annotations/*.xml, masks from the Aug folder
    assert lay.ids == ["a", "x", "z"]
    assert lay.mask_path("x").parent.name == "SegmentationClassAug"
    np.testing.assert_array_equal(np.flatnonzero(lay.label("x")), [6, 14])  # car=7, person=15 (k=2)
    # complete: second run touches nothing and does not fetch
    (aug / "x.png").write_bytes(b"sentinel")
    assert download_sbd(dest, url="file:///nonexistent/benchmark.tgz", progress=False) == voc
    assert (aug / "x.png").read_bytes() == b"sentinel"
    # conversion resumes: an existing PNG is kept, a missing one recreated
    (aug / "z.png").unlink()
    convert_sbd(dest / "benchmark_RELEASE/dataset", voc)
    assert (aug / "x.png").read_bytes() == b"sentinel"
    np.testing.assert_array_equal(read_index_png(aug / "z.png"), segs["z"])


def test_download_sbd_needs_voc(tmp_path):
    with pytest.raises(FileNotFoundError, match="voc12"):
        download_sbd(tmp_path / "nothing", url="file:///nonexistent/benchmark.tgz", progress=False)


def test_main_download_rejects_unknown(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset"):
        main_download("imagenet", tmp_path)
    voc = tmp_path / "VOCdevkit/VOC2012"
    _fake_voc(voc, ["a"], ["b"], {"a": (4, 4), "b": (4, 4)})
    assert main_download("voc12", tmp_path) == voc  # complete folder: returns, no network
