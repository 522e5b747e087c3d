"""Convert MS COCO 2014 instance annotations to a VOC-layout folder.

Produces, under ``dest``::

    classes.txt                               background + the 80 COCO names (category-id order)
    JPEGImages/<id>.jpg                       symlinks to ``images_dir/<file_name>`` (no copies)
    SegmentationClass/<id>.png                palette PNG, class index = rank of the category id + 1
    ImageSets/Segmentation/<split>.txt        image ids
    ImageSets/Main/<class>_<split>.txt        "<id> 1|-1" image-level labels (spaces in class
                                              names become "_" in file names)

so that :class:`wsss.data.voc.VOCLayout(dest, split)` reads it like VOC. Class masks are
painted from the instance masks (polygons or RLE, crowd regions included). Overlaps between
instances of *different* classes become 255 (ignore) by default - the usual WSSS practice for
COCO ground truth - or, with ``overlap="larger_first"``, instances are painted from the largest
area to the smallest so small objects stay visible. Requires ``pycocotools``
(``pip install "wsss[coco]"``), imported lazily.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from pathlib import Path

import numpy as np

from wsss.data.voc import class_file_stem
from wsss.io import MAX_IMAGE_PIXELS, atomic_write, image_id_problem, read_json, save_palette_png

__all__ = ["coco_to_voc_layout", "voc_to_coco"]

_OVERLAP = ("ignore", "larger_first")


def _import_pycocotools():
    try:
        from pycocotools import mask as mask_utils
    except ImportError:
        raise ImportError('pycocotools is needed for COCO conversion: pip install "wsss[coco]"') from None
    return mask_utils


def _ann_mask(mask_utils, seg, h: int, w: int) -> np.ndarray:
    """Binary (h, w) bool mask of one annotation's ``segmentation`` (polygons / RLE)."""
    if isinstance(seg, list):
        rles = mask_utils.frPyObjects(seg, h, w)
        rle = mask_utils.merge(rles)
    elif isinstance(seg, dict) and isinstance(seg.get("counts"), list):
        rle = mask_utils.frPyObjects(seg, h, w)
    else:
        rle = seg
    return mask_utils.decode(rle).astype(bool)


def coco_to_voc_layout(
    instances_json: str | os.PathLike,
    images_dir: str | os.PathLike,
    dest: str | os.PathLike,
    split: str,
    *,
    overlap: str = "ignore",
    skip_empty: bool = True,
    limit: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a VOC-layout copy of a COCO instances file (masks, labels, image symlinks).

    Args:
        instances_json: e.g. ``annotations/instances_train2014.json``.
        images_dir: folder holding the images named by ``file_name`` (e.g. ``train2014/``).
        dest: output folder (created; several splits may share it).
        split: split name to write, e.g. ``"train"`` or ``"val"``.
        overlap: ``"ignore"`` (pixels claimed by instances of different classes -> 255) or
            ``"larger_first"`` (paint by decreasing annotation area, later = smaller wins).
        skip_empty: leave out images without any annotation (no image-level label to learn).
        limit: convert only the first ``limit`` images (sorted by COCO image id).
        overwrite: rewrite masks that already exist (default: keep them, so re-runs resume).

    Returns:
        ``Path(dest)``. Class index c (1..80) = position of the category in id order + 1;
        mask values are 0 (background), 1..80, 255.

    Raises:
        ImportError: pycocotools missing.
        ValueError: ``<instances_json>: ...`` bad content (not a COCO instances object, missing
            or mistyped fields, unknown or duplicate category id, ``file_name`` that is absolute,
            contains ``..`` or gives an invalid / duplicate image id, image larger than
            :data:`wsss.io.MAX_IMAGE_PIXELS`, undecodable segmentation, size mismatch), or
            ``<dest>/classes.txt: ...`` if it lists other classes.
        FileNotFoundError: ``<image>: ...`` an image named in the JSON is missing.
    """
    if overlap not in _OVERLAP:
        raise ValueError(f"overlap must be one of {_OVERLAP}, got {overlap!r}")
    mask_utils = _import_pycocotools()
    src = Path(instances_json)
    images_dir = Path(images_dir).resolve()
    dest = Path(dest)
    data = read_json(src)
    _check_coco(data, src)

    cats = sorted(data["categories"], key=lambda c: c["id"])
    cat_to_class = {c["id"]: k + 1 for k, c in enumerate(cats)}
    names = ["background"] + [str(c["name"]) for c in cats]
    classes_txt = dest / "classes.txt"
    if classes_txt.is_file():
        have = [ln.strip() for ln in classes_txt.read_text(encoding="utf-8").splitlines() if ln.strip()]
        if have != names:
            raise ValueError(f"{classes_txt}: lists other classes than the categories of {src}")
    else:
        with atomic_write(classes_txt, "w") as fh:
            fh.write("".join(f"{n}\n" for n in names))

    anns_by_image: dict[int, list[dict]] = {}
    for a in data["annotations"]:
        if a["category_id"] not in cat_to_class:
            raise ValueError(f"{src}: annotation {a.get('id')} has unknown category_id {a['category_id']}")
        anns_by_image.setdefault(a["image_id"], []).append(a)

    images = sorted(data["images"], key=lambda im: im["id"])
    if limit is not None:
        images = images[:limit]
    jpeg_dir = dest / "JPEGImages"
    mask_dir = dest / "SegmentationClass"
    jpeg_dir.mkdir(parents=True, exist_ok=True)
    C = len(cats)
    ids: list[str] = []
    labels: list[np.ndarray] = []
    seen: dict[str, object] = {}
    for im in images:
        anns = anns_by_image.get(im["id"], [])
        if skip_empty and not anns:
            continue
        file_name = str(im["file_name"])
        image_id = Path(file_name).stem
        if image_id in seen:
            raise ValueError(f"{src}: images {seen[image_id]} and {im['id']} both map to image id {image_id!r}")
        seen[image_id] = im["id"]
        h, w = int(im["height"]), int(im["width"])
        source = images_dir / file_name
        if not source.is_file():
            raise FileNotFoundError(f"{source}: image listed in {src} not found")
        link = jpeg_dir / f"{image_id}{Path(file_name).suffix or '.jpg'}"
        if not link.exists():
            if link.is_symlink():
                link.unlink()  # dangling link from an earlier run
            os.symlink(source, link)

        vec = np.zeros(C, dtype=np.float32)
        for a in anns:
            vec[cat_to_class[a["category_id"]] - 1] = 1.0
        png = mask_dir / f"{image_id}.png"
        if overwrite or not png.is_file():
            save_palette_png(png, _paint(mask_utils, anns, cat_to_class, h, w, overlap, src))
        ids.append(image_id)
        labels.append(vec)

    with atomic_write(dest / "ImageSets" / "Segmentation" / f"{split}.txt", "w") as fh:
        fh.write("".join(f"{i}\n" for i in ids))
    lab = np.stack(labels) if labels else np.zeros((0, C), dtype=np.float32)
    for c in range(1, C + 1):
        path = dest / "ImageSets" / "Main" / f"{class_file_stem(names[c])}_{split}.txt"
        with atomic_write(path, "w") as fh:
            fh.write("".join(f"{i} {1 if lab[k, c - 1] > 0 else -1}\n" for k, i in enumerate(ids)))
    return dest


def _check_coco(data: object, src: Path) -> None:
    """Validate the parts of a COCO instances object the conversion reads (one-line errors)."""
    if not isinstance(data, dict):
        raise ValueError(f"{src}: not a COCO instances file (top level is {type(data).__name__}, not an object)")
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise ValueError(f"{src}: not a COCO instances file (no {key!r})")
        if not isinstance(data[key], list):
            raise ValueError(f"{src}: {key!r} must be a list, got {type(data[key]).__name__}")

    def need(obj: object, what: str, fields: dict[str, type | tuple[type, ...]]) -> None:
        if not isinstance(obj, dict):
            raise ValueError(f"{src}: {what} is {type(obj).__name__}, not an object")
        for f, t in fields.items():
            if f not in obj:
                raise ValueError(f"{src}: {what} has no {f!r}")
            if not isinstance(obj[f], t) or isinstance(obj[f], bool):
                raise ValueError(f"{src}: {what} field {f!r} has type {type(obj[f]).__name__}")

    cat_ids: set[int] = set()
    for k, c in enumerate(data["categories"]):
        need(c, f"category #{k}", {"id": int, "name": str})
        if c["id"] in cat_ids:
            raise ValueError(f"{src}: duplicate category id {c['id']}")
        cat_ids.add(c["id"])
    if not cat_ids:
        raise ValueError(f"{src}: no categories")
    for k, im in enumerate(data["images"]):
        need(im, f"image #{k}", {"id": int, "file_name": str, "height": int, "width": int})
        name = im["file_name"]
        what = f"image {im['id']}"
        if name.startswith(("/", "\\")) or ".." in name.replace("\\", "/").split("/"):
            raise ValueError(f"{src}: {what} has unsafe file_name {name!r} (absolute or '..')")
        problem = image_id_problem(Path(name).stem)
        if problem is not None:
            raise ValueError(f"{src}: {what} file_name {name!r} gives an invalid image id: {problem}")
        h, w = im["height"], im["width"]
        if h < 1 or w < 1:
            raise ValueError(f"{src}: {what} has size {w}x{h}")
        if h * w > MAX_IMAGE_PIXELS:
            raise ValueError(f"{src}: {what} of {w} x {h} pixels exceeds the limit of {MAX_IMAGE_PIXELS} pixels")
    for k, a in enumerate(data["annotations"]):
        need(a, f"annotation #{k}", {"image_id": int, "category_id": int, "segmentation": (list, dict)})


def _paint(mask_utils, anns: list[dict], cat_to_class: dict[int, int], h: int, w: int, overlap: str, src: Path) -> np.ndarray:
    """(h, w) uint8 class mask from instance annotations (see :func:`coco_to_voc_layout`)."""
    cls = np.zeros((h, w), dtype=np.uint8)
    if overlap == "larger_first":
        for a in sorted(anns, key=lambda a: -float(a.get("area", 0.0))):
            m = _decode(mask_utils, a, h, w, src)
            cls[m] = cat_to_class[a["category_id"]]
        return cls
    clash = np.zeros((h, w), dtype=bool)
    for a in anns:
        m = _decode(mask_utils, a, h, w, src)
        c = cat_to_class[a["category_id"]]
        clash |= m & (cls != 0) & (cls != c)
        cls[m & (cls == 0)] = c
    cls[clash] = 255
    return cls


def _decode(mask_utils, ann: dict, h: int, w: int, src: Path) -> np.ndarray:
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # pycocotools vs NumPy 2 copy= keyword
            m = _ann_mask(mask_utils, ann["segmentation"], h, w)
    except Exception as exc:  # pycocotools raises TypeError, ValueError, KeyError, ... on bad input
        msg = " ".join(str(exc).split()) or type(exc).__name__
        raise ValueError(f"{src}: annotation {ann.get('id')} has an undecodable segmentation ({msg})") from None
    if m.shape != (h, w):
        raise ValueError(f"{src}: annotation {ann.get('id')} decodes to {m.shape}, image is {(h, w)}")
    return m


def voc_to_coco(layout, out_json: str | os.PathLike, *, image_root: str | os.PathLike | None = None) -> dict:
    """Write a COCO instances JSON for a VOC-layout split that has masks (the reverse of
    :func:`coco_to_voc_layout`; used to run wsss's COCO path on real images, e.g. MSRC).

    One annotation per (image, class present in the mask): the class region as a compressed
    RLE (pycocotools), ``iscrowd`` 0, ``area`` and ``bbox`` from the mask. Background (0) and void
    (255) become no annotation, so converting back gives the mask with void -> background.
    Category ids are 1..C in ``layout.class_names[1:]`` order; images with no object class get no
    annotation (``coco_to_voc_layout(skip_empty=True)`` leaves them out again).

    Args:
        layout: a :class:`wsss.data.voc.VOCLayout` split with masks.
        out_json: the JSON file to write (atomically).
        image_root: ``file_name`` is the image path relative to this folder (default: the
            layout's image folder, so ``file_name`` is the bare file name).

    Returns:
        the written COCO object (``images``, ``annotations``, ``categories``).

    Raises:
        ImportError: pycocotools missing. ValueError: the split has no masks.
    """
    import json

    mask_utils = _import_pycocotools()
    if not layout.has_masks:
        raise ValueError(f"{layout.root}: split {layout.split!r} has no masks to convert")
    cats = [{"id": c, "name": str(n), "supercategory": "object"} for c, n in enumerate(layout.class_names[1:], start=1)]
    images, anns = [], []
    for k, image_id in enumerate(layout.ids, start=1):
        path = Path(layout.image_path(image_id))
        mask = layout.mask(image_id)
        h, w = mask.shape
        name = os.path.relpath(path, image_root) if image_root is not None else path.name
        images.append({"id": k, "file_name": name, "height": int(h), "width": int(w)})
        for c in sorted(int(v) for v in np.unique(mask) if 0 < v < 255):
            region = np.asfortranarray((mask == c).astype(np.uint8))
            rle = mask_utils.encode(region)
            rle["counts"] = rle["counts"].decode("ascii")
            x, y, bw, bh = (float(v) for v in mask_utils.toBbox(rle))
            anns.append({"id": len(anns) + 1, "image_id": k, "category_id": c, "segmentation": rle,
                         "area": float(mask_utils.area(rle)), "bbox": [x, y, bw, bh], "iscrowd": 0})
    data = {"images": images, "annotations": anns, "categories": cats}
    with atomic_write(Path(out_json), "w") as fh:
        json.dump(data, fh)
    return data
