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
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from wsss.data.extras import RESERVED_NAMES
from wsss.data.transforms import normalize
from wsss.data.voc import VOCLayout

if TYPE_CHECKING:
    from wsss.data.extras import ExtraSource

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
        transform: callable ``(image uint8 (H,W,3), mask (H,W) uint8 | None, *, rng[, extras])
            -> dict`` with at least ``"image"`` (e.g. :class:`~wsss.data.transforms.TrainTransform`,
            which also takes ``extras=`` and returns ``"extras"``); None = plain
            :func:`~wsss.data.transforms.normalize`, full image.
        with_mask: also read the ground-truth mask and pass it to the transform (needs
            ``layout.has_masks``); off by default since image-level training never sees masks.
        skip_unlabelled: leave out images whose label has no foreground class (MSRC train has
            61 such images; IRN/VOC has none). Kept by default: they are negatives for every class.
        extras: ``{name: ExtraSource}`` (:mod:`wsss.data.extras`): per-image integer maps loaded
            for every item and augmented jointly with the image (the transform gets
            ``extras={name: (map, source.pad_value)}``: same nearest rescale, flip and crop,
            padding = ``pad_value``). A name may not be one of
            :data:`wsss.data.extras.RESERVED_NAMES`.

    Item:
        ``{"image": float32 (3, S, S), "label": float32 (C,) multi-hot, "id": str}`` plus
        ``"mask"`` int64 (S, S) (255 = ignore/padding) and ``"valid"`` float32 (S, S) when the
        transform returns them (not None), plus ``item[name]`` int64 (S, S) for every extra
        (full image size (H, W) when ``transform`` is None).

    Raises:
        ValueError: ``<root>: ...`` with_mask on a split without masks, no labelled image with
            skip_unlabelled, a reserved or non-string extra name, an extra that is not an
            ExtraSource-like object; at item time, an extra map whose size differs from the
            image (``<image id>: extra input '<name>' ...``).
        FileNotFoundError: at item time, an extra map that does not exist (named by the source).
    """

    def __init__(
        self,
        layout: VOCLayout,
        transform: Callable[..., dict[str, Any]] | None = None,
        *,
        with_mask: bool = False,
        skip_unlabelled: bool = False,
        extras: Mapping[str, "ExtraSource"] | None = None,
    ) -> None:
        if with_mask and not layout.has_masks:
            raise ValueError(f"{layout.root}: with_mask=True but split {layout.split!r} has no masks")
        self.layout = layout
        self.transform = transform
        self.with_mask = with_mask
        self.extras: dict[str, ExtraSource] = dict(extras or {})
        for name, src in self.extras.items():
            if not isinstance(name, str) or not name or name in RESERVED_NAMES:
                raise ValueError(f"{layout.root}: extra input name {name!r} is empty or reserved ({list(RESERVED_NAMES)})")
            if not callable(getattr(src, "load", None)) or not hasattr(src, "pad_value"):
                raise ValueError(f"{layout.root}: extra input '{name}' is not an ExtraSource (needs load() and pad_value)")
        self._labels = torch.from_numpy(layout.labels_matrix())
        rows = range(len(layout))
        if skip_unlabelled:
            rows = [i for i in rows if float(self._labels[i].sum()) > 0]
            if not rows:
                raise ValueError(f"{layout.root}: split {layout.split!r} has no image with a foreground class")
        self.rows = list(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def _load_extras(self, image_id: str, shape: tuple[int, int]) -> dict[str, tuple[np.ndarray, int]]:
        out = {}
        for name, src in self.extras.items():
            arr = np.asarray(src.load(image_id))
            if arr.shape != tuple(shape):
                raise ValueError(f"{image_id}: extra input '{name}' has size {arr.shape}, the image {tuple(shape)}")
            out[name] = (arr, int(src.pad_value))
        return out

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = self.rows[index]
        image_id = self.layout.ids[index]
        image = self.layout.image(image_id)
        mask = self.layout.mask(image_id) if self.with_mask else None
        extras = self._load_extras(image_id, image.shape[:2]) if self.extras else None
        item: dict[str, Any] = {"label": self._labels[index].clone(), "id": image_id}
        if self.transform is None:
            item["image"] = normalize(image)
            if mask is not None:
                item["mask"] = torch.from_numpy(mask.astype(np.int64))
            for name, (arr, _) in (extras or {}).items():
                item[name] = torch.from_numpy(arr.astype(np.int64))
            return item
        seed = int(torch.randint(0, 2**63 - 1, (1,), dtype=torch.int64).item())
        rng = np.random.default_rng([seed, index])
        if extras:
            out = self.transform(image, mask, rng=rng, extras=extras)
        else:
            out = self.transform(image, mask, rng=rng)
        item["image"] = out["image"]
        for key in ("mask", "valid"):
            if out.get(key) is not None:
                item[key] = out[key]
        for name in self.extras:
            item[name] = out["extras"][name]
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
