"""PASCAL VOC-layout dataset reader (image ids, image-level labels, images, masks).

A VOC-layout folder looks like::

    <root>/
      JPEGImages/<id>.jpg
      SegmentationClass/<id>.png          palette PNG, raw indices 0..C, 255 = void
      SegmentationClassAug/<id>.png       optional (SBD-augmented masks, split train_aug)
      ImageSets/Segmentation/<split>.txt  one image id per line
      ImageSets/Main/<class>_<split>.txt  "<id> <1|-1|0>" per line (image-level labels)
      Annotations/<id>.xml                optional VOC object annotations
      classes.txt                         optional, one class name per line, background first

The same reader serves PASCAL VOC 2012 (+SBD ``train_aug``), the MSRC-v2 copy in
``/work/shared/data/msrc21-voc`` and COCO converted by :func:`wsss.data.coco.coco_to_voc_layout`.

:class:`VOCLayout` is plain Python (no torch), cheap to pickle into DataLoader workers.
Image-level labels are multi-hot float32 vectors over the C foreground classes: class index
``c`` (1..C, as in the masks) sits at vector position ``c - 1`` (IRN convention,
``cls_labels.npy``).
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from wsss.io import MAX_IMAGE_PIXELS, ImageTooLargeError, image_id_problem, one_line, open_image, read_index_png

__all__ = ["DatasetError", "VOC_CLASSES", "VOCLayout", "class_file_stem"]


class DatasetError(ValueError):
    """A dataset file is missing, unreadable or inconsistent.

    The message is a single line that starts with the offending path, e.g.
    ``/data/VOC2012/JPEGImages/2007_000032.jpg: cannot decode image (...)``.
    """


VOC_CLASSES: list[str] = [
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
]

_IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG")
_LABEL_MODES = ("auto", "main", "xml", "masks")


def class_file_stem(name: str) -> str:
    """File-name stem used for a class in ``ImageSets/Main/<stem>_<split>.txt``.

    VOC names have no spaces and map to themselves; names with spaces (COCO, e.g.
    ``"traffic light"``) use underscores (``traffic_light_train.txt``).
    """
    return name.strip().replace(" ", "_")


def _read_text(path: Path) -> str:
    """UTF-8 text of a dataset file; DatasetError naming the file if unreadable or not UTF-8."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read ({exc.strerror or one_line(exc)})") from None


class VOCLayout:
    """Index of one split of a VOC-layout folder.

    Args:
        root: dataset folder (the one holding ``JPEGImages/``).
        split: split name, e.g. ``"train"``, ``"val"``, ``"train_aug"``.
        limit: keep only the first ``limit`` ids of the split file (None = all).
        mask_dir: ``"auto"`` (``SegmentationClassAug/`` for split ``train_aug`` or for ids whose
            ``SegmentationClass/<id>.png`` is missing while ``SegmentationClassAug/<id>.png``
            exists, else ``SegmentationClass/``) or an explicit folder name below ``root``
            (or an absolute path).
        labels: where image-level labels come from:
            ``"auto"``: per id, the first source that knows it among
            (1) ``ImageSets/Main/<class>_<split>.txt`` (when such files exist),
            (2) ``Annotations/<id>.xml`` object names,
            (3) ``ImageSets/Main/<class>_trainval.txt`` and ``<class>_train.txt``
            (for splits such as ``train_aug`` without their own class files);
            ``"main"`` / ``"xml"``: only that source; ``"masks"``: classes present in the mask
            (values 1..C, IRN ``make_cls_labels`` convention);
            or a mapping ``id -> multi-hot (C,)`` array / iterable of class names.
            In class files, ``1`` and VOC's ``0`` ("difficult") mean present, ``-1`` absent.
        check_files: ``True`` validates at construction that every image exists, its header
            opens (``PIL.Image.open`` + ``verify()``) and it decodes (reduced-size JPEG draft
            decode, catches truncation), and - if any mask exists - that every id has a
            mask of the image's size. ``"header"`` skips the decode; ``False`` skips all.
        max_pixels: largest image / mask accepted, in pixels (default
            :data:`wsss.io.MAX_IMAGE_PIXELS` = 64 Mpx; ``None`` = Pillow's own limit). Larger
            headers (decompression bombs) raise ``DatasetError`` before any pixel is decoded.

    Split files (``ImageSets/Segmentation/<split>.txt``) hold one id per line (further
    columns are ignored). Each id becomes a file name, so an id that is absolute, contains
    ``..``, a path separator, NUL or another control character, is empty, or repeats an
    earlier line is refused (:func:`wsss.io.image_id_problem`).

    Attributes:
        root (Path), split (str), ids (list[str]), class_names (list[str], index 0
        ``"background"``), num_classes (int, foreground count C), has_masks (bool),
        max_pixels (int | None).

    Raises:
        DatasetError: one-line message starting with the offending file (split files:
            ``<file>:<line>: ...``), for a missing or non-UTF-8 split file, invalid or duplicate
            image id, unknown class, id without image-level label, missing/corrupt/too large
            image, missing or unreadable mask, or mask/image size mismatch.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        *,
        limit: int | None = None,
        mask_dir: str = "auto",
        labels: str | Mapping[str, object] = "auto",
        check_files: bool | str = True,
        max_pixels: int | None = MAX_IMAGE_PIXELS,
    ) -> None:
        self.root = Path(root)
        self.split = str(split)
        self.max_pixels = max_pixels
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: dataset folder not found")
        problem = image_id_problem(self.split)
        if problem is not None:
            raise DatasetError(f"{self.root}: invalid split name {self.split!r}: {problem}")
        self.mask_dir = mask_dir
        self.class_names = self._read_class_names()
        self.num_classes = len(self.class_names) - 1
        self._class_index = {class_file_stem(n): i for i, n in enumerate(self.class_names)}
        self.split_file, self.ids = self._read_ids(limit)
        self._row = {i: k for k, i in enumerate(self.ids)}
        self._image_paths = {i: self._find_image(i) for i in self.ids}
        self.has_masks = any(self.mask_path(i).is_file() for i in self.ids)
        self._labels = self._read_labels(labels)
        if check_files:
            if check_files not in (True, "header", "full"):
                raise ValueError(f"check_files must be True, False or 'header', got {check_files!r}")
            self._check_files(decode=check_files is True or check_files == "full")

    # ------------------------------------------------------------------ basics
    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return (
            f"VOCLayout(root={str(self.root)!r}, split={self.split!r}, n={len(self.ids)}, "
            f"num_classes={self.num_classes}, has_masks={self.has_masks})"
        )

    def _read_class_names(self) -> list[str]:
        path = self.root / "classes.txt"
        if not path.is_file():
            return list(VOC_CLASSES)
        names = [ln.strip() for ln in _read_text(path).splitlines() if ln.strip()]
        if len(names) < 2:
            raise DatasetError(f"{path}: needs background plus at least one class, got {len(names)} names")
        if names[0].lower() != "background":
            raise DatasetError(f"{path}: first class must be 'background', got {names[0]!r}")
        stems = [class_file_stem(n) for n in names]
        if len(set(stems)) != len(stems):
            raise DatasetError(f"{path}: duplicate class names")
        return names

    def _read_ids(self, limit: int | None) -> tuple[Path, list[str]]:
        cands = [
            self.root / "ImageSets" / "Segmentation" / f"{self.split}.txt",
            self.root / "ImageSets" / "Main" / f"{self.split}.txt",
        ]
        for path in cands:
            if path.is_file():
                break
        else:
            raise DatasetError(f"{cands[0]}: split file not found (nor {cands[1]})")
        ids: list[str] = []
        seen: dict[str, int] = {}
        # split on "\n" only (and strip "\r"): str.splitlines() would also break at \x0b,
        # \x0c, \x1c-\x1e, \x85, U+2028/9 and hide such control characters from the check
        for lineno, ln in enumerate(_read_text(path).split("\n"), 1):
            fields = ln.removesuffix("\r").replace("\t", " ").split(" ")
            image_id = next((f for f in fields if f), "")  # first column; blank line -> ""
            if not image_id:
                continue
            problem = image_id_problem(image_id)
            if problem is not None:
                raise DatasetError(f"{path}:{lineno}: invalid image id {image_id!r}: {problem}")
            if image_id in seen:
                raise DatasetError(f"{path}:{lineno}: duplicate image id {image_id!r} (first on line {seen[image_id]})")
            seen[image_id] = lineno
            ids.append(image_id)
        if limit is not None:
            if limit < 0:
                raise ValueError(f"limit must be >= 0, got {limit}")
            ids = ids[:limit]
        return path, ids

    def _find_image(self, image_id: str) -> Path:
        base = self.root / "JPEGImages"
        first = base / f"{image_id}.jpg"
        if first.is_file():
            return first
        for ext in _IMAGE_EXTS[1:]:
            p = base / f"{image_id}{ext}"
            if p.is_file():
                return p
        return first  # missing: reported by check_files or image()

    # ------------------------------------------------------------------ paths
    def image_path(self, image_id: str) -> Path:
        """Path of the image file of ``image_id`` (``JPEGImages/<id>.jpg`` by default)."""
        p = self._image_paths.get(image_id)
        return p if p is not None else self._find_image(image_id)

    def mask_path(self, image_id: str) -> Path:
        """Path of the class mask of ``image_id`` (may not exist; see ``mask_dir``)."""
        if self.mask_dir != "auto":
            return Path(self.mask_dir if os.path.isabs(self.mask_dir) else self.root / self.mask_dir) / f"{image_id}.png"
        plain = self.root / "SegmentationClass" / f"{image_id}.png"
        aug = self.root / "SegmentationClassAug" / f"{image_id}.png"
        if self.split == "train_aug":
            return aug
        if not plain.is_file() and aug.is_file():
            return aug
        return plain

    # ------------------------------------------------------------------ data
    def image(self, image_id: str) -> np.ndarray:
        """Decode an image.

        Returns:
            uint8 array (H, W, 3), RGB. Grey, palette, CMYK and RGBA files are converted to
            RGB; the EXIF orientation tag is ignored (pixels as stored, as in VOC tooling).

        Raises:
            DatasetError: missing or undecodable file, or more than ``max_pixels`` pixels
                (``<file>: image of W x H pixels exceeds the limit of N pixels ...``).
        """
        path = self.image_path(image_id)
        if not path.is_file():
            raise DatasetError(f"{path}: image file not found")
        try:
            with open_image(path, max_pixels=self.max_pixels) as img:
                img.load()
                if img.mode != "RGB":
                    img = img.convert("RGB")
                arr = np.asarray(img, dtype=np.uint8).copy()
        except ImageTooLargeError as exc:
            raise DatasetError(str(exc)) from None
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            msg = one_line(exc)
            raise DatasetError(msg if msg.startswith(f"{path}: ") else f"{path}: cannot decode image ({msg})") from None
        if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
            raise DatasetError(f"{path}: empty or malformed image (decoded shape {arr.shape})")
        return arr

    def mask(self, image_id: str) -> np.ndarray:
        """Read the class mask of ``image_id``.

        Returns:
            uint8 array (H, W) of raw palette indices: 0 background, 1..C classes, 255 void.

        Raises:
            DatasetError: mask missing, unreadable, not a single-channel PNG, larger than
                ``max_pixels``, or of another size than the image (when the image header
                opens; a missing image is reported by :meth:`image`).
        """
        path = self.mask_path(image_id)
        try:
            mask = read_index_png(path, max_pixels=self.max_pixels)
        except (FileNotFoundError, ValueError) as exc:
            raise DatasetError(one_line(exc)) from None
        size = self._image_size(image_id)
        if size is not None and (mask.shape[1], mask.shape[0]) != size:
            raise DatasetError(
                f"{path}: mask size {mask.shape[1]}x{mask.shape[0]} differs from image "
                f"{self.image_path(image_id).name} size {size[0]}x{size[1]}"
            )
        return mask

    def _image_size(self, image_id: str) -> tuple[int, int] | None:
        """(W, H) from the image header, or None if the image is missing or unreadable."""
        try:
            with open_image(self.image_path(image_id), max_pixels=None) as img:
                return img.size
        except (OSError, ValueError):
            return None

    def label(self, image_id: str) -> np.ndarray:
        """Multi-hot image-level label of ``image_id``: float32 (C,), class c at index c-1."""
        k = self._row.get(image_id)
        if k is None:
            raise KeyError(f"{image_id!r} is not an id of split {self.split!r} of {self.root}")
        return self._labels[k].copy()

    def labels_matrix(self) -> np.ndarray:
        """All labels, float32 (N, C) in the order of ``ids``."""
        return self._labels.copy()

    # ------------------------------------------------------------------ labels
    def _main_file(self, stem: str, split: str) -> Path:
        return self.root / "ImageSets" / "Main" / f"{stem}_{split}.txt"

    def _read_class_files(self, split: str) -> dict[str, np.ndarray] | None:
        """Labels from ``ImageSets/Main/<class>_<split>.txt``; None if no such file exists."""
        main = self.root / "ImageSets" / "Main"
        if not main.is_dir():
            return None
        suffix = f"_{split}.txt"
        present = sorted(p for p in main.iterdir() if p.name.endswith(suffix) and len(p.name) > len(suffix))
        if not present:
            return None
        for p in present:
            stem = p.name[: -len(suffix)]
            if stem not in self._class_index and not self._is_other_split_file(stem, split):
                raise DatasetError(f"{p}: unknown class {stem!r} (not in the class list {self._class_list_src()})")
        out: dict[str, np.ndarray] = {}
        for c in range(1, self.num_classes + 1):
            path = self._main_file(class_file_stem(self.class_names[c]), split)
            if not path.is_file():
                raise DatasetError(f"{path}: class file missing (other '*_{split}.txt' class files exist)")
            for lineno, ln in enumerate(_read_text(path).splitlines(), 1):
                parts = ln.split()
                if not parts:
                    continue
                if len(parts) != 2 or parts[1] not in ("1", "-1", "0"):
                    raise DatasetError(f"{path}: line {lineno}: expected '<id> <1|-1|0>', got {ln.strip()!r}")
                vec = out.get(parts[0])
                if vec is None:
                    vec = out[parts[0]] = np.zeros(self.num_classes, dtype=np.float32)
                if parts[1] != "-1":
                    vec[c - 1] = 1.0
        return out

    def _is_other_split_file(self, stem: str, split: str) -> bool:
        # e.g. split "aug" also matches "cow_train_aug.txt": stem "cow_train" is the known class
        # "cow" of another split "train_aug" (which has a split file), not an unknown class.
        sets = self.root / "ImageSets"
        for k in self._class_index:
            if stem.startswith(k + "_"):
                other = f"{stem[len(k) + 1:]}_{split}.txt"
                if (sets / "Segmentation" / other).is_file() or (sets / "Main" / other).is_file():
                    return True
        return False

    def _class_list_src(self) -> str:
        p = self.root / "classes.txt"
        return str(p) if p.is_file() else "VOC_CLASSES"

    def _read_xml(self, image_id: str) -> np.ndarray | None:
        path = self.root / "Annotations" / f"{image_id}.xml"
        if not path.is_file():
            return None
        try:
            tree = ET.parse(path)
        except ET.ParseError as exc:
            raise DatasetError(f"{path}: not valid XML ({one_line(exc)})") from None
        except OSError as exc:
            raise DatasetError(f"{path}: cannot read ({exc.strerror or one_line(exc)})") from None
        vec = np.zeros(self.num_classes, dtype=np.float32)
        for obj in tree.getroot().iter("object"):
            name = (obj.findtext("name") or "").strip()
            c = self._class_index.get(class_file_stem(name))
            if c is None or c == 0:
                raise DatasetError(f"{path}: unknown class {name!r} (not in the class list {self._class_list_src()})")
            vec[c - 1] = 1.0
        return vec

    def _label_from_mask(self, image_id: str) -> np.ndarray:
        m = self.mask(image_id)
        vals = np.unique(m)
        vec = np.zeros(self.num_classes, dtype=np.float32)
        for v in vals:
            if v == 0 or v == 255:
                continue
            if v > self.num_classes:
                raise DatasetError(f"{self.mask_path(image_id)}: mask value {int(v)} > number of classes {self.num_classes}")
            vec[v - 1] = 1.0
        return vec

    def _read_labels(self, labels: str | Mapping[str, object]) -> np.ndarray:
        n, C = len(self.ids), self.num_classes
        out = np.zeros((n, C), dtype=np.float32)
        if not isinstance(labels, str):
            for k, i in enumerate(self.ids):
                if i not in labels:
                    raise DatasetError(f"{self.split_file}: image id {i} has no image-level label (not in the given mapping)")
                out[k] = self._vector_from(labels[i], i)
            return out
        if labels not in _LABEL_MODES:
            raise ValueError(f"labels must be one of {_LABEL_MODES} or a mapping, got {labels!r}")
        if labels == "masks":
            for k, i in enumerate(self.ids):
                out[k] = self._label_from_mask(i)
            return out

        main = self._read_class_files(self.split) if labels in ("auto", "main") else None
        if labels == "main" and main is None:
            raise DatasetError(
                f"{self._main_file('<class>', self.split)}: no class files for split {self.split!r}"
            )
        fallback: dict[str, np.ndarray] | None = None
        fallback_loaded = False
        missing: list[str] = []
        for k, i in enumerate(self.ids):
            vec = main.get(i) if main is not None else None
            if vec is None and labels in ("auto", "xml"):
                vec = self._read_xml(i)
            if vec is None and labels == "auto":
                if not fallback_loaded:
                    fallback = self._read_fallback_class_files()
                    fallback_loaded = True
                if fallback is not None:
                    vec = fallback.get(i)
            if vec is None:
                missing.append(i)
                continue
            out[k] = vec
        if missing:
            if main is None and labels == "auto" and fallback is None and not (self.root / "Annotations").is_dir():
                raise DatasetError(
                    f"{self._main_file('<class>', self.split)}: no image-level label source for split "
                    f"{self.split!r} (no class files, no Annotations/*.xml, no <class>_trainval.txt)"
                )
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise DatasetError(f"{self.split_file}: image id {missing[0]} has no image-level label{more}")
        return out

    def _read_fallback_class_files(self) -> dict[str, np.ndarray] | None:
        merged: dict[str, np.ndarray] = {}
        found = False
        for sp in ("trainval", "train"):
            if sp == self.split:
                continue
            got = self._read_class_files(sp)
            if got is None:
                continue
            found = True
            for i, v in got.items():
                if i in merged:
                    np.maximum(merged[i], v, out=merged[i])
                else:
                    merged[i] = v
        return merged if found else None

    def _vector_from(self, value: object, image_id: str) -> np.ndarray:
        if isinstance(value, np.ndarray) and value.dtype.kind in "fiub":
            arr = np.asarray(value, dtype=np.float32).reshape(-1)
            if arr.shape != (self.num_classes,):
                raise DatasetError(f"{self.split_file}: label of {image_id} has shape {arr.shape}, expected ({self.num_classes},)")
            return (arr > 0).astype(np.float32)
        vec = np.zeros(self.num_classes, dtype=np.float32)
        names: Sequence = list(value)  # type: ignore[call-overload]
        if names and all(isinstance(x, (int, float, np.number)) for x in names) and len(names) == self.num_classes:
            return (np.asarray(names, dtype=np.float32) > 0).astype(np.float32)
        for name in names:
            c = self._class_index.get(class_file_stem(str(name)))
            if not c:
                raise DatasetError(f"{self.split_file}: unknown class {name!r} for image id {image_id}")
            vec[c - 1] = 1.0
        return vec

    # ------------------------------------------------------------------ validation
    def _check_files(self, decode: bool) -> None:
        masks = self.has_masks
        for i in self.ids:
            path = self.image_path(i)
            if not path.is_file():
                raise DatasetError(f"{path}: image file not found (id {i} of {self.split_file.name})")
            try:
                with open_image(path, max_pixels=self.max_pixels) as img:
                    size = img.size
                    fmt = img.format
                    img.verify()
                if decode:
                    with open_image(path, max_pixels=self.max_pixels) as img:
                        if fmt == "JPEG":
                            img.draft("RGB", (max(1, size[0] // 8), max(1, size[1] // 8)))
                        img.load()
            except ImageTooLargeError as exc:
                raise DatasetError(f"{one_line(exc)} (id {i} of {self.split_file.name})") from None
            except (OSError, SyntaxError, ValueError, EOFError) as exc:
                raise DatasetError(f"{path}: unreadable or corrupt image ({one_line(exc)})") from None
            if not masks:
                continue
            mpath = self.mask_path(i)
            if not mpath.is_file():
                raise DatasetError(f"{mpath}: mask file missing for id {i} (other ids of the split have masks)")
            try:
                with open_image(mpath, max_pixels=self.max_pixels) as m:
                    msize, mmode = m.size, m.mode
            except ImageTooLargeError as exc:
                raise DatasetError(one_line(exc)) from None
            except (OSError, SyntaxError, ValueError) as exc:
                raise DatasetError(f"{mpath}: unreadable mask ({one_line(exc)})") from None
            if mmode not in ("P", "L"):
                raise DatasetError(f"{mpath}: mask must be a palette (P) or grey (L) PNG, got mode {mmode}")
            if msize != size:
                raise DatasetError(
                    f"{mpath}: mask size {msize[0]}x{msize[1]} differs from image {path.name} size {size[0]}x{size[1]}"
                )
