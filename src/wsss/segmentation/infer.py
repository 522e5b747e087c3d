"""Inference and evaluation of the segmentation network.

- :func:`predict_probs`: softmax probabilities of one image at its own size, single-scale or
  multi-scale + flip (the average of the views' softmax probabilities, each resized to the
  image size: DeepLab MSC / P-NOC V3+ test-time augmentation).
- :func:`crf_postprocess`: the DeepLab dense CRF on those probabilities (kazuto1011/deeplab-pytorch
  ``libs/utils/crf.py`` / ``configs/voc12.yaml``: 10 mean-field iterations, unary = -log softmax,
  Gaussian kernel sxy 1 / compat 3, bilateral kernel sxy 67 / srgb 3 / compat 4; SSC and P-NOC
  use the same), through :func:`wsss.refine.crf.crf_from_probs` (pydensecrf2, lazy import).
- :func:`evaluate_segmentation`: predictions of a whole split scored against its ground truth
  with the protocol and the keys of :func:`wsss.evaluation.seeds.evaluate_masks` (one confusion
  matrix over the split, void 255 ignored); :func:`evaluate_segmentation_variants` scores
  several variants (single-scale, multi-scale + flip, + CRF) in one pass over the split.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from wsss.data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize
from wsss.evaluation.metrics import ConfusionMatrix, segmentation_scores
from wsss.io import save_palette_png
from wsss.refine.crf import CRFParams, crf_from_probs

__all__ = ["DEEPLAB_CRF", "SCORE_KEYS", "predict_probs", "crf_postprocess", "evaluate_segmentation",
           "evaluate_segmentation_variants"]

#: DeepLab CRF (kazuto1011/deeplab-pytorch configs/voc12.yaml CRF block: ITER_MAX 10, POS_W 3,
#: POS_XY_STD 1, BI_W 4, BI_XY_STD 67, BI_RGB_STD 3); ``gt_prob`` unused (softmax unary).
DEEPLAB_CRF = CRFParams(iterations=10, gaussian_sxy=1.0, gaussian_compat=3.0, bilateral_sxy=67.0,
                        bilateral_srgb=3.0, bilateral_compat=4.0)

#: score keys of :func:`wsss.evaluation.seeds.evaluate_masks` taken from ``segmentation_scores``
SCORE_KEYS = ("miou", "per_class", "precision", "recall", "per_class_precision", "per_class_recall",
              "m_under", "m_over", "fpr", "fnr")


def _device_of(net: nn.Module) -> torch.device:
    p = next(net.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def predict_probs(
    net: nn.Module,
    image: np.ndarray,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    device: torch.device | str | None = None,
) -> np.ndarray:
    """Class probabilities of one image, at the image's own size.

    For each scale s the normalised image is resized bilinearly to (round(sH), round(sW))
    (at least 1 px), run through ``net`` (with its horizontal flip in the same batch when
    ``flip``; the flipped output is flipped back), softmax over classes, resized bilinearly to
    (H, W); the result is the mean over all views. Bilinear resizing is a convex combination, so
    every pixel's probabilities still sum to 1.

    Args:
        net: ``net(x (B, 3, h, w)) -> logits (B, K, h, w)`` (a
            :class:`~wsss.segmentation.model.SegmentationNet`, any input size). Put in eval mode
            by the caller (this function does not change the mode).
        image: uint8 (H, W, 3) RGB.
        scales: positive resize factors (DeepLab MSC / P-NOC: 0.5-2.0).
        flip: also average the horizontal flip of every scale.
        mean, std: the normalisation the network was trained with (0..1 scale).
        device: where to run (default: the device of ``net``'s parameters).

    Returns:
        float32 (K, H, W) probabilities in [0, 1], summing to 1 over K at every pixel.

    Raises:
        ValueError: image not uint8 (H, W, 3); empty or non-positive ``scales``; logits whose
            spatial size differs from the input.
    """
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"predict_probs: image must be uint8 (H, W, 3), got {img.dtype} {img.shape}")
    scales = [float(s) for s in scales]
    if not scales or min(scales) <= 0:
        raise ValueError(f"predict_probs: scales must be a non-empty list of positive numbers, got {scales}")
    dev = torch.device(device) if device is not None else _device_of(net)
    h, w = img.shape[:2]
    x0 = normalize(img, mean, std).unsqueeze(0).to(dev)
    total: torch.Tensor | None = None
    views = 0
    for s in scales:
        size = (max(1, round(h * s)), max(1, round(w * s)))
        x = x0 if size == (h, w) else F.interpolate(x0, size=size, mode="bilinear", align_corners=False)
        if flip:
            x = torch.cat([x, x.flip(-1)], dim=0)
        logits = net(x).float()
        if logits.shape[-2:] != x.shape[-2:]:
            raise ValueError(f"predict_probs: network returned logits of size {tuple(logits.shape[-2:])} "
                             f"for an input of size {tuple(x.shape[-2:])}")
        prob = torch.softmax(logits, dim=1)
        if flip:
            prob = torch.cat([prob[:1], prob[1:].flip(-1)], dim=0)
        if prob.shape[-2:] != (h, w):
            prob = F.interpolate(prob, size=(h, w), mode="bilinear", align_corners=False)
        part = prob.sum(dim=0)
        total = part if total is None else total + part
        views += prob.shape[0]
    assert total is not None
    return (total / views).cpu().numpy().astype(np.float32, copy=False)


def crf_postprocess(image: np.ndarray, probs: np.ndarray, params: CRFParams = DEEPLAB_CRF) -> np.ndarray:
    """Label map after the DeepLab dense CRF on softmax probabilities.

    Args:
        image: uint8 (H, W, 3) RGB.
        probs: float (K, H, W) probabilities (from :func:`predict_probs`).
        params: CRF parameters; default :data:`DEEPLAB_CRF` (kazuto1011/deeplab-pytorch).

    Returns:
        uint8 (H, W) labels in 0..K-1 (argmax of the CRF marginals).

    Raises:
        ValueError: shapes that do not match, K > 255, non-finite or negative probabilities.
        ImportError: pydensecrf2 missing (``pip install "wsss[crf]"``).
    """
    p = np.asarray(probs)
    if p.ndim != 3:
        raise ValueError(f"crf_postprocess: probs must be (K, H, W), got shape {p.shape}")
    if p.shape[0] > 255:
        raise ValueError(f"crf_postprocess: {p.shape[0]} classes do not fit a uint8 label map")
    q = crf_from_probs(image, p, params)
    return np.argmax(q, axis=0).astype(np.uint8)


def evaluate_segmentation(
    net: nn.Module,
    layout: Any,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    crf: bool = False,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    *,
    device: torch.device | str | None = None,
    save_dir: str | os.PathLike | None = None,
    crf_params: CRFParams = DEEPLAB_CRF,
    stage: str = "segmentation",
    progress: bool = True,
) -> dict:
    """Segment every image of a split and score the predictions against its ground truth.

    One confusion matrix over the whole split (IRN protocol, :mod:`wsss.evaluation.metrics`);
    void (255) gt pixels are ignored. ``net`` is put in eval mode. To score several test-time
    variants at once (probabilities computed once per image), see
    :func:`evaluate_segmentation_variants`.

    Args:
        net: the segmentation network (see :func:`predict_probs`).
        layout: dataset split with ground truth (``ids``, ``class_names``, ``num_classes``,
            ``image(id)`` uint8 (H, W, 3), ``mask(id)`` uint8 (H, W), ``split``), e.g.
            :class:`wsss.data.voc.VOCLayout`.
        scales, flip: test-time augmentation (:func:`predict_probs`).
        crf: post-process with the dense CRF (:func:`crf_postprocess`).
        mean, std: the training normalisation.
        device: where to run (default: ``net``'s device).
        save_dir: if given, each prediction is written as ``<save_dir>/<id>.png`` (VOC palette).
        crf_params: CRF parameters (:data:`DEEPLAB_CRF`).
        stage: value of the ``stage`` key.
        progress: show a tqdm bar.

    Returns:
        dict with the keys of :func:`wsss.evaluation.seeds.evaluate_masks`: ``stage``, ``split``,
        ``num_images``, ``threshold`` (None: no background threshold), ``threshold_mode``
        ("fixed"), the scores (``miou``, ``per_class``, ``precision``, ``recall``,
        ``per_class_precision``, ``per_class_recall``, ``m_under``, ``m_over``, ``fpr``,
        ``fnr``; % except m_under / m_over, 4 decimals) and ``coverage`` (100.0: every pixel is
        predicted; None without non-void gt pixels); plus ``scales`` (list), ``flip``, ``crf``
        (bool) and ``crf_params`` (dict, or None without CRF).

    Raises:
        ValueError: an empty split, class names that do not match ``num_classes``, a network
            with a different number of outputs, a gt mask whose size differs from its image or
            holding labels outside 0..K-1 and not 255.
        DatasetError: an unreadable image / mask (from the layout).
        ImportError: ``crf`` without pydensecrf2.
    """
    variant = {"scales": scales, "flip": flip, "crf": crf, "save_dir": save_dir}
    return evaluate_segmentation_variants(net, layout, {stage: variant}, mean, std, device=device,
                                          crf_params=crf_params, progress=progress)[stage]


def evaluate_segmentation_variants(
    net: nn.Module,
    layout: Any,
    variants: Mapping[str, Mapping[str, Any]],
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    *,
    device: torch.device | str | None = None,
    crf_params: CRFParams = DEEPLAB_CRF,
    progress: bool = True,
) -> dict[str, dict]:
    """Score several test-time variants of the network on one split in a single pass.

    Each image is read once; its probabilities are computed once per distinct
    (``scales``, ``flip``) and shared by the variants that differ only in ``crf`` (e.g.
    multi-scale + flip with and without CRF).

    Args:
        net, layout, mean, std, device, crf_params, progress: as :func:`evaluate_segmentation`.
        variants: ``name -> {"scales": [...] (default [1.0]), "flip": bool (False), "crf": bool
            (False), "save_dir": folder or None}``; ``name`` becomes the result's ``stage``.
            Typical: ``{"single": {}, "multiscale": {"scales": [0.5, 1, 1.5, 2], "flip": True},
            "multiscale_crf": {"scales": [0.5, 1, 1.5, 2], "flip": True, "crf": True}}``.

    Returns:
        ``name -> result`` with the keys of :func:`evaluate_segmentation`.

    Raises:
        ValueError: no variant, an unknown variant key, and the errors of
            :func:`evaluate_segmentation`.
    """
    if not variants:
        raise ValueError("evaluate_segmentation_variants: no variant to evaluate")
    specs: dict[str, dict[str, Any]] = {}
    for name, v in variants.items():
        unknown = sorted(set(v) - {"scales", "flip", "crf", "save_dir"})
        if unknown:
            raise ValueError(f"evaluate_segmentation_variants: variant {name!r} has unknown key(s) {unknown}")
        sc = tuple(float(s) for s in v.get("scales", (1.0,)))
        if not sc or min(sc) <= 0:
            raise ValueError(f"evaluate_segmentation_variants: variant {name!r} needs positive scales, got {list(sc)}")
        specs[name] = {"scales": sc, "flip": bool(v.get("flip", False)), "crf": bool(v.get("crf", False)),
                       "save_dir": v.get("save_dir")}
    ids = list(layout.ids)
    names = list(layout.class_names)
    k = int(layout.num_classes) + 1
    if len(names) != k:
        raise ValueError(f"layout: {len(names)} class names but num_classes = {layout.num_classes}")
    if not ids:
        raise ValueError(f"layout: split {getattr(layout, 'split', '?')!r} holds no images")
    net_k = getattr(net, "num_classes", None)
    if net_k is not None and int(net_k) != k:
        raise ValueError(f"evaluate_segmentation: network predicts {net_k} classes, the dataset has {k} (with background)")
    net.eval()
    accs = {name: ConfusionMatrix(k) for name in specs}
    non_void = 0
    desc = "evaluate " + "/".join(specs)
    for image_id in tqdm(ids, desc=desc, disable=not progress, unit="img"):
        image = layout.image(image_id)
        gt = np.asarray(layout.mask(image_id))
        if gt.shape != image.shape[:2]:
            raise ValueError(f"{image_id}: ground-truth mask size {gt.shape} differs from the image size {image.shape[:2]}")
        bad = (gt != 255) & (gt >= k)
        if bad.any():
            raise ValueError(f"{image_id}: ground-truth mask holds label {int(gt[bad][0])} outside 0..{k - 1} and not 255")
        non_void += int((gt != 255).sum())
        cache: dict[tuple, np.ndarray] = {}
        for name, v in specs.items():
            key = (v["scales"], v["flip"])
            if key not in cache:
                cache[key] = predict_probs(net, image, v["scales"], v["flip"], mean, std, device)
                if cache[key].shape[0] != k:
                    raise ValueError(f"evaluate_segmentation: network predicts {cache[key].shape[0]} classes, "
                                     f"the dataset has {k}")
            probs = cache[key]
            pred = crf_postprocess(image, probs, crf_params) if v["crf"] else np.argmax(probs, axis=0).astype(np.uint8)
            accs[name].update(gt, pred)
            if v["save_dir"] is not None:
                save_palette_png(Path(v["save_dir"]) / f"{image_id}.png", pred)
    out: dict[str, dict] = {}
    for name, v in specs.items():
        scores = segmentation_scores(accs[name].matrix, names)
        out[name] = {
            "stage": name,
            "split": getattr(layout, "split", None),
            "num_images": len(ids),
            "threshold": None,
            "threshold_mode": "fixed",
            **{key: scores[key] for key in SCORE_KEYS},
            "coverage": 100.0 if non_void else None,
            "scales": list(v["scales"]),
            "flip": v["flip"],
            "crf": v["crf"],
            "crf_params": crf_params.to_dict() if v["crf"] else None,
        }
    return out
