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
        ``transform(image, mask=None, *, rng=None)`` with ``image`` uint8 (H, W, 3) RGB,
        ``mask`` uint8/int (H, W) class indices (255 = ignore) or None, ``rng`` a
        ``numpy.random.Generator`` or int seed (``generator=`` is an alias; None draws fresh
        OS entropy).

    Returns:
        dict with ``image`` float32 tensor (3, S, S) normalised (padding = 0), ``mask`` int64
        tensor (S, S) (padding = 255) or None, ``valid`` float32 tensor (S, S), 1 on real
        pixels and 0 on padding.
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
    def _rescale(self, img: Image.Image, mask: Image.Image | None, rng: np.random.Generator):
        if self.resize_long is None:
            return img, mask
        target = int(rng.integers(self.resize_long[0], self.resize_long[1] + 1))
        w, h = img.size
        scale = target / max(w, h)
        nw, nh = max(1, int(round(w * scale))), max(1, int(round(h * scale)))
        if (nw, nh) != (w, h):
            img = img.resize((nw, nh), Image.Resampling.BILINEAR)
            if mask is not None:
                mask = mask.resize((nw, nh), Image.Resampling.NEAREST)
        return img, mask

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
    ) -> dict[str, Any]:
        image = _check_image(image)
        if rng is None:
            rng = generator
        if not isinstance(rng, np.random.Generator):
            rng = np.random.default_rng(rng)
        # independent streams: turning colour jitter on/off does not change the geometry
        rng, color_rng = rng.spawn(2)
        img = Image.fromarray(np.ascontiguousarray(image))
        mimg = None
        if mask is not None:
            mask = np.asarray(mask)
            if mask.shape != image.shape[:2]:
                raise ValueError(f"mask shape {mask.shape} differs from image shape {image.shape[:2]}")
            if mask.size and (mask.min() < 0 or mask.max() > 255):
                raise ValueError("mask values must lie in 0..255")
            mimg = Image.fromarray(np.ascontiguousarray(mask.astype(np.uint8)))

        img, mimg = self._rescale(img, mimg, rng)
        if self.hflip and rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            if mimg is not None:
                mimg = mimg.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
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
        m_out = None
        if mimg is not None:
            m = torch.from_numpy(np.asarray(mimg, dtype=np.uint8).astype(np.int64))
            m_out = torch.full((S, S), 255, dtype=torch.int64)
            m_out[cy : cy + lh, cx : cx + lw] = m[iy : iy + lh, ix : ix + lw]
        return {"image": out, "mask": m_out, "valid": valid}
