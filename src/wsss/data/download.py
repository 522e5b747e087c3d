"""Download PASCAL VOC 2012 and the SBD augmentation (for users with internet access).

Layout produced under ``dest``::

    dest/VOCtrainval_11-May-2012.tar         (removed after extraction unless keep_archive)
    dest/VOCdevkit/VOC2012/                  VOC root for :class:`wsss.data.voc.VOCLayout`
    dest/benchmark_RELEASE/dataset/          SBD (cls/*.mat, train.txt, val.txt, ...)
    dest/VOCdevkit/VOC2012/SegmentationClassAug/<id>.png
    dest/VOCdevkit/VOC2012/ImageSets/Segmentation/train_aug.txt

Archives are streamed with ``urllib`` into ``<name>.part`` with a socket timeout
(:data:`DEFAULT_TIMEOUT`, 60 s, per connect / read), checked against the official MD5 and
renamed; a mismatch or a network error deletes the part file and raises a one-line
:class:`DownloadError`. An archive already present in ``dest`` is MD5-checked too: nothing is
unpacked without a verified checksum. Extraction first lists every member and refuses
absolute paths, ``..`` components, links leaving the folder and device files, then unpacks with
``tarfile``'s ``"data"`` filter into a temporary folder that is moved into place, so an
existing complete dataset folder is never modified. ``train_aug`` follows the standard WSSS definition
(DeepLab / IRN): (SBD train + SBD val + VOC train) minus VOC val, 10,582 ids for VOC 2012.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import posixpath
import re
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Callable

import numpy as np

from wsss.io import atomic_write, image_id_problem, one_line, read_index_png, save_palette_png

__all__ = [
    "DEFAULT_TIMEOUT",
    "DownloadError",
    "VOC12_URL",
    "VOC12_MD5",
    "SBD_URL",
    "SBD_MD5",
    "md5sum",
    "fetch",
    "safe_extract",
    "download_voc12",
    "download_sbd",
    "convert_sbd",
    "read_sbd_mat",
    "main_download",
]

VOC12_URL = "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar"
VOC12_MD5 = "6cd6e144f989b92b3379bac3b3de84fd"
SBD_URL = "https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/benchmark.tgz"
SBD_MD5 = "82b4d87ceb2ed10f6038a1cba92111cb"

_CHUNK = 1 << 20

#: Seconds ``urlopen`` waits for the connection and for each read before giving up.
DEFAULT_TIMEOUT: float = 60.0

_SCHEMES = ("http", "https", "ftp", "file")
_MD5_RE = re.compile(r"^[0-9a-f]{32}$")


class DownloadError(ValueError):
    """A download or archive failed: network error or timeout, checksum mismatch, missing
    checksum, unsafe or corrupt archive. One line, starting with the file concerned."""


def _check_md5(md5: object, where: object) -> str:
    if not isinstance(md5, str) or not _MD5_RE.match(md5.strip().lower()):
        raise DownloadError(
            f"{where}: an MD5 checksum (32 hex digits) is required to verify the archive "
            f"before unpacking, got {md5!r}"
        )
    return md5.strip().lower()


def _check_timeout(timeout: object) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    return float(timeout)


def _archive_name(url: str, default: str) -> str:
    """Safe local file name for the archive at ``url`` (its last path component, or ``default``)."""
    name = urllib.parse.unquote(urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1])
    return default if image_id_problem(name) is not None else name


def md5sum(path: str | os.PathLike, chunk: int = _CHUNK) -> str:
    """Hex MD5 digest of a file, read in ``chunk``-byte blocks."""
    h = hashlib.md5()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def fetch(
    url: str,
    path: str | os.PathLike,
    md5: str,
    *,
    progress: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
) -> Path:
    """Download ``url`` to ``path`` (via ``path + ".part"``) and verify its MD5.

    If ``path`` already exists with the right MD5 nothing is downloaded.

    Args:
        url: ``http(s)://``, ``ftp://`` or ``file://`` URL.
        path: destination file; parent folders are created.
        md5: expected MD5, 32 hex digits (required: nothing is accepted unverified).
        progress: show a tqdm bar.
        timeout: seconds ``urlopen`` waits to connect and for each read (default
            :data:`DEFAULT_TIMEOUT` = 60); a stalled server raises instead of hanging.

    Raises:
        DownloadError (a ValueError), one line each, the part file removed:
            ``<path>: an MD5 checksum ... is required`` (``md5`` missing or malformed);
            ``<path>.part: MD5 mismatch for <url>: got <md5>, expected <md5> (partial file removed)``;
            ``<path>: download of <url> failed (<reason>)`` (network error, HTTP error, timeout);
            ``<path>: existing file has MD5 <md5>, expected <md5>; delete it and re-run``.
        ValueError: unsupported URL scheme or non-positive ``timeout``.
    """
    path = Path(path)
    md5 = _check_md5(md5, path)
    timeout = _check_timeout(timeout)
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in _SCHEMES:
        raise ValueError(f"{url}: unsupported URL scheme {scheme!r} (use one of {', '.join(_SCHEMES)})")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file():
        have = md5sum(path)
        if have == md5:
            return path
        raise DownloadError(f"{path}: existing file has MD5 {have}, expected {md5}; delete it and re-run")
    part = path.with_name(path.name + ".part")
    h = hashlib.md5()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(part, "wb") as out:
            total = resp.headers.get("Content-Length") if hasattr(resp, "headers") else None
            bar = _progress(total, path.name) if progress else None
            try:
                while True:
                    block = resp.read(_CHUNK)
                    if not block:
                        break
                    out.write(block)
                    h.update(block)
                    if bar is not None:
                        bar.update(len(block))
            finally:
                if bar is not None:
                    bar.close()
            out.flush()
            os.fsync(out.fileno())
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            part.unlink()
        if isinstance(exc, (OSError, http.client.HTTPException, ValueError)):  # URLError, HTTPError, TimeoutError are OSErrors
            raise DownloadError(f"{path}: download of {url} failed ({_net_reason(exc, timeout)})") from None
        raise  # KeyboardInterrupt etc.: part file removed, propagate
    got = h.hexdigest()
    if got != md5:
        part.unlink()
        raise DownloadError(f"{part}: MD5 mismatch for {url}: got {got}, expected {md5} (partial file removed)")
    os.replace(part, path)
    return path


def _net_reason(exc: BaseException, timeout: float) -> str:
    """One-line reason of a failed download."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {' '.join(str(exc.reason).split())}"
    reason: object = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, TimeoutError) or "timed out" in str(reason):
        return f"no response within the timeout of {timeout:g} s"
    return one_line(reason) if isinstance(reason, BaseException) else " ".join(str(reason).split())


def _progress(total: Any, desc: str):
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return None
    return tqdm(total=int(total) if total else None, unit="B", unit_scale=True, desc=desc, disable=None)


def _member_problem(member: tarfile.TarInfo) -> str | None:
    """Why a tar member may not be unpacked, or None."""
    name = member.name
    if not name or "\x00" in name:
        return "empty name or NUL byte"
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "absolute path"
    if ".." in re.split(r"[/\\]", name):
        return "path traversal ('..')"
    if member.isdev():
        return "device or FIFO file"
    if member.issym() or member.islnk():
        target = member.linkname
        if not target or target.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", target):
            return f"link to absolute path {target!r}"
        base = posixpath.dirname(name) if member.issym() else ""
        resolved = posixpath.normpath(posixpath.join(base, target))
        if resolved == ".." or resolved.startswith("../"):
            return f"link {target!r} leaves the folder"
    return None


def safe_extract(archive: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Extract a tar/tgz archive into ``dest``, refusing unsafe members.

    Every member is listed first; if any has an absolute path, a ``..`` component, is a
    link whose target is absolute or leaves ``dest``, or is a device/FIFO file, nothing is
    extracted. Extraction then uses ``tarfile``'s ``"data"`` filter (PEP 706) as a second
    guard (drops set-uid bits, refuses anything outside ``dest``).

    Raises:
        DownloadError (a ValueError): ``<archive>: unsafe archive member '<name>' (<why>); nothing extracted``
            or ``<archive>: unsafe or corrupt archive (...)``.
    """
    archive = Path(archive)
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for m in members:
                problem = _member_problem(m)
                if problem is not None:
                    raise DownloadError(f"{archive}: unsafe archive member {m.name!r} ({problem}); nothing extracted")
            tar.extractall(dest, members=members, filter="data")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DownloadError(f"{archive}: unsafe or corrupt archive ({one_line(exc)})") from None


def _voc_complete(root: Path) -> list[str]:
    """Names of the VOC parts missing from ``root`` (empty list = complete)."""
    need = [
        "JPEGImages",
        "SegmentationClass",
        "Annotations",
        "ImageSets/Segmentation/train.txt",
        "ImageSets/Segmentation/val.txt",
    ]
    return [n for n in need if not (root / n).exists()]


def _extract_and_move(archive: Path, dest: Path, inner: str, target: Path) -> None:
    """Extract ``archive`` into a temp dir under ``dest`` and move its ``inner`` folder to ``target``."""
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest))
    try:
        safe_extract(archive, tmp)
        src = tmp / inner
        if not src.is_dir():
            raise DownloadError(f"{archive}: archive has no folder {inner}/")
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def download_voc12(
    dest: str | os.PathLike,
    *,
    url: str = VOC12_URL,
    md5: str = VOC12_MD5,
    keep_archive: bool = False,
    progress: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
) -> Path:
    """Download and unpack PASCAL VOC 2012 trainval (2 GB).

    Args:
        dest: folder to download into; the dataset ends up in ``dest/VOCdevkit/VOC2012``.
        url: archive URL (``file://`` allowed, e.g. for tests or a local mirror).
        md5: expected MD5 of the archive, required (pass the matching MD5 when overriding
            ``url``); the archive is verified before anything is unpacked.
        keep_archive: keep the ``.tar`` after extraction (an archive that was already in
            ``dest`` before the call is always kept).
        timeout: seconds per connect / read (see :func:`fetch`).

    Returns:
        The VOC root ``dest/VOCdevkit/VOC2012``.

    Raises:
        DownloadError: the VOC root exists but is incomplete (it is left untouched), missing
            checksum, MD5 mismatch, network error / timeout, unsafe or bad archive (one line,
            starting with the file).
    """
    dest = Path(dest)
    root = dest / "VOCdevkit" / "VOC2012"
    if root.exists():
        missing = _voc_complete(root)
        if not missing:
            return root
        raise DownloadError(f"{root}: exists but is incomplete (missing {', '.join(missing)}); remove it and re-run")
    dest.mkdir(parents=True, exist_ok=True)
    archive = dest / _archive_name(url, "VOCtrainval_11-May-2012.tar")
    md5 = _check_md5(md5, archive)
    downloaded = not archive.exists()
    fetch(url, archive, md5, progress=progress, timeout=timeout)
    _extract_and_move(archive, dest, "VOCdevkit/VOC2012", root)
    missing = _voc_complete(root)
    if missing:
        raise DownloadError(f"{archive}: extracted VOC2012 lacks {', '.join(missing)}")
    if downloaded and not keep_archive:
        archive.unlink()
    return root


def read_sbd_mat(path: str | os.PathLike) -> np.ndarray:
    """Read the class segmentation of an SBD ``cls/<id>.mat`` file (``GTcls.Segmentation``).

    Returns:
        uint8 (H, W) class indices 0..20 (SBD has no void label).

    Raises:
        ValueError: ``<path>: ...`` if the struct or field is missing or values exceed 20/255.
    """
    from scipy.io import loadmat

    path = Path(path)
    try:
        mat = loadmat(str(path), squeeze_me=True, struct_as_record=False)
    except Exception as exc:  # scipy raises several types for bad files
        raise ValueError(f"{path}: cannot read .mat file ({' '.join(str(exc).split())})") from None
    gt = mat.get("GTcls")
    if gt is None:
        raise ValueError(f"{path}: no GTcls struct")
    seg = getattr(gt, "Segmentation", None)
    if seg is None and isinstance(gt, np.ndarray) and gt.dtype.names and "Segmentation" in gt.dtype.names:
        seg = gt["Segmentation"]
        while isinstance(seg, np.ndarray) and seg.dtype == object:
            seg = seg.flat[0]
    if seg is None:
        raise ValueError(f"{path}: GTcls has no Segmentation field")
    seg = np.asarray(seg)
    if seg.ndim != 2:
        raise ValueError(f"{path}: GTcls.Segmentation must be 2-D, got shape {seg.shape}")
    if seg.size and (seg.min() < 0 or (seg.max() > 20 and not set(np.unique(seg[seg > 20]).tolist()) <= {255})):
        raise ValueError(f"{path}: GTcls.Segmentation values must be 0..20 (or 255), got max {seg.max()}")
    return seg.astype(np.uint8)


def _read_ids(path: Path) -> list[str]:
    """Image ids, one per line (first column); each validated as a safe file name."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: id list not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError) as exc:
        raise ValueError(f"{path}: cannot read id list ({one_line(exc)})") from None
    ids = []
    for lineno, ln in enumerate(text.split("\n"), 1):
        fields = ln.removesuffix("\r").replace("\t", " ").split(" ")
        image_id = next((f for f in fields if f), "")
        if not image_id:
            continue
        problem = image_id_problem(image_id)
        if problem is not None:
            raise ValueError(f"{path}:{lineno}: invalid image id {image_id!r}: {problem}")
        ids.append(image_id)
    return ids


def convert_sbd(sbd_dataset: str | os.PathLike, voc_root: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Convert SBD to VOC layout inside ``voc_root``.

    Writes ``SegmentationClassAug/<id>.png`` for every ``cls/<id>.mat`` (palette PNG, raw
    indices), adds VOC's own ``SegmentationClass`` masks for VOC trainval ids (VOC ground
    truth, with its 255 boundaries, wins over SBD where both exist), and writes
    ``ImageSets/Segmentation/train_aug.txt`` = sorted((SBD train | SBD val | VOC train) - VOC val).
    Existing PNGs are kept unless ``overwrite`` (re-runs resume).

    Args:
        sbd_dataset: SBD ``benchmark_RELEASE/dataset`` folder (``cls/``, ``train.txt``, ``val.txt``).
        voc_root: VOC 2012 root (``ImageSets/Segmentation/{train,val}.txt``).

    Returns:
        Path of ``train_aug.txt``.
    """
    sbd = Path(sbd_dataset)
    voc = Path(voc_root)
    cls_dir = sbd / "cls"
    if not cls_dir.is_dir():
        raise FileNotFoundError(f"{cls_dir}: SBD cls folder not found")
    sbd_ids = set(_read_ids(sbd / "train.txt")) | set(_read_ids(sbd / "val.txt"))
    voc_train = set(_read_ids(voc / "ImageSets" / "Segmentation" / "train.txt"))
    voc_val = set(_read_ids(voc / "ImageSets" / "Segmentation" / "val.txt"))
    out_dir = voc / "SegmentationClassAug"
    out_dir.mkdir(parents=True, exist_ok=True)
    voc_masks = voc / "SegmentationClass"
    voc_ids = voc_train | voc_val
    for mat in sorted(cls_dir.glob("*.mat")):
        if mat.stem in voc_ids and (voc_masks / f"{mat.stem}.png").is_file():
            continue  # VOC ground truth is copied below
        png = out_dir / f"{mat.stem}.png"
        if png.is_file() and not overwrite:
            continue
        save_palette_png(png, read_sbd_mat(mat))
    for i in sorted(voc_ids):
        src = voc_masks / f"{i}.png"
        png = out_dir / f"{i}.png"
        if src.is_file() and (overwrite or not png.is_file()):
            save_palette_png(png, read_index_png(src))
    train_aug = sorted((sbd_ids | voc_train) - voc_val)
    missing = [i for i in train_aug if not (out_dir / f"{i}.png").is_file()]
    if missing:
        raise ValueError(f"{out_dir}: no mask for train_aug id {missing[0]} ({len(missing)} missing)")
    list_path = voc / "ImageSets" / "Segmentation" / "train_aug.txt"
    with atomic_write(list_path, "w") as fh:
        fh.write("".join(f"{i}\n" for i in train_aug))
    return list_path


def download_sbd(
    dest: str | os.PathLike,
    *,
    voc_root: str | os.PathLike | None = None,
    url: str = SBD_URL,
    md5: str = SBD_MD5,
    keep_archive: bool = False,
    progress: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
) -> Path:
    """Download SBD (``benchmark.tgz``, 1.4 GB) and add ``train_aug`` to a VOC 2012 folder.

    Args:
        dest: download folder; SBD ends up in ``dest/benchmark_RELEASE``.
        voc_root: VOC 2012 root to augment (default ``dest/VOCdevkit/VOC2012``; run
            :func:`download_voc12` first).
        url, md5, keep_archive, timeout: as in :func:`download_voc12`.

    Returns:
        The VOC root, now with ``SegmentationClassAug/`` and ``ImageSets/Segmentation/train_aug.txt``.

    Raises:
        FileNotFoundError: the VOC root is missing.
        DownloadError: ``dest/benchmark_RELEASE`` exists without ``dataset/cls``, missing
            checksum, MD5 mismatch, network error / timeout, unsafe or bad archive.
        ValueError: bad ``.mat`` file or id list.
    """
    dest = Path(dest)
    voc = Path(voc_root) if voc_root is not None else dest / "VOCdevkit" / "VOC2012"
    if not (voc / "ImageSets" / "Segmentation" / "val.txt").is_file():
        raise FileNotFoundError(f"{voc}: VOC 2012 root not found; run `wsss data download --dataset voc12` first")
    aug_list = voc / "ImageSets" / "Segmentation" / "train_aug.txt"
    if aug_list.is_file() and (voc / "SegmentationClassAug").is_dir():
        return voc  # complete: never touched
    sbd_root = dest / "benchmark_RELEASE"
    if not (sbd_root / "dataset" / "cls").is_dir():
        if sbd_root.exists():
            raise DownloadError(f"{sbd_root}: exists but has no dataset/cls; remove it and re-run")
        dest.mkdir(parents=True, exist_ok=True)
        archive = dest / _archive_name(url, "benchmark.tgz")
        md5 = _check_md5(md5, archive)
        downloaded = not archive.exists()
        fetch(url, archive, md5, progress=progress, timeout=timeout)
        _extract_and_move(archive, dest, "benchmark_RELEASE", sbd_root)
        if downloaded and not keep_archive:
            archive.unlink()
    convert_sbd(sbd_root / "dataset", voc)
    return voc


def main_download(dataset: str, dest: str | os.PathLike, **kwargs: Any) -> Path:
    """CLI entry (``wsss data download --dataset voc12|sbd --dest DIR``).

    Returns the VOC root. ``sbd`` downloads VOC 2012 first if ``dest`` has none (with the
    same ``timeout`` / ``progress``). Extra keyword arguments (``url``, ``md5``,
    ``keep_archive``, ``progress``, ``timeout``) go to :func:`download_voc12` /
    :func:`download_sbd`.
    """
    funcs: dict[str, Callable[..., Path]] = {"voc12": download_voc12, "sbd": download_sbd}
    if dataset not in funcs:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {sorted(funcs)}")
    if dataset == "sbd" and kwargs.get("voc_root") is None:
        download_voc12(dest, **{k: kwargs[k] for k in ("progress", "timeout") if k in kwargs})
    return funcs[dataset](dest, **kwargs)
