"""torch Datasets over a :class:`~wsss.data.voc.VOCLayout`.

- :class:`ClassificationDataset`: augmented, normalised crops + multi-hot labels for training
  the classifier that yields CAMs.
- :class:`ImageDataset`: raw uint8 images + labels for CAM inference / evaluation, batched
  with :func:`collate_keep_lists` (images of different sizes stay a list).

Randomness: ``ClassificationDataset.__getitem__`` draws a 63-bit seed from torch's default
generator and builds ``numpy.random.default_rng([seed, index])``. In DataLoader workers
torch's generator is seeded by the loader (``base_seed + worker_id``, new base seed every
epoch), in the main process by ``torch.manual_seed``; so augmentation is reproducible, differs
between workers and epochs, and never repeats across forked workers (the classic
``np.random`` fork bug). :func:`worker_init_fn` additionally seeds ``random``/``np.random``
for third-party code.
"""

from __future__ import annotations

import random
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from wsss.data.transforms import normalize
from wsss.data.voc import VOCLayout

__all__ = ["ClassificationDataset", "ImageDataset", "collate_keep_lists", "worker_init_fn"]


def worker_init_fn(worker_id: int) -> None:
    """Seed Python ``random`` and legacy ``np.random`` from ``torch.initial_seed()`` in a worker."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


class ClassificationDataset(Dataset):
    """Training samples for the CAM classifier.

    Args:
        layout: the split to read.
        transform: callable ``(image uint8 (H,W,3), mask (H,W) uint8 | None, *, rng) -> dict``
            with at least ``"image"`` (e.g. :class:`~wsss.data.transforms.TrainTransform`);
            None = plain :func:`~wsss.data.transforms.normalize`, full image.
        with_mask: also read the ground-truth mask and pass it to the transform (needs
            ``layout.has_masks``); off by default since image-level training never sees masks.
        skip_unlabelled: leave out images whose label has no foreground class (MSRC train has
            61 such images; IRN/VOC has none). Kept by default: they are negatives for every class.

    Item:
        ``{"image": float32 (3, S, S), "label": float32 (C,) multi-hot, "id": str}`` plus
        ``"mask"`` int64 (S, S) (255 = ignore/padding) and ``"valid"`` float32 (S, S) when the
        transform returns them (not None).
    """

    def __init__(
        self,
        layout: VOCLayout,
        transform: Callable[..., dict[str, Any]] | None = None,
        *,
        with_mask: bool = False,
        skip_unlabelled: bool = False,
    ) -> None:
        if with_mask and not layout.has_masks:
            raise ValueError(f"{layout.root}: with_mask=True but split {layout.split!r} has no masks")
        self.layout = layout
        self.transform = transform
        self.with_mask = with_mask
        self._labels = torch.from_numpy(layout.labels_matrix())
        rows = range(len(layout))
        if skip_unlabelled:
            rows = [i for i in rows if float(self._labels[i].sum()) > 0]
            if not rows:
                raise ValueError(f"{layout.root}: split {layout.split!r} has no image with a foreground class")
        self.rows = list(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = self.rows[index]
        image_id = self.layout.ids[index]
        image = self.layout.image(image_id)
        mask = self.layout.mask(image_id) if self.with_mask else None
        item: dict[str, Any] = {"label": self._labels[index].clone(), "id": image_id}
        if self.transform is None:
            item["image"] = normalize(image)
            if mask is not None:
                item["mask"] = torch.from_numpy(mask.astype(np.int64))
            return item
        seed = int(torch.randint(0, 2**63 - 1, (1,), dtype=torch.int64).item())
        rng = np.random.default_rng([seed, index])
        out = self.transform(image, mask, rng=rng)
        item["image"] = out["image"]
        for key in ("mask", "valid"):
            if out.get(key) is not None:
                item[key] = out[key]
        return item


class ImageDataset(Dataset):
    """Un-augmented images for inference (CAM extraction, evaluation).

    Args:
        layout: the split to read.
        with_mask: also return the ground-truth mask.

    Item:
        ``{"image": uint8 ndarray (H, W, 3) RGB, "label": float32 ndarray (C,) multi-hot,
        "id": str}`` plus ``"mask"`` uint8 ndarray (H, W) (raw indices, 255 void) if
        ``with_mask``. Use ``collate_fn=ImageDataset.collate`` (= :func:`collate_keep_lists`).
    """

    def __init__(self, layout: VOCLayout, *, with_mask: bool = False) -> None:
        if with_mask and not layout.has_masks:
            raise ValueError(f"{layout.root}: with_mask=True but split {layout.split!r} has no masks")
        self.layout = layout
        self.with_mask = with_mask
        self._labels = layout.labels_matrix()

    def __len__(self) -> int:
        return len(self.layout)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_id = self.layout.ids[index]
        item: dict[str, Any] = {
            "image": self.layout.image(image_id),
            "label": self._labels[index].copy(),
            "id": image_id,
        }
        if self.with_mask:
            item["mask"] = self.layout.mask(image_id)
        return item

    @staticmethod
    def collate(batch: Sequence[dict[str, Any]]) -> dict[str, list[Any]]:
        """See :func:`collate_keep_lists`."""
        return collate_keep_lists(batch)


def collate_keep_lists(batch: Sequence[dict[str, Any]]) -> dict[str, list[Any]]:
    """Collate dict samples into a dict of lists (no stacking; images may differ in size).

    ``[{"image": a, "id": "x"}, {"image": b, "id": "y"}] -> {"image": [a, b], "id": ["x", "y"]}``.
    """
    if not batch:
        return {}
    keys = list(batch[0].keys())
    return {k: [sample[k] for sample in batch] for k in keys}
