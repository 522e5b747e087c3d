"""Pseudo masks from stored CAMs: CRF-refined seeds and confident (fg / bg / ignore) labels.

- *Dense* pseudo mask: the seed at the background threshold (IRN ``cam_eval_thres``),
  refined by a dense CRF with unary from labels.
- *Confident* labels (AffinityNet, Ahn & Kwak 2018; IRN ``cam_to_ir_label``; GSLM's confidence
  CAM, Eq. 3, there with Gaussian compat 10): two CRF passes over the seeds at a high
  (``fg_threshold`` 0.30) and a low (``bg_threshold`` 0.05) background threshold; foreground
  comes from the first, background from the second, the rest is 255 (ignored).

Masks are written as VOC palette PNGs (``<out_dir>/<id>.png``, raw indices 0..C, 255 =
uncertain), atomically, so an interrupted run can be resumed.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

from wsss.inference.store import CamRecord, cam_path, load_cam
from wsss.io import save_palette_png
from wsss.refine.crf import CRFParams, crf_from_labels

__all__ = ["dense_pseudo_mask", "confident_labels", "make_pseudo_masks", "CONFLICT_RULES"]

#: How :func:`confident_labels` resolves pixels the fg pass labels as a class while the bg
#: pass labels them background (possible only after the CRF moves boundaries).
CONFLICT_RULES = ("keep_fg", "background", "ignore")


def _local_seed(record: CamRecord, threshold: float) -> np.ndarray:
    """argmax over [background = threshold] + the record's CAMs: (H, W) int64 in 0..K."""
    h, w = record.size
    bg = np.full((1, h, w), threshold, dtype=np.float32)
    stacked = np.concatenate([bg, np.asarray(record.high_res, dtype=np.float32)], axis=0)
    return np.argmax(stacked, axis=0).astype(np.int64)


def _lut(record: CamRecord) -> np.ndarray:
    keys = np.asarray(record.keys, dtype=np.int64)
    if keys.size and (keys.min() < 1 or keys.max() > 254):
        raise ValueError(f"CAM record: class keys {keys.tolist()} outside 1..254")
    return np.concatenate([[0], keys]).astype(np.uint8)


def _check_image(image: np.ndarray, record: CamRecord) -> None:
    shape = np.shape(image)
    if len(shape) != 3 or tuple(shape[:2]) != record.size:
        raise ValueError(f"pseudo mask: image shape {shape} does not match the CAM size {record.size}")


def dense_pseudo_mask(
    image: np.ndarray, record: CamRecord, threshold: float, params: CRFParams | None = None
) -> np.ndarray:
    """CRF-refined seed of one image (IRN: seed at ``cam_eval_thres``, then dense CRF).

    Args:
        image: (H, W, 3) uint8 RGB.
        record: the image's CAMs (``keys`` (K,) in 1..C, ``high_res`` (K, H, W) in [0, 1]).
        threshold: background threshold; the seed is background unless some CAM is > it.
        params: CRF parameters (IRN defaults).

    Returns:
        (H, W) uint8 label map in dataset indices (0 = background, 1..C). The CRF runs over
        the image's local label set [background] + keys; no key -> all background.

    Raises:
        ValueError: image and CAM sizes differ. ImportError: pydensecrf2 missing.
    """
    _check_image(image, record)
    h, w = record.size
    if len(record.keys) == 0:
        return np.zeros((h, w), dtype=np.uint8)
    lut = _lut(record)
    seed = _local_seed(record, threshold)
    return lut[crf_from_labels(image, seed, len(lut), params)]


def confident_labels(
    image: np.ndarray,
    record: CamRecord,
    fg_threshold: float = 0.30,
    bg_threshold: float = 0.05,
    params: CRFParams | None = None,
    *,
    conflict: str = "keep_fg",
) -> np.ndarray:
    """Confident labels with an uncertain band (AffinityNet / IRN; GSLM confidence CAM, Eq. 3).

    fg = CRF(argmax of [fg_threshold] + CAMs), bg = CRF(argmax of [bg_threshold] + CAMs), both
    with unary from labels over the local label set [background] + keys. Then
    ``conf = fg``; ``conf[fg == 0] = 255`` (not confidently foreground); background where bg
    says background. Pixels where fg says a class but bg says background (only possible
    after CRF) follow ``conflict``:

    - ``"keep_fg"`` (default, IRN/GSLM authors' code ``conf[bg + fg == 0] = 0``): keep fg's class;
    - ``"background"``: ``conf[bg == 0] = 0`` (the bg pass wins);
    - ``"ignore"``: 255 (the two passes disagree).

    Without a CRF effect (e.g. ``iterations=0``) the three coincide: fg's foreground is a
    subset of bg's, so the result is the class where max CAM > fg_threshold, 0 where
    max CAM <= bg_threshold and 255 in between.

    Args:
        image: (H, W, 3) uint8 RGB.
        record: the image's CAMs.
        fg_threshold: background score of the foreground pass (IRN ``conf_fg_thres`` 0.30).
        bg_threshold: background score of the background pass (IRN ``conf_bg_thres`` 0.05).
        params: CRF parameters (IRN defaults; GSLM uses ``gaussian_compat=10``).
        conflict: one of :data:`CONFLICT_RULES`.

    Returns:
        (H, W) uint8: 0 background, 1..C class, 255 uncertain. No key -> all background.

    Raises:
        ValueError: bg_threshold > fg_threshold, unknown ``conflict``, size mismatch.
        ImportError: pydensecrf2 missing.
    """
    if bg_threshold > fg_threshold:
        raise ValueError(f"confident_labels: bg_threshold {bg_threshold} > fg_threshold {fg_threshold}")
    if conflict not in CONFLICT_RULES:
        raise ValueError(f"confident_labels: conflict must be one of {CONFLICT_RULES}, got {conflict!r}")
    _check_image(image, record)
    h, w = record.size
    if len(record.keys) == 0:
        return np.zeros((h, w), dtype=np.uint8)
    lut = _lut(record)
    n = len(lut)
    fg = lut[crf_from_labels(image, _local_seed(record, fg_threshold), n, params)]
    bg = lut[crf_from_labels(image, _local_seed(record, bg_threshold), n, params)]
    conf = fg.copy()
    conf[fg == 0] = 255
    if conflict == "keep_fg":
        conf[(fg == 0) & (bg == 0)] = 0
    elif conflict == "background":
        conf[bg == 0] = 0
    else:  # ignore
        conf[(fg == 0) & (bg == 0)] = 0
        conf[(fg != 0) & (bg == 0)] = 255
    return conf


# ---------------------------------------------------------------------------------------
# Batch generation over a split (multiprocessing, resumable)
# ---------------------------------------------------------------------------------------

_KINDS = ("dense", "confident")
_STATE: dict[str, Any] = {}


def _init_worker(layout: Any, options: dict[str, Any]) -> None:
    _STATE["layout"] = layout
    _STATE["options"] = options


def _make_one(task: tuple[str, str, str]) -> str:
    """Worker: read image (via the layout) and CAM (from its path), write the PNG. Top-level for spawn."""
    image_id, cam_file, out_file = task
    layout = _STATE["layout"]
    o = _STATE["options"]
    record = load_cam(cam_file)
    image = layout.image(image_id)
    if tuple(np.shape(image)[:2]) != record.size:
        raise ValueError(f"{cam_file}: CAM size {record.size} differs from the image size {np.shape(image)[:2]}")
    params = CRFParams.from_dict(o["params"])
    if o["kind"] == "dense":
        mask = dense_pseudo_mask(image, record, o["threshold"], params)
    else:
        mask = confident_labels(
            image, record, o["fg_threshold"], o["bg_threshold"], params, conflict=o["conflict"]
        )
    save_palette_png(out_file, mask)
    return image_id


def make_pseudo_masks(
    layout: Any,
    cam_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    kind: str = "dense",
    threshold: float | None = None,
    fg_threshold: float = 0.30,
    bg_threshold: float = 0.05,
    params: CRFParams | None = None,
    conflict: str = "keep_fg",
    workers: int | None = None,
    ids: Sequence[str] | None = None,
    progress: bool = True,
) -> list[str]:
    """Write a pseudo mask ``<out_dir>/<id>.png`` for every image of a split, in parallel.

    Args:
        layout: dataset split (picklable; ``ids``, ``image(id)``).
        cam_dir: folder of ``<id>.npz`` CAM files.
        out_dir: output folder (created).
        kind: ``"dense"`` (:func:`dense_pseudo_mask`) or ``"confident"`` (:func:`confident_labels`).
        threshold: background threshold for ``"dense"`` (required there; no silent default).
        fg_threshold, bg_threshold, conflict: for ``"confident"``.
        params: CRF parameters (IRN defaults).
        workers: processes (spawn context); None = ``os.cpu_count()``; 1 runs in this process.
        ids: subset of ``layout.ids`` (default all).
        progress: show a tqdm bar.

    Returns:
        the ids whose PNG was written by this call, in ``layout`` order; ids whose PNG already
        exists are skipped (resumable), so a finished run returns [].

    Raises:
        ValueError: unknown ``kind``, missing ``threshold`` for dense, bad thresholds.
        FileNotFoundError: naming the first missing CAM file (checked before any work).
    """
    if kind not in _KINDS:
        raise ValueError(f"make_pseudo_masks: kind must be one of {_KINDS}, got {kind!r}")
    if kind == "dense" and threshold is None:
        raise ValueError("make_pseudo_masks: kind='dense' needs the background threshold")
    if kind == "confident":
        if bg_threshold > fg_threshold:
            raise ValueError(f"make_pseudo_masks: bg_threshold {bg_threshold} > fg_threshold {fg_threshold}")
        if conflict not in CONFLICT_RULES:
            raise ValueError(f"make_pseudo_masks: conflict must be one of {CONFLICT_RULES}, got {conflict!r}")
    params = params or CRFParams()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    all_ids = list(layout.ids) if ids is None else list(ids)

    tasks: list[tuple[str, str, str]] = []
    for image_id in all_ids:
        png = out / f"{image_id}.png"
        if png.is_file():
            continue
        cam = cam_path(cam_dir, image_id)
        if not cam.is_file():
            raise FileNotFoundError(f"{cam}: CAM file not found (run the inference stage first)")
        tasks.append((image_id, str(cam), str(png)))
    if not tasks:
        return []

    options = {
        "kind": kind,
        "threshold": None if threshold is None else float(threshold),
        "fg_threshold": float(fg_threshold),
        "bg_threshold": float(bg_threshold),
        "conflict": conflict,
        "params": params.to_dict(),
    }
    n_workers = max(1, min(int(workers or os.cpu_count() or 1), len(tasks)))
    done: set[str] = set()
    bar = tqdm(total=len(tasks), desc=f"pseudo masks ({kind})", disable=not progress, unit="img")
    try:
        if n_workers == 1:
            saved = dict(_STATE)
            _init_worker(layout, options)
            try:
                for task in tasks:
                    done.add(_make_one(task))
                    bar.update()
            finally:
                _STATE.clear()
                _STATE.update(saved)
        else:
            ctx = mp.get_context("spawn")
            with ctx.Pool(n_workers, initializer=_init_worker, initargs=(layout, options)) as pool:
                for image_id in pool.imap_unordered(_make_one, tasks, chunksize=1):
                    done.add(image_id)
                    bar.update()
    finally:
        bar.close()
    return [i for i in all_ids if i in done]
