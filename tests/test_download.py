"""Downloads without the network: file:// URLs to small archives built in tmp_path, and a
monkeypatched ``urlopen`` for timeouts and network errors (nothing leaves the machine)."""

from __future__ import annotations

import hashlib
import io
import socket
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from wsss.data.download import (
    DEFAULT_TIMEOUT,
    SBD_MD5,
    SBD_URL,
    VOC12_MD5,
    VOC12_URL,
    DownloadError,
    _archive_name,
    convert_sbd,
    download_sbd,
    download_voc12,
    fetch,
    main_download,
    md5sum,
    read_sbd_mat,
    safe_extract,
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
    assert f"got {_md5(src)}, expected {'0' * 32}" in msg  # both checksums named
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
    with pytest.raises(DownloadError, match="incomplete"):
        download_voc12(dest2, url=archive.as_uri(), md5=_md5(archive), progress=False)
    # md5 mismatch: error naming the part file, nothing extracted
    dest3 = tmp_path / "data3"
    with pytest.raises(ValueError, match=r"\.part: MD5 mismatch"):
        download_voc12(dest3, url=archive.as_uri(), md5="f" * 32, progress=False)
    assert not (dest3 / "VOCdevkit").exists() and not list(dest3.glob("*.part"))


def _evil_tar(archive: Path, kind: str) -> Path:
    """A tar with one harmless member and one unsafe member of the given kind."""
    with tarfile.open(archive, "w") as tar:
        ok = tarfile.TarInfo("VOCdevkit/VOC2012/ok.txt")
        ok.size = 2
        tar.addfile(ok, io.BytesIO(b"ok"))
        data = b"pwned"
        if kind in ("dotdot", "dotdot_deep", "absolute"):
            name = {"dotdot": "../evil.txt", "dotdot_deep": "VOCdevkit/../../evil.txt", "absolute": "/tmp/wsss-evil.txt"}[kind]
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        elif kind in ("symlink_abs", "symlink_up", "hardlink_up"):
            info = tarfile.TarInfo("VOCdevkit/link")
            info.type = tarfile.LNKTYPE if kind == "hardlink_up" else tarfile.SYMTYPE
            info.linkname = {"symlink_abs": "/etc/passwd", "symlink_up": "../../outside", "hardlink_up": "../outside"}[kind]
            tar.addfile(info)
        elif kind == "device":
            info = tarfile.TarInfo("VOCdevkit/dev")
            info.type = tarfile.CHRTYPE
            info.devmajor, info.devminor = 1, 3
            tar.addfile(info)
    return archive


@pytest.mark.parametrize(
    "kind, why",
    [
        ("dotdot", "path traversal"),
        ("dotdot_deep", "path traversal"),
        ("absolute", "absolute path"),
        ("symlink_abs", "link to absolute path"),
        ("symlink_up", "leaves the folder"),
        ("hardlink_up", "leaves the folder"),
        ("device", "device"),
    ],
)
def test_unsafe_archive_rejected(tmp_path, kind, why):
    archive = _evil_tar(tmp_path / "evil.tar", kind)
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(DownloadError) as info:
        safe_extract(archive, dest)
    msg = str(info.value)
    assert msg.startswith(f"{archive}: unsafe archive member ") and why in msg and "\n" not in msg, msg
    assert list(dest.iterdir()) == []  # refused before anything was written, even the safe member
    assert not (tmp_path / "evil.txt").exists() and not Path("/tmp/wsss-evil.txt").exists()
    # through the download path: checksum verified first, then the same refusal, nothing left
    dl = tmp_path / "dl"
    with pytest.raises(DownloadError, match="unsafe archive member"):
        download_voc12(dl, url=archive.as_uri(), md5=_md5(archive), progress=False)
    assert not (dl / "VOCdevkit").exists() and not list(dl.glob(".extract-*"))


def test_safe_extract_corrupt_archive(tmp_path):
    bad = tmp_path / "bad.tgz"
    bad.write_bytes(b"\x1f\x8b" + b"garbage" * 20)
    with pytest.raises(DownloadError) as info:
        safe_extract(bad, tmp_path / "out")
    assert str(info.value).startswith(f"{bad}: unsafe or corrupt archive") and "\n" not in str(info.value)


def test_checksum_required_before_unpacking(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"x" * 100)
    for bad in (None, "", "abc", "g" * 32):
        with pytest.raises(DownloadError, match="MD5 checksum .* is required"):
            fetch(src.as_uri(), tmp_path / "dl" / "f.bin", bad, progress=False)
    assert not (tmp_path / "dl" / "f.bin").exists()
    # download_voc12 with md5=None refuses before touching the network or the disk
    with pytest.raises(DownloadError) as info:
        download_voc12(tmp_path / "v", url=src.as_uri(), md5=None, progress=False)
    assert str(info.value).startswith(str(tmp_path / "v" / "src.bin"))
    assert not (tmp_path / "v" / "src.bin").exists()
    # upper-case hex is accepted
    out = fetch(src.as_uri(), tmp_path / "dl" / "g.bin", _md5(src).upper(), progress=False)
    assert out.read_bytes() == src.read_bytes()


def test_existing_archive_is_verified(tmp_path):
    """An archive already in dest is MD5-checked before unpacking (and left in place)."""
    dest = tmp_path / "data"
    dest.mkdir()
    (dest / "VOCtrainval_11-May-2012.tar").write_bytes(b"tampered")
    with pytest.raises(DownloadError) as info:
        download_voc12(dest, url="file:///nonexistent/VOCtrainval_11-May-2012.tar", progress=False)
    msg = str(info.value)
    assert msg.startswith(str(dest / "VOCtrainval_11-May-2012.tar") + ": existing file has MD5 ")
    assert hashlib.md5(b"tampered").hexdigest() in msg and VOC12_MD5 in msg
    assert not (dest / "VOCdevkit").exists()


class _Resp:
    """Fake urlopen response: yields ``blocks`` then raises ``exc`` (if any)."""

    def __init__(self, blocks, exc=None):
        self.blocks = list(blocks)
        self.exc = exc
        self.headers = {"Content-Length": "100"}

    def read(self, n):
        if self.blocks:
            return self.blocks.pop(0)
        if self.exc is not None:
            raise self.exc
        return b""

    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def test_timeout_passed_and_reported(tmp_path, monkeypatch):
    seen = {}

    def fake_urlopen(url, *args, timeout=None, **kw):
        seen["timeout"] = timeout
        return _Resp([b"a" * 10], socket.timeout("timed out"))

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    target = tmp_path / "dl" / "x.tar"
    with pytest.raises(DownloadError) as info:
        fetch("http://example.invalid/x.tar", target, "0" * 32, progress=False, timeout=0.5)
    msg = str(info.value)
    assert seen["timeout"] == 0.5
    assert msg == f"{target}: download of http://example.invalid/x.tar failed (no response within the timeout of 0.5 s)"
    assert not target.exists() and not Path(str(target) + ".part").exists()  # partial data removed
    # the default is DEFAULT_TIMEOUT (60 s), also through download_voc12 / main_download
    assert DEFAULT_TIMEOUT == 60.0
    with pytest.raises(DownloadError):
        download_voc12(tmp_path / "v", url="http://example.invalid/VOC.tar", md5="0" * 32, progress=False)
    assert seen["timeout"] == 60.0
    with pytest.raises(DownloadError):
        main_download("voc12", tmp_path / "w", url="http://example.invalid/VOC.tar", md5="0" * 32, progress=False, timeout=7)
    assert seen["timeout"] == 7.0
    with pytest.raises(ValueError, match="timeout must be a positive number"):
        fetch("http://example.invalid/x.tar", target, "0" * 32, timeout=0)


def test_network_errors_are_one_line(tmp_path, monkeypatch):
    target = tmp_path / "x.tar"
    errors = [
        urllib.error.HTTPError("http://h/x.tar", 404, "Not Found", {}, None),
        urllib.error.URLError(OSError(-2, "Name or service not known")),
        urllib.error.URLError(socket.timeout("timed out")),
        ConnectionResetError(104, "Connection reset by peer"),
    ]
    expected = ["HTTP 404 Not Found", "Name or service not known", "timeout of 3 s", "Connection reset by peer"]
    for exc, want in zip(errors, expected):
        def fake_urlopen(url, *args, exc=exc, **kw):
            raise exc

        monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
        with pytest.raises(DownloadError) as info:
            fetch("http://h/x.tar", target, "0" * 32, progress=False, timeout=3)
        msg = str(info.value)
        assert msg.startswith(f"{target}: download of http://h/x.tar failed (") and want in msg and "\n" not in msg, msg
        assert not Path(str(target) + ".part").exists()
    with pytest.raises(ValueError, match="unsupported URL scheme"):
        fetch("data:text/plain,hi", target, "0" * 32)
    # a missing file:// source is a one-line DownloadError too
    monkeypatch.undo()
    with pytest.raises(DownloadError, match="failed"):
        fetch((tmp_path / "nope.tar").as_uri(), target, "0" * 32, progress=False)


def test_archive_name_from_url_is_safe():
    assert _archive_name("http://h/a/VOC.tar", "d.tar") == "VOC.tar"
    assert _archive_name("http://h/a/..", "d.tar") == "d.tar"
    assert _archive_name("http://h/a/%2E%2E%2Fevil", "d.tar") == "d.tar"
    assert _archive_name("http://h/", "d.tar") == "d.tar"
    assert _archive_name("http://h/b.tgz?sig=1", "d.tar") == "b.tgz"


def test_sbd_id_list_validated(tmp_path):
    ds = tmp_path / "dataset"
    (ds / "cls").mkdir(parents=True)
    (ds / "train.txt").write_text("ok_1\n../../etc/passwd\n")
    (ds / "val.txt").write_text("")
    voc = tmp_path / "voc"
    _fake_voc(voc, ["a"], ["b"], {"a": (4, 4), "b": (4, 4)})
    with pytest.raises(ValueError) as info:
        convert_sbd(ds, voc)
    assert str(info.value) == f"{ds / 'train.txt'}:2: invalid image id '../../etc/passwd': contains '..'"


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
