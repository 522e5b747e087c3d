"""Per-image extra training inputs: dense integer maps delivered beside image and label.

A method that needs more than image + label per sample (GSLM's confidence CAM, superpixels
for CPN / SSC, saliency hints for C2AM-H, pseudo masks for segmentation) declares the names
in its LightningModule class (``extra_inputs = ("confidence",)``); the recipe that trains it
passes one :class:`ExtraSource` per name to :func:`wsss.training.train` (``extras=``), and
:class:`~wsss.data.datasets.ClassificationDataset` loads each map per image and sends it
through the *same* geometric augmentation as the image
(:class:`~wsss.data.transforms.TrainTransform`: nearest-neighbour rescale, the same flip, the
same crop, padding = the source's :attr:`ExtraSource.pad_value`). Batches then carry
``batch[name]``: int64 (B, S, S).

- :class:`ExtraSource`: the abstract interface (``name``, ``load``, ``pad_value``,
  ``fingerprint``).
- :class:`LabelDirSource`: ``<dir>/<id>.png`` index PNGs (palette or grey; raw indices, the
  palette ignored), padding 255 = ignore. Its fingerprint hashes the PNG bytes, so a training
  stage reuses its outputs only when the maps are byte-identical.
"""

from __future__ import annotations

import abc
import hashlib
import os
from pathlib import Path

import numpy as np

from wsss.io import read_index_png

__all__ = ["ExtraSource", "LabelDirSource", "RESERVED_NAMES"]

#: item keys of :class:`~wsss.data.datasets.ClassificationDataset` an extra may not take
RESERVED_NAMES: tuple[str, ...] = ("image", "label", "id", "mask", "valid")


class ExtraSource(abc.ABC):
    """One per-image dense integer map (abstract).

    Subclasses provide:

    - ``name``: short human-readable name used in error messages (str);
    - ``pad_value``: the value of crop padding (int; 255 = ignore for label maps);
    - :meth:`load`: the map of one image, (H, W) integer array of the image's size;
    - :meth:`fingerprint`: a string that changes whenever the maps change (it enters the
      training stage's run fingerprint, :func:`wsss.stages.stage_train`).
    """

    name: str = "extra"
    pad_value: int = 255

    @abc.abstractmethod
    def load(self, image_id: str) -> np.ndarray:
        """The map of ``image_id``: (H, W) integer array (any integer dtype; values that fit in
        int32), H x W = the image's size.

        Raises:
            FileNotFoundError: ``<file>: ...`` when the image has no map.
            ValueError: ``<file>: ...`` when the map cannot be read.
        """

    @abc.abstractmethod
    def fingerprint(self) -> str:
        """Identity of the maps' content (e.g. a SHA-256 of the files), a str."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, pad_value={self.pad_value})"


class LabelDirSource(ExtraSource):
    """Index PNGs ``<directory>/<image id>.png`` (palette ``P`` or grey ``L``; raw indices 0..255).

    Used for GSLM's confidence CAMs (0 background, 1..C class, 255 ignored) and any stored
    label map (pseudo masks). Crop padding is ``pad_value`` (255 = ignore, as VOC void).

    Args:
        directory: the folder of PNGs (must exist).
        name: name in error messages (default: the folder's name).
        pad_value: padding value, 0..255 (default 255).

    Raises:
        FileNotFoundError: ``<directory>: label directory not found``.
        ValueError: pad_value outside 0..255.
    """

    def __init__(self, directory: str | os.PathLike, *, name: str | None = None, pad_value: int = 255) -> None:
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise FileNotFoundError(f"{self.directory}: label directory not found")
        if int(pad_value) != pad_value or not 0 <= int(pad_value) <= 255:
            raise ValueError(f"{self.directory}: pad_value must be an integer in 0..255, got {pad_value!r}")
        self.pad_value = int(pad_value)
        self.name = name or self.directory.name

    def path(self, image_id: str) -> Path:
        """``<directory>/<image_id>.png``."""
        return self.directory / f"{image_id}.png"

    def load(self, image_id: str) -> np.ndarray:
        """(H, W) uint8 raw indices of ``<directory>/<image_id>.png``.

        Raises:
            FileNotFoundError: ``<file>: label map for extra input '<name>' not found``.
            ValueError: ``<file>: ...`` not a readable single-channel PNG.
        """
        path = self.path(image_id)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: label map for extra input '{self.name}' not found")
        return read_index_png(path)

    def fingerprint(self) -> str:
        """``"label_dir:pad=<v>:sha256:<hex>"``: SHA-256 over the sorted PNG names and their bytes
        (the folder's path does not enter: moved folders with equal maps are equal)."""
        h = hashlib.sha256()
        for p in sorted(self.directory.glob("*.png")):
            h.update(p.name.encode("utf-8") + b"\0")
            h.update(hashlib.sha256(p.read_bytes()).digest())
        return f"label_dir:pad={self.pad_value}:sha256:{h.hexdigest()}"

    def __repr__(self) -> str:
        return f"LabelDirSource({str(self.directory)!r}, name={self.name!r}, pad_value={self.pad_value})"
