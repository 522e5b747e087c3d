"""Confusion matrices and segmentation scores (mIoU, precision/recall, under/over-activation).

Evaluation protocol (IRN, Ahn et al. 2019; see docs): one confusion matrix is accumulated
over the whole split and the scores are computed from it once; per-image scores are never
averaged. Ground-truth void pixels (255) are ignored, and so are pixels a pseudo mask leaves
uncertain (predicted 255).

Conventions used by :func:`segmentation_scores` (K classes, index 0 = background):

- a class is *present* when it occurs in the ground truth or in the prediction of the
  evaluated pixels; absent classes are reported as ``None`` per class and left out of every
  mean;
- ``TP_c`` = conf[c, c], ``FP_c`` = column sum - TP_c, ``FN_c`` = row sum - TP_c,
  ``TN_c`` = total - TP_c - FP_c - FN_c.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["confusion_matrix", "ConfusionMatrix", "segmentation_scores"]

_ROUND = 4


def confusion_matrix(
    gt: np.ndarray, pred: np.ndarray, num_classes: int, ignore_index: int = 255
) -> np.ndarray:
    """Pixel confusion matrix of one label map against its ground truth.

    Args:
        gt: (H, W) (or any shape) integer ground-truth indices in 0..K-1, ``ignore_index`` = void.
        pred: integer predicted indices of the same shape, in 0..K-1; pixels equal to
            ``ignore_index`` (uncertain pseudo-mask pixels) are excluded as well.
        num_classes: K, the number of classes *including* background.
        ignore_index: the void / uncertain value (255, VOC convention).

    Returns:
        (K, K) int64 matrix; rows = ground truth, columns = prediction.

    Raises:
        ValueError: if the shapes differ or a non-ignored value lies outside 0..K-1.
    """
    gt = np.asarray(gt)
    pred = np.asarray(pred)
    if gt.shape != pred.shape:
        raise ValueError(f"confusion_matrix: gt shape {gt.shape} differs from prediction shape {pred.shape}")
    k = int(num_classes)
    if k < 1:
        raise ValueError(f"confusion_matrix: num_classes must be >= 1, got {num_classes}")
    valid = (gt != ignore_index) & (pred != ignore_index)
    g = gt[valid].astype(np.int64, copy=False)
    p = pred[valid].astype(np.int64, copy=False)
    if g.size:
        for name, arr in (("ground-truth", g), ("predicted", p)):
            lo, hi = int(arr.min()), int(arr.max())
            if lo < 0 or hi >= k:
                bad = lo if lo < 0 else hi
                raise ValueError(
                    f"confusion_matrix: {name} label {bad} outside 0..{k - 1} (and not {ignore_index})"
                )
    return np.bincount(g * k + p, minlength=k * k).reshape(k, k).astype(np.int64, copy=False)


class ConfusionMatrix:
    """Accumulator of one (K, K) confusion matrix over a whole split.

    Args:
        num_classes: K, including background.
        ignore_index: void value in the ground truth and uncertain value in predictions.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self._conf = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def update(self, gt: np.ndarray, pred: np.ndarray) -> None:
        """Add one image (see :func:`confusion_matrix` for shapes and errors)."""
        self._conf += confusion_matrix(gt, pred, self.num_classes, self.ignore_index)

    def merge(self, other: "ConfusionMatrix | np.ndarray") -> None:
        """Add another accumulator's (or a raw (K, K) matrix's) counts into this one."""
        m = other.matrix if isinstance(other, ConfusionMatrix) else np.asarray(other, dtype=np.int64)
        if m.shape != self._conf.shape:
            raise ValueError(f"ConfusionMatrix.merge: shape {m.shape} differs from {self._conf.shape}")
        self._conf += m

    @property
    def matrix(self) -> np.ndarray:
        """A copy of the accumulated (K, K) int64 matrix (rows = gt, columns = prediction)."""
        return self._conf.copy()

    def scores(self, class_names: Sequence[str]) -> dict:
        """:func:`segmentation_scores` of the accumulated matrix."""
        return segmentation_scores(self._conf, class_names)


def _r(x: float | None) -> float | None:
    return None if x is None else round(float(x), _ROUND)


def _mean(values: np.ndarray, mask: np.ndarray) -> float | None:
    return _r(values[mask].mean()) if mask.any() else None


def segmentation_scores(conf: np.ndarray, class_names: Sequence[str]) -> dict:
    """Scores of a (K, K) confusion matrix (rows = gt, columns = prediction).

    Args:
        conf: (K, K) non-negative integer counts; index 0 is background.
        class_names: K names, background first.

    Returns:
        dict, every value rounded to 4 decimals, ``None`` where undefined:

        - ``miou``: mean over present classes (background included) of
          TP / (TP + FP + FN), in %; ``per_class``: name -> IoU % (``None`` if absent).
        - ``precision`` / ``recall``: means over present classes of TP / (TP + FP) and
          TP / (TP + FN), in %; a present class never predicted has precision 0, a present
          class absent from the gt has recall 0. ``per_class_precision`` / ``per_class_recall``.
        - ``m_under`` / ``m_over``: GSLM (Wu et al.) Eq. 7-8, after [19] of that paper: mean over
          foreground classes of FN_c / TP_c and FP_c / TP_c, as plain ratios (not %; 0 is
          perfect, unbounded above). A present foreground class with TP_c = 0 makes the ratio
          infinite: such classes are left out of both means and listed in ``m_undefined``.
          Per class in ``per_class_m_under`` / ``per_class_m_over`` (``None`` if absent or TP_c = 0).
        - ``fpr`` / ``fnr``: means over present foreground classes of FP / (FP + TN) and
          FN / (FN + TP), in % (a class absent from the gt has FN = 0, so fnr 0).
        - ``num_pixels``: evaluated pixel count.

    Raises:
        ValueError: if ``conf`` is not square or ``class_names`` has the wrong length.
    """
    conf = np.asarray(conf, dtype=np.int64)
    if conf.ndim != 2 or conf.shape[0] != conf.shape[1]:
        raise ValueError(f"segmentation_scores: confusion matrix must be square (K, K), got {conf.shape}")
    k = conf.shape[0]
    names = list(class_names)
    if len(names) != k:
        raise ValueError(f"segmentation_scores: {len(names)} class names for a {k}x{k} confusion matrix")
    if (conf < 0).any():
        raise ValueError("segmentation_scores: confusion matrix holds negative counts")

    c = conf.astype(np.float64)
    tp = np.diag(c)
    gt_n = c.sum(axis=1)
    pred_n = c.sum(axis=0)
    fp = pred_n - tp
    fn = gt_n - tp
    total = c.sum()
    tn = total - tp - fp - fn
    present = (gt_n + pred_n) > 0
    fg = np.arange(k) > 0

    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(present, tp / np.maximum(tp + fp + fn, 1), np.nan) * 100
        prec = np.where(present, np.where(pred_n > 0, tp / np.maximum(pred_n, 1), 0.0), np.nan) * 100
        rec = np.where(present, np.where(gt_n > 0, tp / np.maximum(gt_n, 1), 0.0), np.nan) * 100
        fpr = np.where(present, np.where(fp + tn > 0, fp / np.maximum(fp + tn, 1), 0.0), np.nan) * 100
        fnr = np.where(present, np.where(fn + tp > 0, fn / np.maximum(fn + tp, 1), 0.0), np.nan) * 100
        defined = present & fg & (tp > 0)
        under = np.where(defined, fn / np.where(tp > 0, tp, 1), np.nan)
        over = np.where(defined, fp / np.where(tp > 0, tp, 1), np.nan)

    def per_class(v: np.ndarray, mask: np.ndarray) -> dict[str, float | None]:
        return {n: (_r(v[i]) if mask[i] else None) for i, n in enumerate(names)}

    return {
        "miou": _mean(iou, present),
        "per_class": per_class(iou, present),
        "precision": _mean(prec, present),
        "recall": _mean(rec, present),
        "per_class_precision": per_class(prec, present),
        "per_class_recall": per_class(rec, present),
        "m_under": _mean(under, defined),
        "m_over": _mean(over, defined),
        "per_class_m_under": {n: (_r(under[i]) if defined[i] else None) for i, n in enumerate(names) if i > 0},
        "per_class_m_over": {n: (_r(over[i]) if defined[i] else None) for i, n in enumerate(names) if i > 0},
        "m_undefined": [names[i] for i in range(1, k) if present[i] and tp[i] == 0],
        "fpr": _mean(fpr, present & fg),
        "fnr": _mean(fnr, present & fg),
        "num_pixels": int(total),
    }
