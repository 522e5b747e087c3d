"""Atomic file output and VOC palette masks.

Every file wsss writes goes through :func:`atomic_write`: the bytes land in a temporary
file in the destination folder and are moved into place with ``os.replace``, so a killed
run never leaves a half-written mask, CAM or metrics file behind, and a re-run can skip
outputs that already exist.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from PIL import Image

__all__ = [
    "atomic_write",
    "atomic_write_bytes",
    "write_json",
    "read_json",
    "voc_palette",
    "save_palette_png",
    "read_index_png",
]


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[Any]:
    """Open a temporary file beside ``path`` and move it onto ``path`` on success.

    Args:
        path: destination file; parent folders are created.
        mode: ``"wb"`` or ``"w"`` (text, UTF-8).

    On an exception inside the ``with`` block the temporary file is removed and ``path``
    is left as it was (absent or with its previous content).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    with atomic_write(path, "wb") as fh:
        fh.write(data)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically. NumPy scalars/arrays are converted."""

    def default(o: Any) -> Any:
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
        if isinstance(o, Path):
            return str(o)
        raise TypeError(f"not JSON serialisable: {type(o).__name__}")

    with atomic_write(path, "w") as fh:
        json.dump(obj, fh, indent=2, default=default)
        fh.write("\n")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; raises ``ValueError`` naming the file if it does not parse."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None


def voc_palette(n: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map.

    Returns:
        uint8 array of shape (n, 3); index 0 is black (background), 255 is the void colour
        (224, 224, 192) when n == 256.
    """
    pal = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    return pal


def save_palette_png(path: str | os.PathLike, mask: np.ndarray) -> None:
    """Save a label map as a VOC palette PNG, atomically.

    Args:
        path: destination ``.png``.
        mask: (H, W) integer array of class indices in 0..254, 255 = void/ignore.

    Raises:
        ValueError: if ``mask`` is not 2-D or holds values outside 0..255.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"{path}: mask must be 2-D (H, W), got shape {mask.shape}")
    if mask.size and (mask.min() < 0 or mask.max() > 255):
        raise ValueError(f"{path}: mask values must lie in 0..255")
    img = Image.fromarray(mask.astype(np.uint8), mode="P")
    img.putpalette(voc_palette().flatten().tolist())
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def read_index_png(path: str | os.PathLike) -> np.ndarray:
    """Read a palette (or grey) PNG as raw class indices.

    Returns:
        (H, W) uint8 array of the stored indices (the palette is ignored, never RGB).

    Raises:
        FileNotFoundError: if the file is missing.
        ValueError: if it is not a readable single-channel (P or L) PNG.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: mask file not found")
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode not in ("P", "L"):
                raise ValueError(f"{path}: mask must be a palette (P) or grey (L) PNG, got mode {img.mode}")
            return np.array(img, dtype=np.uint8)
    except (OSError, SyntaxError) as exc:
        raise ValueError(f"{path}: unreadable mask ({exc})") from None
