"""Per-image CAM files: ``<run>/cams/<id>.npz``.

One compressed ``.npz`` per image, written atomically, holding only the classes of the
image label (IRN convention):

- ``keys``: int16 (K,), class indices in the dataset's label space where 0 is background
  and foreground classes are 1..C (so ``keys`` index ``class_names`` directly);
- ``high_res``: float32 (K, H, W), CAM at the image's full resolution, values in [0, 1]
  (ReLU, then each class divided by its own spatial max + 1e-5);
- ``strided``: float32 (K, ceil(H/4), ceil(W/4)), the same at stride 4 for affinity work.

An image with no foreground class stores K = 0 (empty arrays with the right H, W).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wsss.io import atomic_write_bytes

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
    """Path of the CAM file of ``image_id`` inside ``cam_dir``."""
    return Path(cam_dir) / f"{image_id}.npz"


def save_cam(path: str | os.PathLike, record: CamRecord) -> None:
    """Write ``record`` to ``path`` as a compressed npz, atomically.

    Raises:
        ValueError: if shapes disagree (K differs between keys/high_res/strided).
    """
    k = len(record.keys)
    if record.high_res.ndim != 3 or record.high_res.shape[0] != k or record.strided.shape[0] != k:
        raise ValueError(
            f"{path}: inconsistent CAM record: keys {record.keys.shape}, high_res "
            f"{record.high_res.shape}, strided {record.strided.shape}"
        )
    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        keys=np.asarray(record.keys, dtype=np.int16),
        high_res=np.asarray(record.high_res, dtype=np.float32),
        strided=np.asarray(record.strided, dtype=np.float32),
    )
    atomic_write_bytes(path, buf.getvalue())


def load_cam(path: str | os.PathLike) -> CamRecord:
    """Read a CAM file written by :func:`save_cam`.

    Raises:
        FileNotFoundError: if the file is missing (run ``wsss infer`` first).
        ValueError: if it is not a valid CAM file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: CAM file not found (run the inference stage first)")
    try:
        with np.load(path, allow_pickle=False) as z:
            return CamRecord(keys=z["keys"].astype(np.int64), high_res=z["high_res"], strided=z["strided"])
    except (KeyError, ValueError, OSError) as exc:
        raise ValueError(f"{path}: not a valid CAM file ({exc})") from None
