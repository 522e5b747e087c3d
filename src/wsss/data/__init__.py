"""wsss.data: VOC-layout datasets, augmentation, downloads and COCO conversion.

- :mod:`wsss.data.voc` (no torch): ``DatasetError``, ``VOC_CLASSES``, ``VOCLayout``.
- :mod:`wsss.data.transforms`: ``normalize``, ``TrainTransform`` (IRN / Puzzle-CAM recipe).
- :mod:`wsss.data.datasets`: ``ClassificationDataset``, ``ImageDataset``, ``collate_keep_lists``.
- :mod:`wsss.data.extras`: ``ExtraSource``, ``LabelDirSource`` (per-image extra training
  inputs, augmented jointly with the image).
- :mod:`wsss.data.download`: ``download_voc12``, ``download_sbd``, ``main_download``.
- :mod:`wsss.data.coco`: ``coco_to_voc_layout`` (needs pycocotools).

Names are imported lazily, so ``from wsss.data import VOCLayout`` does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DatasetError": "voc",
    "VOC_CLASSES": "voc",
    "VOCLayout": "voc",
    "class_file_stem": "voc",
    "IMAGENET_MEAN": "transforms",
    "IMAGENET_STD": "transforms",
    "normalize": "transforms",
    "denormalize": "transforms",
    "TrainTransform": "transforms",
    "ClassificationDataset": "datasets",
    "ImageDataset": "datasets",
    "collate_keep_lists": "datasets",
    "worker_init_fn": "datasets",
    "ExtraSource": "extras",
    "LabelDirSource": "extras",
    "download_voc12": "download",
    "download_sbd": "download",
    "main_download": "download",
    "coco_to_voc_layout": "coco",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'wsss.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"wsss.data.{mod}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
