"""Fully connected CRF (Kraehenbuehl & Koltun, NIPS 2011) through pydensecrf2.

Default parameters are IRN's (Ahn et al. 2019, ``imutils.crf_inference_label``): 10 mean-field
iterations, unary from labels with ``gt_prob`` 0.7, Gaussian kernel sxy 3 / compat 3,
bilateral kernel sxy 50 / srgb 5 / compat 10. GSLM uses Gaussian compat 10; AffinityNet/PSA
uses bilateral 80 / 13 / 10.

pydensecrf2 is an optional dependency (``pip install "wsss[crf]"``); its distribution
``pydensecrf2`` 1.1 installs the module ``pydensecrf``. It is imported lazily, on first use.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

import numpy as np

__all__ = ["CRFParams", "crf_from_labels", "crf_from_probs"]


@dataclass(frozen=True)
class CRFParams:
    """Dense CRF parameters (defaults: IRN).

    Attributes:
        iterations: mean-field iterations (0 returns the unary's own argmax / softmax).
        gt_prob: confidence given to the input label in :func:`crf_from_labels`, in (0, 1).
        gaussian_sxy: spatial std (pixels) of the smoothness kernel.
        gaussian_compat: Potts weight of the smoothness kernel.
        bilateral_sxy: spatial std (pixels) of the appearance kernel.
        bilateral_srgb: colour std (0..255 intensity units) of the appearance kernel.
        bilateral_compat: Potts weight of the appearance kernel.
    """

    iterations: int = 10
    gt_prob: float = 0.7
    gaussian_sxy: float = 3.0
    gaussian_compat: float = 3.0
    bilateral_sxy: float = 50.0
    bilateral_srgb: float = 5.0
    bilateral_compat: float = 10.0

    def __post_init__(self) -> None:
        if int(self.iterations) != self.iterations or self.iterations < 0:
            raise ValueError(f"CRFParams: iterations must be a non-negative integer, got {self.iterations}")
        if not 0.0 < float(self.gt_prob) < 1.0:
            raise ValueError(f"CRFParams: gt_prob must lie in (0, 1), got {self.gt_prob}")
        for name in ("gaussian_sxy", "bilateral_sxy", "bilateral_srgb"):
            if float(getattr(self, name)) <= 0:
                raise ValueError(f"CRFParams: {name} must be > 0, got {getattr(self, name)}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "CRFParams":
        """Build from a (config) mapping; missing keys keep their defaults.

        Raises:
            ValueError: on an unknown key or an invalid value.
        """
        if d is None:
            return cls()
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"CRFParams: unknown key(s) {unknown}; known: {sorted(known)}")
        return cls(**dict(d))

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the parameters (for configs and metrics files)."""
        return asdict(self)


def _densecrf() -> tuple[Any, Any, Any]:
    """Import pydensecrf lazily: (densecrf module, unary_from_labels, unary_from_softmax)."""
    try:
        import pydensecrf.densecrf as dcrf
        from pydensecrf.utils import unary_from_labels, unary_from_softmax
    except ImportError as exc:
        raise ImportError(
            f"dense CRF needs the optional dependency pydensecrf2 (module 'pydensecrf'): "
            f'pip install "wsss[crf]" ({exc})'
        ) from exc
    return dcrf, unary_from_labels, unary_from_softmax


def _rgb(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"CRF: image must be (H, W, 3) RGB, got shape {img.shape}")
    if img.shape[:2] != tuple(hw):
        raise ValueError(f"CRF: image size {img.shape[:2]} differs from the label/probability size {tuple(hw)}")
    if img.dtype != np.uint8:
        raise ValueError(f"CRF: image must be uint8 (0..255), got {img.dtype}")
    # pydensecrf needs its own writable, C-contiguous uint8 buffer (Pillow arrays are read-only)
    return np.array(img, dtype=np.uint8, order="C", copy=True)


def _run(image: np.ndarray, unary: np.ndarray, n: int, h: int, w: int, params: CRFParams, dcrf: Any) -> np.ndarray:
    d = dcrf.DenseCRF2D(w, h, n)
    d.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    d.addPairwiseGaussian(sxy=float(params.gaussian_sxy), compat=float(params.gaussian_compat))
    d.addPairwiseBilateral(
        sxy=float(params.bilateral_sxy),
        srgb=float(params.bilateral_srgb),
        rgbim=image,
        compat=float(params.bilateral_compat),
    )
    q = d.inference(int(params.iterations))
    return np.asarray(q, dtype=np.float32).reshape(n, h, w)


def crf_from_labels(
    image: np.ndarray, labels: np.ndarray, n_labels: int, params: CRFParams | None = None
) -> np.ndarray:
    """Refine a label map with a dense CRF whose unary comes from the labels (IRN).

    Args:
        image: (H, W, 3) uint8 RGB.
        labels: (H, W) integer label map with values in 0..n_labels-1 (every value a real
            label: ``unary_from_labels(..., zero_unsure=False)``).
        n_labels: number of labels n.
        params: CRF parameters (IRN defaults).

    Returns:
        (H, W) int64 refined labels in 0..n_labels-1. With n_labels == 1 the input is
        returned unchanged (nothing to choose between).

    Raises:
        ValueError: wrong shapes/dtype, labels outside 0..n_labels-1.
        ImportError: pydensecrf2 missing (``pip install "wsss[crf]"``).
    """
    params = params or CRFParams()
    lab = np.asarray(labels)
    if lab.ndim != 2:
        raise ValueError(f"crf_from_labels: labels must be (H, W), got shape {lab.shape}")
    if not np.issubdtype(lab.dtype, np.integer):
        raise ValueError(f"crf_from_labels: labels must be integers, got {lab.dtype}")
    n = int(n_labels)
    if n < 1:
        raise ValueError(f"crf_from_labels: n_labels must be >= 1, got {n_labels}")
    if lab.size and (lab.min() < 0 or lab.max() >= n):
        raise ValueError(f"crf_from_labels: labels span {lab.min()}..{lab.max()}, outside 0..{n - 1}")
    h, w = lab.shape
    img = _rgb(image, (h, w))
    if n == 1:
        return lab.astype(np.int64)
    dcrf, unary_from_labels, _ = _densecrf()
    unary = unary_from_labels(lab.astype(np.int64), n, gt_prob=float(params.gt_prob), zero_unsure=False)
    q = _run(img, unary, n, h, w, params, dcrf)
    return np.argmax(q, axis=0).astype(np.int64)


def crf_from_probs(image: np.ndarray, probs: np.ndarray, params: CRFParams | None = None) -> np.ndarray:
    """Refine class probabilities with a dense CRF whose unary is -log(probs).

    Args:
        image: (H, W, 3) uint8 RGB.
        probs: (n, H, W) float probabilities per label (each pixel should sum to 1; values are
            clipped at 1e-5 by ``unary_from_softmax``).
        params: CRF parameters (IRN defaults; ``gt_prob`` unused).

    Returns:
        (n, H, W) float32 marginals after mean-field inference (sum to 1 over n).

    Raises:
        ValueError: wrong shapes or a negative / non-finite probability.
        ImportError: pydensecrf2 missing (``pip install "wsss[crf]"``).
    """
    params = params or CRFParams()
    p = np.asarray(probs, dtype=np.float32)
    if p.ndim != 3 or p.shape[0] < 1:
        raise ValueError(f"crf_from_probs: probs must be (n, H, W) with n >= 1, got shape {p.shape}")
    if not np.isfinite(p).all() or (p < 0).any():
        raise ValueError("crf_from_probs: probabilities must be finite and >= 0")
    n, h, w = p.shape
    img = _rgb(image, (h, w))
    dcrf, _, unary_from_softmax = _densecrf()
    unary = unary_from_softmax(np.ascontiguousarray(p))
    return _run(img, unary, n, h, w, params, dcrf)
