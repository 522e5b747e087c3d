"""SLIC superpixels as a per-image extra training input, computed once and cached on disk.

CPN's Super-pixel Patch strategy (Zhang et al., ICCV 2021, Sec. 3.2) hides whole superpixels.
The authors' code (Ferenas/CPN ``tool/imutils.py`` ``hide_patch_ss``) runs
``skimage.segmentation.slic(compactness=10, n_segments=300, start_label=1)`` on every training
crop, every epoch, then walks the pixels in a Python loop (1.45 s per image, paper Sec. 4.2).
Here SLIC runs **once per image** of the split, on the original photograph, in parallel over
the available cores, and the label maps are cached; the dataset then sends each map through the
same geometric augmentation as the image (nearest rescale, flip, crop), and the hiding itself is
a vectorised table look-up (:func:`wsss.methods.cpn.model.complementary_masks`).

- :class:`SuperpixelSource`: an :class:`~wsss.data.extras.ExtraSource` over a
  :class:`~wsss.data.voc.VOCLayout` split. :meth:`SuperpixelSource.prepare` computes the missing
  maps with a process pool; :meth:`SuperpixelSource.load` reads one (computing and caching it
  if it is missing).
- :func:`slic_labels`: SLIC of one uint8 RGB image (labels 0..n-1, int32).

Cache layout: ``<cache_dir>/<key>/<image id>.npy`` (the smallest of uint8 / uint16 / int32 that holds the labels),
each file written to a temporary name in the same folder and moved into place with
``os.replace``, so a reader never sees a partial file and concurrent writers of the same map are
harmless. ``<key>`` hashes the SLIC parameters and the scikit-image version, so different
settings never share files. A map is recomputed when its image file's size or modification time
differs from the one recorded beside it (``<image id>.json``).

Padding: crops padded by the augmentation carry :data:`PAD_LABEL` (-1), which no superpixel
has; the CPN mask code treats it as "hidden in both images of the pair" (the padded image is 0
there = the mean colour, so ``I_h + I_hbar = I`` holds exactly and padding never counts as
visible when the visible fraction lambda is computed).

This module imports no torch (process-pool workers start quickly).
"""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing as mp
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from wsss.data.extras import ExtraSource
from wsss.io import atomic_write_bytes

__all__ = ["SuperpixelSource", "SlicParams", "slic_labels", "PAD_LABEL", "available_cores"]

#: label of crop padding in an augmented superpixel map (no superpixel has it)
PAD_LABEL: int = -1

_FORMAT_VERSION = 1  # bump when the stored maps change meaning


def available_cores() -> int:
    """Number of CPU cores this process may run on (``os.sched_getaffinity`` where available)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS / Windows
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class SlicParams:
    """Parameters of :func:`skimage.segmentation.slic` (everything else is scikit-image's default).

    Attributes:
        n_segments: approximate number of superpixels per image, >= 1 (CPN paper Fig. 6 best
            S_N = 200; the authors' code uses 300).
        compactness: colour / space trade-off, > 0 (authors' code: 10; scikit-image default 10).

    Raises:
        ValueError: ``method.n_segments`` / ``method.compactness`` out of range (named by key).
    """

    n_segments: int = 200
    compactness: float = 10.0

    def __post_init__(self) -> None:
        if isinstance(self.n_segments, bool) or int(self.n_segments) != self.n_segments or int(self.n_segments) < 1:
            raise ValueError(f"method.n_segments must be an integer >= 1, got {self.n_segments!r}")
        if isinstance(self.compactness, bool) or not float(self.compactness) > 0:
            raise ValueError(f"method.compactness must be a number > 0, got {self.compactness!r}")

    def key(self) -> str:
        """Short hash of the parameters, the scikit-image version and the storage format."""
        import skimage

        text = json.dumps({"n_segments": int(self.n_segments), "compactness": float(self.compactness), "start_label": 0,
                           "skimage": skimage.__version__, "format": _FORMAT_VERSION}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def slic_labels(image: np.ndarray, params: SlicParams) -> np.ndarray:
    """SLIC superpixels of one image.

    Args:
        image: uint8 (H, W, 3) RGB (converted to CIELAB by scikit-image, its default for RGB).
        params: :class:`SlicParams`.

    Returns:
        int32 (H, W), labels 0..n-1 (``start_label=0``), every label used at least once
        (scikit-image enforces connectivity, so n may differ a little from ``n_segments``).

    Raises:
        ValueError: ``image`` is not (H, W, 3).
    """
    from skimage.segmentation import slic

    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"slic_labels: image must be (H, W, 3), got {image.shape}")
    lab = slic(image, n_segments=int(params.n_segments), compactness=float(params.compactness), start_label=0)
    # relabel to a dense 0..n-1 range (slic's labels are already dense; this guards other versions)
    _, dense = np.unique(lab, return_inverse=True)
    return dense.reshape(lab.shape).astype(np.int32)


def _encode(labels: np.ndarray) -> bytes:
    top = int(labels.max()) if labels.size else 0
    dtype = np.uint8 if top <= 255 else (np.uint16 if top <= np.iinfo(np.uint16).max else np.int32)
    buf = io.BytesIO()
    np.save(buf, labels.astype(dtype), allow_pickle=False)
    return buf.getvalue()


def _stat(path: Path) -> list[int]:
    st = path.stat()
    return [int(st.st_size), int(st.st_mtime_ns)]


# -- process-pool worker state (set once per worker by the initializer) -------------------
_WORKER: dict[str, Any] = {}


def _worker_init(layout: Any, params: SlicParams, folder: str) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    _WORKER.update(layout=layout, params=params, folder=Path(folder))


def _compute_and_store(layout: Any, params: SlicParams, folder: Path, image_id: str) -> None:
    image_path = Path(layout.image_path(image_id))
    labels = slic_labels(layout.image(image_id), params)
    atomic_write_bytes(folder / f"{image_id}.npy", _encode(labels))
    atomic_write_bytes(folder / f"{image_id}.json", json.dumps({"image": _stat(image_path)}).encode())


def _worker_run(image_id: str) -> str:
    _compute_and_store(_WORKER["layout"], _WORKER["params"], _WORKER["folder"], image_id)
    return image_id


class SuperpixelSource(ExtraSource):
    """SLIC superpixel label maps of a dataset split, cached on disk (an extra training input).

    Args:
        layout: the split (:class:`~wsss.data.voc.VOCLayout`; needs ``ids``, ``image(id)`` and
            ``image_path(id)``).
        cache_dir: root of the cache (created); maps go to ``<cache_dir>/<params key>/``.
        params: :class:`SlicParams` (default: S_N 200, compactness 10).
        workers: processes for :meth:`prepare`; None = every available core.
        name: name in error messages.

    ``load(id)`` returns int32 (H, W) labels 0..n-1 of the image's size; crops padded by the
    augmentation carry ``pad_value`` = :data:`PAD_LABEL` (-1). Values fit in int32 (stored as
    uint8 / uint16 when they fit).

    Raises:
        ValueError: ``workers`` < 1.
    """

    pad_value: int = PAD_LABEL

    def __init__(self, layout: Any, cache_dir: str | os.PathLike, params: SlicParams | None = None, *,
                 workers: int | None = None, name: str = "superpixels") -> None:
        if workers is not None and (isinstance(workers, bool) or int(workers) != workers or int(workers) < 1):
            raise ValueError(f"method.superpixel_workers must be an integer >= 1 or null, got {workers!r}")
        self.layout = layout
        self.params = params or SlicParams()
        self.workers = int(workers) if workers is not None else None
        self.name = name
        self.cache_root = Path(cache_dir)
        self.folder = self.cache_root / self.params.key()

    # -- cache -----------------------------------------------------------------------------
    def path(self, image_id: str) -> Path:
        """``<cache_dir>/<params key>/<image_id>.npy``."""
        return self.folder / f"{image_id}.npy"

    def _fresh(self, image_id: str) -> bool:
        meta = self.folder / f"{image_id}.json"
        if not (self.path(image_id).is_file() and meta.is_file()):
            return False
        try:
            recorded = json.loads(meta.read_text()).get("image")
        except (OSError, ValueError):
            return False
        return recorded == _stat(Path(self.layout.image_path(image_id)))

    def missing(self, ids: Iterable[str] | None = None) -> list[str]:
        """Ids (default: the whole split) whose cached map is absent or older than the image."""
        return [i for i in (self.layout.ids if ids is None else ids) if not self._fresh(i)]

    def prepare(self, ids: Iterable[str] | None = None) -> dict[str, Any]:
        """Compute and cache the missing maps in parallel.

        Args:
            ids: image ids (default: the whole split).

        Returns:
            ``{"computed": n, "cached": n, "workers": n, "seconds": s, "folder": str}``.

        Raises:
            wsss.data.voc.DatasetError (a ValueError): an image cannot be read.
        """
        t = time.perf_counter()
        ids = list(self.layout.ids if ids is None else ids)
        todo = self.missing(ids)
        self.folder.mkdir(parents=True, exist_ok=True)
        workers = min(self.workers or available_cores(), max(1, len(todo)))
        if todo and workers == 1:
            for i in todo:
                _compute_and_store(self.layout, self.params, self.folder, i)
        elif todo:
            # spawn: the parent may hold torch / OpenMP threads, which fork would copy mid-state
            ctx = mp.get_context("spawn")
            chunk = max(1, len(todo) // (workers * 8))
            with ctx.Pool(workers, initializer=_worker_init, initargs=(self.layout, self.params, str(self.folder))) as pool:
                for _ in pool.imap_unordered(_worker_run, todo, chunksize=chunk):
                    pass
        return {"computed": len(todo), "cached": len(ids) - len(todo), "workers": workers if todo else 0,
                "seconds": round(time.perf_counter() - t, 3), "folder": str(self.folder)}

    # -- ExtraSource ---------------------------------------------------------------------------
    def load(self, image_id: str) -> np.ndarray:
        """The superpixel labels of ``image_id``: int32 (H, W), 0..n-1 (computed and cached if
        missing or stale).

        Raises:
            wsss.data.voc.DatasetError (a ValueError): the image cannot be read.
            ValueError: ``<file>: ...`` a cached file that cannot be read.
        """
        if not self._fresh(image_id):
            _compute_and_store(self.layout, self.params, self.folder, image_id)
        path = self.path(image_id)
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path}: cannot read cached superpixels for extra input '{self.name}' ({exc})") from None
        return arr.astype(np.int32, copy=False)

    def fingerprint(self) -> str:
        """``"slic:n=<S_N>:c=<compactness>:sha256:<hex>"``; the hash covers the parameters key,
        the image ids and each image file's size and modification time."""
        h = hashlib.sha256(self.params.key().encode())
        for i in self.layout.ids:
            h.update(i.encode("utf-8") + b"\0")
            h.update(json.dumps(_stat(Path(self.layout.image_path(i)))).encode())
        return f"slic:n={int(self.params.n_segments)}:c={float(self.params.compactness)}:sha256:{h.hexdigest()}"

    def __repr__(self) -> str:
        return f"SuperpixelSource({str(self.folder)!r}, n_segments={self.params.n_segments}, pad_value={self.pad_value})"
