"""Per-image CAM files: ``<run>/cams/<id>.npz``.

One compressed ``.npz`` per image, written atomically, holding only the classes of the
image label (IRN convention):

- ``keys``: int16 (K,), class indices in the dataset's label space where 0 is background
  and foreground classes are 1..C (so ``keys`` index ``class_names`` directly);
- ``high_res``: float32 (K, H, W), CAM at the image's full resolution, values in [0, 1]
  (ReLU, then each class divided by its own spatial max + 1e-5);
- ``strided``: float32 (K, ceil(H/4), ceil(W/4)), the same at stride 4 for affinity work.

An image with no foreground class stores K = 0 (empty arrays with the right H, W).

:func:`load_cam` never unpickles (``allow_pickle=False``) and turns any damaged file
(truncated by a kill outside :func:`wsss.io.atomic_write`, garbage, other arrays, wrong
shapes) into one line: ``<file>: corrupt CAM file (...); delete it and re-run 'wsss infer'``.
"""

from __future__ import annotations

import io
import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wsss.io import atomic_write_bytes, image_id_problem, one_line

__all__ = ["CamRecord", "save_cam", "load_cam", "cam_path"]


@dataclass
class CamRecord:
    """The stored CAMs of one image (see module docstring for shapes and ranges)."""

    keys: np.ndarray  # (K,) int, 1..C
    high_res: np.ndarray  # (K, H, W) float32 in [0, 1]
    strided: np.ndarray  # (K, h4, w4) float32 in [0, 1]

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of the full-resolution CAM."""
        return int(self.high_res.shape[1]), int(self.high_res.shape[2])


def cam_path(cam_dir: str | os.PathLike, image_id: str) -> Path:
    """Path of the CAM file of ``image_id`` inside ``cam_dir``.

    Raises:
        ValueError: ``<cam_dir>: invalid image id '...': ...`` if the id is not a single safe
            file-name component (absolute, ``..``, separator, control character; see
            :func:`wsss.io.image_id_problem`), so no CAM is ever read or written outside ``cam_dir``.
    """
    problem = image_id_problem(image_id)
    if problem is not None:
        raise ValueError(f"{cam_dir}: invalid image id {image_id!r}: {problem}")
    return Path(cam_dir) / f"{image_id}.npz"


def _check_record(keys: np.ndarray, high_res: np.ndarray, strided: np.ndarray) -> str | None:
    """What is wrong with a CAM record's arrays, or None (see module docstring)."""
    if keys.ndim != 1 or (keys.dtype.kind not in "iu" and keys.size):
        return f"keys must be a 1-D integer array, got {keys.dtype} shape {keys.shape}"
    if high_res.ndim != 3 or high_res.dtype.kind != "f":
        return f"high_res must be a 3-D float array, got {high_res.dtype} shape {high_res.shape}"
    if strided.ndim != 3 or strided.dtype.kind != "f":
        return f"strided must be a 3-D float array, got {strided.dtype} shape {strided.shape}"
    k, h, w = high_res.shape
    if len(keys) != k or strided.shape[0] != k:
        return f"keys {keys.shape}, high_res {high_res.shape} and strided {strided.shape} disagree on K"
    if h < 1 or w < 1:
        return f"high_res has an empty image size {h}x{w}"
    grid = (-(-h // 4), -(-w // 4))
    if tuple(strided.shape[1:]) != grid:
        return f"strided grid {tuple(strided.shape[1:])} is not ceil(H/4), ceil(W/4) = {grid} for H, W = {h}, {w}"
    if k:
        if int(keys.min()) < 1:
            return f"keys must be foreground classes >= 1, got {keys.tolist()}"
        if len(np.unique(keys)) != k:
            return f"keys repeat a class: {keys.tolist()}"
        for name, arr in (("high_res", high_res), ("strided", strided)):
            if not np.isfinite(arr).all():
                return f"{name} holds NaN or inf"
            lo, hi = float(arr.min()), float(arr.max())
            # strided may exceed 1: the random walk divides it by the max of the upsampled map
            top = 1.0 + _RANGE_TOL if name == "high_res" else np.inf
            if lo < -_RANGE_TOL or hi > top:
                return f"{name} values span [{lo:.4g}, {hi:.4g}], expected {'[0, 1]' if name == 'high_res' else '>= 0'}"
    return None


#: slack on the [0, 1] range check (bilinear resampling and bf16 rounding)
_RANGE_TOL = 1e-2
_KEYS = ("keys", "high_res", "strided")


def save_cam(path: str | os.PathLike, record: CamRecord) -> None:
    """Write ``record`` to ``path`` as a compressed npz, atomically.

    Raises:
        ValueError: ``<path>: inconsistent CAM record (...)`` if the arrays break the format
            of the module docstring (K differs between keys/high_res/strided, strided grid is
            not ceil(H/4) x ceil(W/4), keys < 1 or repeated, values not finite or negative,
            ``high_res`` above 1).
    """
    keys = np.asarray(record.keys)
    high = np.asarray(record.high_res)
    strided = np.asarray(record.strided)
    problem = _check_record(keys, high, strided)
    if problem is not None:
        raise ValueError(f"{path}: inconsistent CAM record ({problem})")
    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        keys=keys.astype(np.int16),
        high_res=high.astype(np.float32),
        strided=strided.astype(np.float32),
    )
    atomic_write_bytes(path, buf.getvalue())


def load_cam(path: str | os.PathLike) -> CamRecord:
    """Read a CAM file written by :func:`save_cam`.

    The file is read with ``np.load(..., allow_pickle=False)`` (no code runs from a crafted
    file) and all three arrays are decoded and checked before returning.

    Returns:
        :class:`CamRecord` with ``keys`` int64 (K,), ``high_res`` float32 (K, H, W) and
        ``strided`` float32 (K, ceil(H/4), ceil(W/4)) (values in [0, 1]; after the random
        walk ``strided`` may exceed 1, see :mod:`wsss.refine.rw`).

    Raises:
        FileNotFoundError: ``<path>: CAM file not found (...)``.
        ValueError: ``<path>: corrupt CAM file (<what>); delete it and re-run 'wsss infer'``
            for a truncated or garbage file, a pickled/object array, missing or extra keys,
            wrong dtypes or shapes, NaN/inf, negative values or ``high_res`` above 1.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: CAM file not found (run the inference stage first)")

    def corrupt(what: str) -> ValueError:
        return ValueError(f"{path}: corrupt CAM file ({what}); delete it and re-run 'wsss infer'")

    try:
        with open(path, "rb") as fh:
            z = np.load(fh, allow_pickle=False)
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise corrupt("a single .npy array, not an .npz archive")
            with z:
                names = sorted(z.files)
                if names != sorted(_KEYS):
                    raise corrupt(f"arrays {names}, expected {sorted(_KEYS)}")
                keys, high, strided = (np.asarray(z[k]) for k in _KEYS)
    except ValueError as exc:
        msg = one_line(exc)
        if msg.startswith(f"{path}: corrupt CAM file"):
            raise
        if "pickle" in msg.lower():  # numpy's text suggests allow_pickle=True: never for CAM files
            msg = "pickled or object data, refused"
        raise corrupt(msg) from None
    except (OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error, RuntimeError, AttributeError) as exc:
        raise corrupt(f"{type(exc).__name__}: {one_line(exc)}") from None
    problem = _check_record(keys, high, strided)
    if problem is not None:
        raise corrupt(problem)
    return CamRecord(keys=keys.astype(np.int64), high_res=high.astype(np.float32, copy=False),
                     strided=strided.astype(np.float32, copy=False))
