"""Image normalisation and the IRN / Puzzle-CAM training augmentation.

Training recipe (IRN, Ahn et al. CVPR 2019, ``voc12/dataloader.py``; Puzzle-CAM, Jo & Yu
ICIP 2021): random rescale of the long side to an integer drawn uniformly from
``resize_long`` (bilinear image, nearest mask) -> random horizontal flip -> optional colour
jitter -> ImageNet normalisation -> random ``crop_size`` square crop; where the image is
smaller than the crop it is placed at a random offset in a zero container (zero after
normalisation = the mean colour), the mask is padded with 255 (ignore) and ``valid`` is 0.

All randomness comes from a ``numpy.random.Generator`` passed per call, so a transform is
deterministic given a seeded generator and safe in DataLoader workers. Geometry (scale, flip,
crop) and colour jitter draw from two generators spawned from it, so enabling jitter leaves the
crops of a given seed unchanged.

**Joint augmentation of dense maps.** The class mask and any number of per-image *extra* maps
(:mod:`wsss.data.extras`: GSLM's confidence CAM, superpixels, saliency hints, ...) receive the
image's geometry exactly: the same rescale (nearest neighbour, PIL's sampling grid, so a pixel
of the map lands where the same pixel of the image lands), the same flip, the same crop window
and container offset; padding is 255 for the mask and each extra's own pad value. Maps never
draw from the generator, so adding or removing one leaves the image's augmentation unchanged.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.transforms import ColorJitter

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "NORMALIZATIONS", "normalization_stats", "normalize", "denormalize", "TrainTransform"]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: name -> (mean, std) on the 0..1 scale. ``imagenet``: torchvision / timm default;
#: ``inception``: (x - 0.5) / 0.5 = (x - 127.5) / 127.5, what TF(-Lite) EfficientNet-Lite
#: weights were trained with (timm calls it IMAGENET_INCEPTION_MEAN/STD).
NORMALIZATIONS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "inception": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}


def normalization_stats(name: str) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """(mean, std) of a named input normalisation (see :data:`NORMALIZATIONS`).

    Raises:
        ValueError: unknown name.
    """
    if name not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {name!r}; choose one of {sorted(NORMALIZATIONS)}")
    return NORMALIZATIONS[name]


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
    return image


def normalize(
    image: np.ndarray,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> torch.Tensor:
    """ImageNet-normalise an RGB image.

    Args:
        image: uint8 (H, W, 3) RGB array, values 0..255.
        mean, std: per-channel statistics on the 0..1 scale.

    Returns:
        float32 tensor (3, H, W): ``(image / 255 - mean) / std``.

    Raises:
        ValueError: wrong dtype or shape.
    """
    image = _check_image(image)
    x = torch.tensor(image).permute(2, 0, 1).to(torch.float32).div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (x - m) / s


def denormalize(
    image: torch.Tensor,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> np.ndarray:
    """Inverse of :func:`normalize`: float (3, H, W) tensor -> uint8 (H, W, 3) array (rounded, clipped)."""
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    x = (image.detach().cpu().to(torch.float32) * s + m) * 255.0
    return x.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


class TrainTransform:
    """Random rescale / flip / colour jitter / normalise / crop (IRN, Puzzle-CAM recipe).

    Args:
        crop_size: side S of the square output crop, pixels.
        resize_long: (lo, hi) inclusive range of the long side after rescaling, pixels
            (IRN uses (320, 640) at crop 512; the default (240, 400) suits ~320 px images).
            ``None`` disables rescaling.
        hflip: random horizontal flip with probability 0.5.
        color_jitter: None or dict with keys among brightness, contrast, saturation, hue
            (torchvision ``ColorJitter`` semantics; factors drawn from the call's generator,
            the four operations applied in a random order, as ColorJitter does).
        mean, std: normalisation statistics (0..1 scale).

    Call:
        ``transform(image, mask=None, *, rng=None, extras=None)`` with ``image`` uint8 (H, W, 3)
        RGB, ``mask`` uint8/int (H, W) class indices (255 = ignore) or None, ``rng`` a
        ``numpy.random.Generator`` or int seed (``generator=`` is an alias; None draws fresh
        OS entropy), ``extras`` ``{name: (integer (H, W) map, pad value)}`` or None.

    Returns:
        dict with ``image`` float32 tensor (3, S, S) normalised (padding = 0), ``mask`` int64
        tensor (S, S) (padding = 255) or None, ``valid`` float32 tensor (S, S), 1 on real
        pixels and 0 on padding, and with ``extras`` given, ``extras``: ``{name: int64 (S, S)}``
        (padding = that map's pad value), geometrically aligned with the image.
    """

    def __init__(
        self,
        crop_size: int = 320,
        resize_long: tuple[int, int] | None = (240, 400),
        hflip: bool = True,
        color_jitter: Mapping[str, float] | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        if int(crop_size) <= 0:
            raise ValueError(f"crop_size must be positive, got {crop_size}")
        self.crop_size = int(crop_size)
        if resize_long is not None:
            lo, hi = int(resize_long[0]), int(resize_long[1])
            if not 0 < lo <= hi:
                raise ValueError(f"resize_long must be (lo, hi) with 0 < lo <= hi, got {resize_long}")
            resize_long = (lo, hi)
        self.resize_long = resize_long
        self.hflip = bool(hflip)
        self.color_jitter = dict(color_jitter) if color_jitter else None
        self._jitter: ColorJitter | None = None
        if self.color_jitter:
            unknown = set(self.color_jitter) - {"brightness", "contrast", "saturation", "hue"}
            if unknown:
                raise ValueError(f"color_jitter: unknown keys {sorted(unknown)}")
            self._jitter = ColorJitter(**self.color_jitter)  # validates the ranges
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)

    def __repr__(self) -> str:
        return (
            f"TrainTransform(crop_size={self.crop_size}, resize_long={self.resize_long}, "
            f"hflip={self.hflip}, color_jitter={self.color_jitter})"
        )

    # -------------------------------------------------------------- steps
    def _rescale(self, img: Image.Image, maps: dict[str, Image.Image], rng: np.random.Generator):
        if self.resize_long is None:
            return img, maps
        target = int(rng.integers(self.resize_long[0], self.resize_long[1] + 1))
        w, h = img.size
        scale = target / max(w, h)
        nw, nh = max(1, int(round(w * scale))), max(1, int(round(h * scale)))
        if (nw, nh) != (w, h):
            img = img.resize((nw, nh), Image.Resampling.BILINEAR)
            maps = {k: m.resize((nw, nh), Image.Resampling.NEAREST) for k, m in maps.items()}
        return img, maps

    def _jitter_image(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
        j = self._jitter
        assert j is not None
        order = rng.permutation(4)
        for k in order:
            if k == 0 and j.brightness is not None:
                img = TF.adjust_brightness(img, float(rng.uniform(j.brightness[0], j.brightness[1])))
            elif k == 1 and j.contrast is not None:
                img = TF.adjust_contrast(img, float(rng.uniform(j.contrast[0], j.contrast[1])))
            elif k == 2 and j.saturation is not None:
                img = TF.adjust_saturation(img, float(rng.uniform(j.saturation[0], j.saturation[1])))
            elif k == 3 and j.hue is not None:
                img = TF.adjust_hue(img, float(rng.uniform(j.hue[0], j.hue[1])))
        return img

    def __call__(
        self,
        image: np.ndarray,
        mask: np.ndarray | None = None,
        *,
        rng: np.random.Generator | int | None = None,
        generator: np.random.Generator | int | None = None,
        extras: Mapping[str, tuple[np.ndarray, int]] | None = None,
    ) -> dict[str, Any]:
        """Augment ``image`` (and ``mask`` / ``extras`` with the same geometry).

        Args:
            image: uint8 (H, W, 3) RGB.
            mask: None or integer (H, W) class indices in 0..255 (255 = ignore).
            rng / generator: ``numpy.random.Generator`` or int seed (None: fresh OS entropy).
            extras: ``name -> (map, pad_value)``; each map an integer (H, W) array whose values
                fit in int32, augmented like the mask (nearest rescale, flip, crop) and padded
                with ``pad_value``.

        Returns:
            ``{"image": float32 (3, S, S), "mask": int64 (S, S) | None, "valid": float32 (S, S)}``
            plus, when ``extras`` is given, ``"extras": {name: int64 (S, S)}``.

        Raises:
            ValueError: bad image; a mask / extra map whose shape differs from the image's,
                that is not integer, or out of range (mask 0..255, extras int32).
        """
        image = _check_image(image)
        if rng is None:
            rng = generator
        if not isinstance(rng, np.random.Generator):
            rng = np.random.default_rng(rng)
        # independent streams: turning colour jitter on/off does not change the geometry
        rng, color_rng = rng.spawn(2)
        img = Image.fromarray(np.ascontiguousarray(image))
        maps: dict[str, Image.Image] = {}
        pads: dict[str, int] = {}
        if mask is not None:
            mask = np.asarray(mask)
            if mask.shape != image.shape[:2]:
                raise ValueError(f"mask shape {mask.shape} differs from image shape {image.shape[:2]}")
            if mask.size and (mask.min() < 0 or mask.max() > 255):
                raise ValueError("mask values must lie in 0..255")
            maps["\0mask"] = Image.fromarray(np.ascontiguousarray(mask.astype(np.uint8)))
            pads["\0mask"] = 255
        for name, (arr, pad) in (extras or {}).items():
            maps[name] = _map_to_pil(arr, image.shape[:2], f"extra input '{name}'")
            pads[name] = int(pad)

        img, maps = self._rescale(img, maps, rng)
        if self.hflip and rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            maps = {k: m.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for k, m in maps.items()}
        if self._jitter is not None:
            img = self._jitter_image(img, color_rng)

        x = normalize(np.asarray(img), self.mean, self.std)  # (3, h, w)
        h, w = x.shape[1:]
        S = self.crop_size
        # IRN random_crop: choose the image window and the container offset per axis.
        def offsets(n: int) -> tuple[int, int, int]:
            if n >= S:
                return int(rng.integers(0, n - S + 1)), 0, S  # image start, container start, length
            return 0, int(rng.integers(0, S - n + 1)), n

        iy, cy, lh = offsets(h)
        ix, cx, lw = offsets(w)
        out = torch.zeros((3, S, S), dtype=torch.float32)
        out[:, cy : cy + lh, cx : cx + lw] = x[:, iy : iy + lh, ix : ix + lw]
        valid = torch.zeros((S, S), dtype=torch.float32)
        valid[cy : cy + lh, cx : cx + lw] = 1.0
        cropped: dict[str, torch.Tensor] = {}
        for k, m in maps.items():
            arr = torch.from_numpy(np.asarray(m).astype(np.int64))
            t = torch.full((S, S), pads[k], dtype=torch.int64)
            t[cy : cy + lh, cx : cx + lw] = arr[iy : iy + lh, ix : ix + lw]
            cropped[k] = t
        res: dict[str, Any] = {"image": out, "mask": cropped.pop("\0mask", None), "valid": valid}
        if extras is not None:
            res["extras"] = cropped
        return res


def _map_to_pil(arr: np.ndarray, shape: tuple[int, int], what: str) -> Image.Image:
    """An integer (H, W) map as a PIL image for nearest resampling: mode ``L`` when its values fit
    in 0..255, else ``I`` (int32). Raises ValueError naming ``what`` on a bad map."""
    arr = np.asarray(arr)
    if arr.shape != tuple(shape):
        raise ValueError(f"{what}: map shape {arr.shape} differs from image shape {tuple(shape)}")
    if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
        raise ValueError(f"{what}: map must hold integers, got dtype {arr.dtype}")
    if arr.size == 0 or (arr.min() >= 0 and arr.max() <= 255):
        return Image.fromarray(np.ascontiguousarray(arr.astype(np.uint8)))  # mode L
    if arr.min() < -(2**31) or arr.max() > 2**31 - 1:
        raise ValueError(f"{what}: map values must fit in int32")
    return Image.fromarray(np.ascontiguousarray(arr.astype(np.int32)))  # mode I
