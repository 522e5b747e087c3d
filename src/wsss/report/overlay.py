"""Pictures for reports: CAM heat-map overlays, label-map overlays and captioned rows.

All functions take and return plain NumPy arrays (uint8 RGB images, H x W x 3); nothing
here needs torch. Colours of label maps follow the PASCAL VOC colour map
(:func:`wsss.io.voc_palette`), so overlays match the palette PNGs written by the
pseudo-mask stages.
"""

from __future__ import annotations

import base64
import io
import os
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from wsss.io import atomic_write_bytes, voc_palette

__all__ = [
    "as_rgb",
    "resize_rgb",
    "cam_overlay",
    "mask_overlay",
    "label_strip",
    "panel",
    "png_bytes",
    "png_data_uri",
    "save_png",
]

_CAPTION_HEIGHT = 14
_FONT_SIZE = 10


def as_rgb(image: np.ndarray) -> np.ndarray:
    """Return ``image`` as a contiguous uint8 (H, W, 3) RGB array.

    Args:
        image: (H, W) grey, (H, W, 1), (H, W, 3) RGB or (H, W, 4) RGBA array. Integer
            arrays must hold 0..255; float arrays are taken as [0, 1] and scaled by 255.

    Raises:
        ValueError: if the shape is not one of the above.
    """
    a = np.asarray(image)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
        raise ValueError(f"image must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got shape {a.shape}")
    if a.dtype != np.uint8:
        if np.issubdtype(a.dtype, np.floating):
            a = np.clip(np.rint(a * 255.0), 0, 255)
        else:
            a = np.clip(a, 0, 255)
        a = a.astype(np.uint8)
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    elif a.shape[2] == 4:
        a = a[:, :, :3]
    return np.ascontiguousarray(a)


def resize_rgb(image: np.ndarray, size: tuple[int, int], *, nearest: bool = False) -> np.ndarray:
    """Resize a uint8 image to ``size`` = (H, W) with Pillow (bilinear, or nearest)."""
    a = as_rgb(image)
    h, w = int(size[0]), int(size[1])
    if a.shape[:2] == (h, w):
        return a
    resample = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(a).resize((w, h), resample), dtype=np.uint8)


def _resize_float(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a (h, w) float map to ``size`` = (H, W) (Pillow mode ``F``)."""
    if arr.shape == tuple(size):
        return arr
    img = Image.fromarray(np.ascontiguousarray(arr, dtype=np.float32), mode="F")
    return np.asarray(img.resize((size[1], size[0]), Image.Resampling.BILINEAR), dtype=np.float32)


def _resize_index(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a (h, w) uint8 label map to ``size`` = (H, W)."""
    if mask.shape == tuple(size):
        return mask
    img = Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint8), mode="L")
    return np.asarray(img.resize((size[1], size[0]), Image.Resampling.NEAREST), dtype=np.uint8)


def _blend(base: np.ndarray, top: np.ndarray, alpha: float) -> np.ndarray:
    out = (1.0 - alpha) * base.astype(np.float32) + alpha * top.astype(np.float32)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def cam_overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.5, cmap: str = "jet") -> np.ndarray:
    """Blend a CAM heat map over an image.

    ``out = (1 - alpha) * image + alpha * colormap(cam)``, rounded to uint8, with the
    colour map taken from matplotlib (``cmap(cam, bytes=True)``).

    Args:
        image: uint8 (H, W, 3) RGB image (grey or RGBA is converted, see :func:`as_rgb`).
        cam: float (h, w) class activation map with values in [0, 1] (values outside are
            clipped; NaN is treated as 0). Resized bilinearly to (H, W) if its size differs.
        alpha: weight of the heat map in [0, 1]; 0 returns the image unchanged, 1 the pure
            colour-mapped CAM.
        cmap: name of a matplotlib colour map.

    Returns:
        uint8 (H, W, 3) RGB array.

    Raises:
        ValueError: if ``cam`` is not 2-D, ``alpha`` is outside [0, 1] or ``cmap`` is unknown.
    """
    import matplotlib

    img = as_rgb(image)
    cam = np.asarray(cam, dtype=np.float32)
    if cam.ndim != 2:
        raise ValueError(f"cam must be 2-D (H, W), got shape {cam.shape}")
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    try:
        colormap = matplotlib.colormaps[cmap]
    except KeyError:
        raise ValueError(f"unknown matplotlib colour map {cmap!r}") from None
    cam = np.nan_to_num(_resize_float(cam, img.shape[:2]), nan=0.0)
    cam = np.clip(cam, 0.0, 1.0)
    colour = np.asarray(colormap(cam, bytes=True), dtype=np.uint8)[:, :, :3]
    return _blend(img, colour, float(alpha))


def mask_overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """Colour a label map (seed, pseudo mask, ground truth) over an image.

    Pixels with label 0 (background) keep the image colour; every other label ``c`` is
    blended with the VOC palette colour ``voc_palette()[c]``, so 255 (void / ignore /
    uncertain) shows in the palette's void colour (224, 224, 192).

    Args:
        image: uint8 (H, W, 3) RGB image.
        mask: (h, w) integer label map in 0..255 (0 = background, 255 = void). Resized
            with nearest neighbour to (H, W) if its size differs.
        alpha: weight of the label colour in [0, 1].

    Returns:
        uint8 (H, W, 3) RGB array.

    Raises:
        ValueError: if ``mask`` is not 2-D, holds values outside 0..255, or ``alpha`` is
            outside [0, 1].
    """
    img = as_rgb(image)
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {m.shape}")
    if m.size and (m.min() < 0 or m.max() > 255):
        raise ValueError("mask values must lie in 0..255")
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    m = _resize_index(m.astype(np.uint8), img.shape[:2])
    colour = voc_palette()[m]
    out = img.copy()
    fg = m != 0
    out[fg] = _blend(img[fg], colour[fg], float(alpha))
    return out


def _font(size: int = _FONT_SIZE) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # very old Pillow: bitmap font only
        return ImageFont.load_default()


def _text_width(draw: ImageDraw.ImageDraw, text: str, font) -> int:
    left, _, right, _ = draw.textbbox((0, 0), text, font=font)
    return int(right - left)


def label_strip(text: str, width: int, height: int = _CAPTION_HEIGHT) -> np.ndarray:
    """A caption tile: ``text`` in black on white, centred, cut with ``..`` if too wide.

    Args:
        text: caption (Pillow's default font; non-Latin characters may not render).
        width: tile width in pixels (>= 1).
        height: tile height in pixels (>= 1).

    Returns:
        uint8 (height, width, 3) RGB array.
    """
    width, height = max(1, int(width)), max(1, int(height))
    img = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    font = _font(max(6, min(_FONT_SIZE, height - 3)))
    text = str(text)
    shown = text
    while shown and _text_width(draw, shown, font) > width - 2:
        shown = shown[:-1]
    if shown != text and len(shown) > 2:
        shown = shown[:-2] + ".."
    tw = _text_width(draw, shown, font)
    _, top, _, bottom = draw.textbbox((0, 0), shown or " ", font=font)
    y = (height - (bottom - top)) // 2 - top
    draw.text(((width - tw) // 2, y), shown, fill=(0, 0, 0), font=font)
    return np.asarray(img, dtype=np.uint8)


def panel(
    images: Sequence[np.ndarray],
    captions: Sequence[str] | None = None,
    *,
    pad: int = 4,
    caption_height: int = _CAPTION_HEIGHT,
    background: int = 255,
) -> np.ndarray:
    """Lay out images in one row, each with a small caption below it.

    Tiles keep their size and are top-aligned; shorter tiles are padded with
    ``background``. Tiles are separated (and framed) by ``pad`` pixels.

    Args:
        images: uint8 images (H_i, W_i, 3) (grey/RGBA converted, see :func:`as_rgb`).
        captions: one string per image, or None for no captions.
        pad: gap in pixels between and around tiles (>= 0).
        caption_height: height of the caption strip in pixels.
        background: grey level 0..255 of the gaps.

    Returns:
        uint8 (H, W, 3) RGB array with ``H = pad + max(H_i) + caption_height + pad`` and
        ``W = pad + sum(W_i + pad)``.

    Raises:
        ValueError: if ``images`` is empty or ``captions`` has a different length.
    """
    tiles = [as_rgb(im) for im in images]
    if not tiles:
        raise ValueError("panel needs at least one image")
    if captions is not None and len(captions) != len(tiles):
        raise ValueError(f"panel got {len(tiles)} images but {len(captions)} captions")
    pad = max(0, int(pad))
    cap_h = int(caption_height) if captions is not None else 0
    tile_h = max(t.shape[0] for t in tiles)
    total_w = pad + sum(t.shape[1] + pad for t in tiles)
    total_h = pad + tile_h + cap_h + pad
    out = np.full((total_h, total_w, 3), int(background), dtype=np.uint8)
    x = pad
    for i, t in enumerate(tiles):
        h, w = t.shape[:2]
        out[pad : pad + h, x : x + w] = t
        if captions is not None and cap_h > 0:
            out[pad + tile_h : pad + tile_h + cap_h, x : x + w] = label_strip(captions[i], w, cap_h)
        x += w + pad
    return out


def png_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 image ((H, W) grey, (H, W, 3) RGB or (H, W, 4) RGBA) as PNG bytes.

    Raises:
        ValueError: if the array is not uint8 or has another shape.
    """
    a = np.asarray(array)
    if a.dtype != np.uint8:
        raise ValueError(f"PNG array must be uint8, got {a.dtype}")
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))):
        raise ValueError(f"PNG array must be (H, W), (H, W, 3) or (H, W, 4), got shape {a.shape}")
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(a)).save(buf, format="PNG")
    return buf.getvalue()


def png_data_uri(data: bytes | np.ndarray) -> str:
    """``data:image/png;base64,...`` URI of PNG bytes (or of an array, encoded first)."""
    if isinstance(data, np.ndarray):
        data = png_bytes(data)
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def save_png(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write a uint8 image array as a PNG file, atomically (:func:`wsss.io.atomic_write_bytes`).

    Raises:
        ValueError: if the array is not a uint8 (H, W), (H, W, 3) or (H, W, 4) image
            (the message starts with ``path``).
    """
    try:
        data = png_bytes(array)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    atomic_write_bytes(path, data)
