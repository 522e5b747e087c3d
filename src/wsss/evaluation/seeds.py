"""Seeds from CAMs, and their evaluation.

A *seed* is the label map obtained from an image's CAMs by prepending a constant
background channel (the *background threshold*) and taking the argmax (IRN,
Ahn et al. 2019, ``cam_eval_thres``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

from wsss.evaluation.metrics import ConfusionMatrix, segmentation_scores
from wsss.inference.store import CamRecord, cam_path, load_cam
from wsss.io import read_index_png

__all__ = ["cam_to_seed", "evaluate_seeds", "evaluate_masks", "best_threshold", "DEFAULT_SWEEP"]


def cam_to_seed(record: CamRecord, threshold: float) -> np.ndarray:
    """Seed label map from stored CAMs.

    Args:
        record: CAMs of one image; ``high_res`` (K, H, W) in [0, 1], ``keys`` (K,) in 1..C.
        threshold: background threshold in [0, 1]; a pixel is background unless some
            class CAM is strictly greater than it.

    Returns:
        (H, W) uint8 label map in the dataset's label space (0 = background).
    """
    h, w = record.size
    if len(record.keys) == 0:
        return np.zeros((h, w), dtype=np.uint8)
    bg = np.full((1, h, w), threshold, dtype=np.float32)
    stacked = np.concatenate([bg, record.high_res.astype(np.float32)], axis=0)
    lut = np.concatenate([[0], np.asarray(record.keys)]).astype(np.uint8)
    return lut[np.argmax(stacked, axis=0)]


# ---------------------------------------------------------------------------------------
# Evaluation of seeds (swept background threshold) and of stored pseudo masks
# ---------------------------------------------------------------------------------------

#: Default sweep of background thresholds: 0.00, 0.01, ..., 0.60.
DEFAULT_SWEEP: tuple[float, ...] = tuple(float(t) for t in np.round(np.arange(0.0, 0.61, 0.01), 2))

_SCORE_KEYS = (
    "miou",
    "per_class",
    "precision",
    "recall",
    "per_class_precision",
    "per_class_recall",
    "m_under",
    "m_over",
    "fpr",
    "fnr",
)


def _check_layout(layout: Any) -> tuple[list[str], list[str], int]:
    ids = list(layout.ids)
    names = list(layout.class_names)
    k = int(layout.num_classes) + 1
    if len(names) != k:
        raise ValueError(
            f"layout: {len(names)} class names but num_classes = {layout.num_classes} "
            f"(expected background + {layout.num_classes} names)"
        )
    if not ids:
        raise ValueError(f"layout: split {getattr(layout, 'split', '?')!r} holds no images")
    return ids, names, k


def _gt_mask(layout: Any, image_id: str, k: int) -> np.ndarray:
    gt = np.asarray(layout.mask(image_id))
    if gt.ndim != 2:
        raise ValueError(f"{image_id}: ground-truth mask must be 2-D, got shape {gt.shape}")
    bad = (gt != 255) & (gt >= k)
    if bad.any():
        raise ValueError(f"{image_id}: ground-truth mask holds label {int(gt[bad][0])} outside 0..{k - 1} and not 255")
    return gt


def _scores(conf: np.ndarray, names: list[str]) -> dict:
    s = segmentation_scores(conf, names)
    return {key: s[key] for key in _SCORE_KEYS}


def evaluate_seeds(
    layout: Any,
    cam_dir: str | os.PathLike,
    threshold: float,
    sweep: Sequence[float] | np.ndarray = DEFAULT_SWEEP,
    *,
    progress: bool = True,
) -> dict:
    """Evaluate the seeds of a split at a fixed background threshold and over a sweep.

    Each ``<cam_dir>/<id>.npz`` is read once. Per pixel the maximum class CAM ``m`` and its
    class ``a`` are computed once; the seed at threshold ``t`` is ``a`` where ``m > t`` and
    background otherwise, exactly :func:`cam_to_seed` (ties go to background; comparison in
    float32 like the stored CAMs). A histogram over (threshold bin, gt, a) turns this into one
    confusion matrix per threshold in a single pass. Scores come from one confusion matrix over
    the whole split (IRN protocol), void (255) gt pixels ignored.

    Args:
        layout: dataset split (``ids``, ``class_names``, ``num_classes``, ``mask(id)``, ``split``).
        cam_dir: folder of the CAM files (:mod:`wsss.inference.store`).
        threshold: the fixed background threshold in [0, 1] (paper value or chosen on *val*).
        sweep: background thresholds to sweep (the swept best is an oracle on this split).
        progress: show a tqdm bar.

    Returns:
        dict (the metrics JSON contract): ``stage`` "seeds", ``split``, ``num_images``,
        ``threshold``, ``threshold_mode`` "fixed", the scores of
        :func:`~wsss.evaluation.metrics.segmentation_scores` (``miou``, ``per_class``,
        ``precision``, ``recall``, ``per_class_precision``, ``per_class_recall``, ``m_under``,
        ``m_over``, ``fpr``, ``fnr``) at ``threshold``, ``sweep`` (list of
        {"threshold", "miou"}) and ``best`` (``threshold``, ``threshold_mode`` "swept" and the
        same scores at the sweep's best threshold). mIoU etc. in %, rounded to 4 decimals.

    Raises:
        FileNotFoundError: naming the CAM file of an image that has none.
        ValueError: a CAM whose size differs from its gt mask, an invalid CAM file, a class key
            outside 1..C, a gt label outside 0..C (and not 255), an empty split or sweep.
    """
    ids, names, k = _check_layout(layout)
    sweep_list = [float(t) for t in np.asarray(sweep, dtype=np.float64).ravel()]
    if not sweep_list:
        raise ValueError("evaluate_seeds: empty threshold sweep")
    # all thresholds (sweep + fixed), compared in float32 like cam_to_seed does
    thr = np.unique(np.asarray(sweep_list + [float(threshold)], dtype=np.float32))
    n_t = len(thr)
    # hist[b, g, a]: pixels with gt g, argmax class a, and exactly b thresholds below their max
    hist = np.zeros((n_t + 1) * k * k, dtype=np.int64)

    for image_id in tqdm(ids, desc="evaluate seeds", disable=not progress, unit="img"):
        path = cam_path(cam_dir, image_id)
        rec = load_cam(path)
        gt = _gt_mask(layout, image_id, k)
        if rec.size != gt.shape:
            raise ValueError(f"{path}: CAM size {rec.size} differs from the gt mask size {gt.shape}")
        keys = np.asarray(rec.keys, dtype=np.int64)
        if keys.size and (keys.min() < 1 or keys.max() >= k):
            raise ValueError(f"{path}: class keys {keys.tolist()} outside 1..{k - 1}")
        valid = gt != 255
        g = gt[valid].astype(np.int64)
        if keys.size == 0:
            # no foreground class: background at every threshold (bin 0)
            a = np.zeros_like(g)
            b = np.zeros_like(g)
        else:
            cams = rec.high_res.astype(np.float32, copy=False)
            arg = np.argmax(cams, axis=0)
            m = np.take_along_axis(cams, arg[None], axis=0)[0]
            a = keys[arg[valid]]
            b = np.searchsorted(thr, m[valid], side="left")  # number of thresholds t with t < m
        hist += np.bincount((b * k + g) * k + a, minlength=hist.size)

    hist = hist.reshape(n_t + 1, k, k)
    # pixels whose max exceeds thr[j] are those with bin b > j: they keep class a, the rest -> 0
    above = np.cumsum(hist[::-1], axis=0)[::-1]  # above[b] = sum over bins >= b
    confs: dict[float, np.ndarray] = {}
    for j, t in enumerate(thr):
        pos = above[j + 1]  # bins > j
        conf = pos.copy()
        conf[:, 0] += (above[0] - pos).sum(axis=1)
        confs[float(t)] = conf

    def conf_at(t: float) -> np.ndarray:
        return confs[float(np.float32(t))]

    sweep_rows = []
    sweep_scores = []
    for t in sweep_list:
        s = _scores(conf_at(t), names)
        sweep_scores.append(s)
        sweep_rows.append({"threshold": round(t, 4), "miou": s["miou"]})
    best_i = _argmax_miou(sweep_rows)
    result = {
        "stage": "seeds",
        "split": getattr(layout, "split", None),
        "num_images": len(ids),
        "threshold": round(float(threshold), 4),
        "threshold_mode": "fixed",
        **_scores(conf_at(threshold), names),
        "sweep": sweep_rows,
        "best": {
            "threshold": sweep_rows[best_i]["threshold"],
            "threshold_mode": "swept",
            **sweep_scores[best_i],
        },
    }
    return result


def _argmax_miou(rows: list[dict]) -> int:
    best, best_v = 0, -np.inf
    for i, row in enumerate(rows):
        v = row["miou"]
        if v is not None and v > best_v:  # strict: ties keep the lowest-index threshold
            best, best_v = i, v
    return best


def best_threshold(result: dict) -> float:
    """The background threshold of the sweep with the highest mIoU.

    Args:
        result: a dict returned by :func:`evaluate_seeds` (uses its ``sweep`` list).

    Returns:
        the threshold (ties: the first in sweep order).

    Raises:
        ValueError: if ``result`` holds no (or an empty) ``sweep``.
    """
    rows = result.get("sweep") or []
    if not rows:
        raise ValueError("best_threshold: result holds no threshold sweep (not an evaluate_seeds result?)")
    return float(rows[_argmax_miou(rows)]["threshold"])


def sweep_edge_warning(result: dict, what: str) -> str | None:
    """A warning when the best threshold of a sweep is the sweep's first or last value.

    A best threshold at the end of the sweep means the true optimum may lie outside it
    (over-activated CAMs choose the upper end of the MSRC configs' 0-0.6 sweep), so the fixed
    threshold chosen there and the swept mIoU may understate what a wider sweep finds.

    Args:
        result: a dict returned by :func:`evaluate_seeds` (uses its ``sweep`` list).
        what: how the message names the sweep, e.g. ``"the val sweep"``.

    Returns:
        the warning text (naming the threshold, the sweep's range and ``evaluation.sweep``), or
        None when the best threshold is inside the sweep or the sweep has fewer than 3 values.

    Raises:
        ValueError: if ``result`` holds no (or an empty) ``sweep`` (as :func:`best_threshold`).
    """
    best = best_threshold(result)
    ts = [float(r["threshold"]) for r in result["sweep"]]
    if len(ts) < 3 or min(ts) < best < max(ts):
        return None
    end = "upper" if best == max(ts) else "lower"
    return (f"the best background threshold of {what} ({best:.2f}) is the {end} end of the sweep "
            f"[{min(ts):.2f}, {max(ts):.2f}]: the optimum may lie outside it; widen evaluation.sweep")


def evaluate_masks(
    layout: Any,
    mask_dir: str | os.PathLike,
    *,
    threshold: float | None = None,
    stage: str = "pseudo",
    progress: bool = True,
) -> dict:
    """Evaluate stored label maps (pseudo masks, ``<mask_dir>/<id>.png``) against the gt.

    One confusion matrix over the whole split (IRN protocol); gt void (255) is ignored and
    predicted 255 (uncertain pixels of confident labels) is excluded from the scores.

    Args:
        layout: dataset split (``ids``, ``class_names``, ``num_classes``, ``mask(id)``, ``split``).
        mask_dir: folder of palette/grey PNGs of raw indices (0..C, 255 = uncertain).
        threshold: the background threshold the masks were made with, recorded as is
            (``None`` if not applicable).
        stage: value of the ``stage`` key ("pseudo" by default).
        progress: show a tqdm bar.

    Returns:
        dict: ``stage``, ``split``, ``num_images``, ``threshold``, ``threshold_mode`` "fixed",
        the scores of :func:`~wsss.evaluation.metrics.segmentation_scores` (``miou``,
        ``per_class``, ``precision``, ``recall``, ``per_class_precision``, ``per_class_recall``,
        ``m_under``, ``m_over``, ``fpr``, ``fnr``; % except m_under/m_over) and ``coverage``:
        % of non-void gt pixels whose predicted label is not 255.

    Raises:
        FileNotFoundError: naming a missing PNG.
        ValueError: a PNG whose size differs from the gt mask, or holding labels outside
            0..C and not 255; an unreadable PNG.
    """
    ids, names, k = _check_layout(layout)
    acc = ConfusionMatrix(k)
    labelled = 0
    non_void = 0
    for image_id in tqdm(ids, desc=f"evaluate {stage}", disable=not progress, unit="img"):
        path = Path(mask_dir) / f"{image_id}.png"
        pred = read_index_png(path)
        gt = _gt_mask(layout, image_id, k)
        if pred.shape != gt.shape:
            raise ValueError(f"{path}: mask size {pred.shape} differs from the gt mask size {gt.shape}")
        bad = (pred != 255) & (pred >= k)
        if bad.any():
            raise ValueError(f"{path}: label {int(pred[bad][0])} outside 0..{k - 1} and not 255")
        valid = gt != 255
        non_void += int(valid.sum())
        labelled += int((valid & (pred != 255)).sum())
        acc.update(gt, pred)
    return {
        "stage": stage,
        "split": getattr(layout, "split", None),
        "num_images": len(ids),
        "threshold": None if threshold is None else round(float(threshold), 4),
        "threshold_mode": "fixed",
        **_scores(acc.matrix, names),
        "coverage": round(100.0 * labelled / non_void, 4) if non_void else None,
    }
