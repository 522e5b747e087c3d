"""Atomic file output, VOC palette masks and guarded reads of untrusted inputs.

Every file wsss writes goes through :func:`atomic_write`: the bytes land in a temporary
file in the destination folder and are moved into place with ``os.replace``, so a killed
run never leaves a half-written mask, CAM or metrics file behind, and a re-run can skip
outputs that already exist.

Every image or mask wsss reads is opened through :func:`open_image`, which refuses files
whose header claims more than :data:`MAX_IMAGE_PIXELS` pixels (decompression bombs) with a
one-line error, and every image id that becomes part of a file name is checked with
:func:`image_id_problem` (no absolute paths, ``..``, separators or control characters).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import tempfile
import unicodedata
import warnings
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
    "MAX_IMAGE_PIXELS",
    "ImageTooLargeError",
    "UnreadableImageError",
    "open_image",
    "image_id_problem",
    "one_line",
]

#: Largest image (width x height, in pixels) wsss opens: 64 Mpx = 2**26 = 67,108,864 pixels.
#: PASCAL VOC / MSRC / COCO images are below 0.5 Mpx; Pillow's own default limit
#: (``PIL.Image.MAX_IMAGE_PIXELS`` = 89,478,485, error only above twice that) would let a
#: crafted 178 Mpx header allocate ~0.5 GB per RGB decode in every DataLoader worker.
MAX_IMAGE_PIXELS: int = 64 * 1024 * 1024


class UnreadableImageError(ValueError):
    """A file that Pillow cannot open as an image (not an image, unreadable header, permission).

    Message: ``<file>: unreadable image (<reason>)``; :attr:`reason` holds ``<reason>`` alone, so a
    caller can word its own message without repeating the file name.
    """

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        super().__init__(f"{path}: unreadable image ({reason})")
        self.reason = reason


class ImageTooLargeError(ValueError):
    """An image header claims more pixels than the limit (possible decompression bomb).

    Message: ``<file>: image of W x H pixels exceeds the limit of N pixels (...)``.
    """


def _umask() -> int:
    """The process umask (read by setting and restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[Any]:
    """Open a temporary file beside ``path`` and move it onto ``path`` on success.

    Args:
        path: destination file; parent folders are created.
        mode: ``"wb"`` or ``"w"`` (text, UTF-8).

    On an exception inside the ``with`` block the temporary file is removed and ``path``
    is left as it was (absent or with its previous content). The file gets the permissions a
    plain ``open`` would give (0o666 minus the umask), not ``mkstemp``'s private 0o600, so
    outputs stay readable by the user's group as usual.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if hasattr(os, "fchmod"):  # POSIX
            os.fchmod(fd, 0o666 & ~_umask())
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
    """Read a JSON file.

    Raises:
        FileNotFoundError: ``<path>: file not found``.
        ValueError: ``<path>: not valid JSON (...)`` / ``not UTF-8 text`` / ``nested too deeply``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    except RecursionError:
        raise ValueError(f"{path}: JSON nested too deeply") from None


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


def read_index_png(path: str | os.PathLike, *, max_pixels: int | None = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Read a palette (or grey) PNG as raw class indices.

    Args:
        path: mask file.
        max_pixels: pixel-count limit, see :func:`open_image` (default 64 Mpx).

    Returns:
        (H, W) uint8 array of the stored indices (the palette is ignored, never RGB).

    Raises:
        FileNotFoundError: ``<path>: mask file not found``.
        ImageTooLargeError: the header claims more than ``max_pixels`` pixels.
        ValueError: ``<path>: ...`` if it is not a readable single-channel (P or L) PNG
            (undecodable, truncated, RGB, 16-bit).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: mask file not found")
    try:
        with open_image(path, max_pixels=max_pixels) as img:
            if img.mode not in ("P", "L"):
                raise ValueError(f"{path}: mask must be a palette (P) or grey (L) PNG, got mode {img.mode}")
            img.load()
            return np.array(img, dtype=np.uint8)
    except ValueError as exc:
        msg = one_line(exc)
        if isinstance(exc, ImageTooLargeError) or msg.startswith(str(path) + ":"):
            raise
        raise ValueError(f"{path}: unreadable mask ({msg})") from None
    except (OSError, SyntaxError, EOFError) as exc:
        raise ValueError(f"{path}: unreadable mask ({one_line(exc)})") from None


_BOMB_MSG = re.compile(r"\((\d+) pixels\)")


def _header_size(path: Path) -> tuple[int, int] | None:
    """(W, H) from an image header without Pillow's decompression-bomb check, or None.

    Mirrors ``PIL.Image.open`` (first plugin whose ``accept`` takes the 16-byte prefix), but
    only constructs the plugin object: the header is parsed, no pixel is decoded.
    """
    try:
        Image.init()
        with open(path, "rb") as fp:
            prefix = fp.read(16)
            for fmt in list(Image.ID):
                factory, accept = Image.OPEN[fmt]
                ok = not accept or accept(prefix)
                if not ok or isinstance(ok, str):
                    continue
                fp.seek(0)
                try:
                    im = factory(fp, str(path))
                except (SyntaxError, IndexError, TypeError, ValueError, OSError, EOFError):
                    continue
                return int(im.size[0]), int(im.size[1])
    except Exception:  # pragma: no cover - best effort, only used to word an error message
        return None
    return None


@contextlib.contextmanager
def open_image(path: str | os.PathLike, *, max_pixels: int | None = MAX_IMAGE_PIXELS) -> Iterator[Image.Image]:
    """Open an image lazily (header only, like ``PIL.Image.open``) with a pixel-count limit.

    Args:
        path: image file (any format Pillow reads).
        max_pixels: largest accepted ``width * height`` (default :data:`MAX_IMAGE_PIXELS`,
            64 Mpx); ``None`` keeps only Pillow's own limit (error above
            ``2 * PIL.Image.MAX_IMAGE_PIXELS``), which is then also reported as
            :class:`ImageTooLargeError`. Pillow's ``DecompressionBombWarning`` is silenced.

    Yields:
        the open ``PIL.Image.Image`` (closed on exit); call ``.load()`` to decode. Decode
        errors (truncated data) surface as ``OSError`` at ``.load()``.

    Raises:
        FileNotFoundError: ``<path>: image file not found``.
        ImageTooLargeError: ``<path>: image of W x H pixels exceeds the limit of N pixels ...``.
        UnreadableImageError (a ValueError): ``<path>: unreadable image (...)`` (not an image,
            unreadable header, permission denied).
    """
    path = Path(path)
    if max_pixels is not None and (isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1):
        raise ValueError(f"max_pixels must be a positive int or None, got {max_pixels!r}")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: image file not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
    except Image.DecompressionBombError as exc:
        pil_limit = 2 * Image.MAX_IMAGE_PIXELS if Image.MAX_IMAGE_PIXELS else 0
        limit = min(max_pixels, pil_limit) if max_pixels is not None else pil_limit
        size = _header_size(path)
        if size is not None:
            what = f"{size[0]} x {size[1]} pixels"
        else:
            m = _BOMB_MSG.search(str(exc))
            what = f"{m.group(1)} pixels" if m else "more pixels"
        raise ImageTooLargeError(
            f"{path}: image of {what} exceeds the limit of {limit} pixels (possible decompression bomb)"
        ) from None
    except Image.UnidentifiedImageError:
        raise UnreadableImageError(path, "not a format Pillow can decode") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise UnreadableImageError(path, one_line(exc)) from None
    with img:
        w, h = img.size
        if max_pixels is not None and w * h > max_pixels:
            raise ImageTooLargeError(
                f"{path}: image of {w} x {h} pixels exceeds the limit of {max_pixels} pixels "
                "(wsss.io.MAX_IMAGE_PIXELS; possible decompression bomb)"
            )
        yield img


def image_id_problem(image_id: object) -> str | None:
    """Why ``image_id`` cannot name files safely, or None if it can.

    An image id becomes a file name (``JPEGImages/<id>.jpg``, ``cams/<id>.npz``,
    ``pseudo/<id>.png``), so it must be a non-empty single path component: not absolute,
    no ``/`` or ``\\`` separator, not ``.`` / no ``..``, no NUL, control or other
    non-printable character (``str.isprintable``: Unicode categories C* and Z* except the
    ASCII space, e.g. ``\\x00``, ``\\t``, ``\\x7f``, U+2028, U+202E), no leading/trailing space.

    Returns:
        a short reason (e.g. ``"contains '..'"``) or None.
    """
    if not isinstance(image_id, str):
        return f"must be a string, got {type(image_id).__name__}"
    if not image_id:
        return "is empty"
    if os.path.isabs(image_id) or image_id.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", image_id):
        return "is an absolute path"
    if ".." in image_id:
        return "contains '..'"
    if "/" in image_id or "\\" in image_id or (os.sep in image_id) or (os.altsep and os.altsep in image_id):
        return "contains a path separator"
    if not image_id.isprintable():
        bad = next(ch for ch in image_id if not ch.isprintable())
        kind = "control" if unicodedata.category(bad) == "Cc" else "non-printable"
        return f"contains a {kind} character (U+{ord(bad):04X})"
    if image_id == ".":
        return "is '.'"
    if image_id != image_id.strip():
        return "has leading or trailing white space"
    return None


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (runs of whitespace collapsed); its type name if empty.

    For the one-line ``wsss: error:`` messages that quote a library's error inside our own.
    """
    return " ".join(str(exc).split()) or type(exc).__name__
