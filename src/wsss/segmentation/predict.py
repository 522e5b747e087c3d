"""A run directory as a shippable model: save / load the segmentation network, ``wsss predict``.

Files (in ``<run>/segmentation/``):

- ``model.safetensors``: the :class:`~wsss.segmentation.model.SegmentationNet` state dict;
- ``model.json``: what is needed to use it without the dataset or the config:
  ``architecture`` ("deeplabv3plus"), ``encoder``, ``num_classes`` (K, background included),
  ``output_stride``, ``atrous_rates``, ``class_names`` (K names, background first),
  ``mean`` / ``std`` (input normalisation, 0..1 scale), ``format`` (1), plus whatever the
  training stage adds (``source``, ``epochs``, ``params``, ...).

``wsss predict --run RUN IMAGE_OR_DIR... --output OUT`` (:func:`predict_images`) segments any
number of images of any size on CPU or GPU and writes, per image ``<stem>``:

- ``OUT/<stem>.png``: VOC-palette label map (raw indices 0..K-1, :func:`wsss.io.save_palette_png`);
- ``OUT/<stem>_overlay.jpg``: the labels coloured over the image (:func:`wsss.report.overlay.mask_overlay`);
- ``OUT/<stem>_probs.npz`` (``--probs``): ``probs`` float16 (K, H, W) softmax probabilities
  and ``class_names``.

Images are read as stored (EXIF orientation ignored, as for the datasets), converted to RGB.
A file that cannot be read or segmented prints one line ``wsss: error: <file>: <reason>`` to
stderr and the other images are still written.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence, TextIO

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save

from wsss.io import atomic_write_bytes, one_line, save_palette_png, write_json
from wsss.report.overlay import mask_overlay
from wsss.segmentation.infer import DEEPLAB_CRF, crf_postprocess, predict_probs
from wsss.segmentation.model import SegmentationNet, build_deeplabv3plus

__all__ = [
    "MODEL_SUBDIR",
    "IMAGE_SUFFIXES",
    "segmentation_model_paths",
    "save_segmentation_model",
    "load_segmentation_model",
    "list_images",
    "read_image",
    "predict_images",
    "add_predict_arguments",
    "run_predict",
]

MODEL_SUBDIR = "segmentation"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
FORMAT_VERSION = 1


def segmentation_model_paths(run_dir: str | os.PathLike) -> tuple[Path, Path]:
    """``(<run>/segmentation/model.safetensors, <run>/segmentation/model.json)``."""
    d = Path(run_dir) / MODEL_SUBDIR
    return d / "model.safetensors", d / "model.json"


def _check_stats(meta: Mapping[str, Any], where: str) -> None:
    for key in ("mean", "std"):
        v = meta.get(key)
        if not isinstance(v, (list, tuple)) or len(v) != 3 or not all(isinstance(x, (int, float)) for x in v):
            raise ValueError(f"{where}: '{key}' must be three numbers (0..1 scale), got {v!r}")
    if any(float(x) <= 0 for x in meta["std"]):
        raise ValueError(f"{where}: 'std' must be positive, got {meta['std']!r}")


def save_segmentation_model(net: SegmentationNet, run_dir: str | os.PathLike, meta: Mapping[str, Any]) -> Path:
    """Write ``<run>/segmentation/model.safetensors`` and ``model.json`` atomically.

    Args:
        net: the trained network (any device; saved as CPU tensors).
        run_dir: the run folder.
        meta: at least ``class_names`` (K names, background first), ``mean`` and ``std``
            (3 floats each, 0..1 scale); any further JSON-serialisable keys are kept. The
            network's architecture keys (:meth:`SegmentationNet.arch`) are added.

    Returns:
        Path of ``model.safetensors``.

    Raises:
        ValueError: missing / wrong ``class_names``, ``mean`` or ``std``, or a ``meta`` key
            that contradicts the network (e.g. another ``num_classes``).
    """
    weights, meta_path = segmentation_model_paths(run_dir)
    names = meta.get("class_names")
    if not isinstance(names, (list, tuple)) or len(names) != net.num_classes:
        raise ValueError(f"{meta_path}: 'class_names' must list the network's {net.num_classes} classes "
                         f"(background first), got {names!r}")
    _check_stats(meta, str(meta_path))
    arch = net.arch()
    for key, value in arch.items():
        if key in meta and meta[key] != value and list(np.atleast_1d(meta[key])) != list(np.atleast_1d(value)):
            raise ValueError(f"{meta_path}: meta {key}={meta[key]!r} contradicts the network ({value!r})")
    info = {**dict(meta), **arch, "class_names": [str(n) for n in names],
            "mean": [float(x) for x in meta["mean"]], "std": [float(x) for x in meta["std"]],
            "format": FORMAT_VERSION}
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    atomic_write_bytes(weights, save(state))
    write_json(meta_path, info)
    return weights


def load_segmentation_model(run_dir: str | os.PathLike, device: torch.device | str = "cpu") -> tuple[SegmentationNet, dict]:
    """Rebuild the saved network (no pretrained weights, nothing downloaded) and load it.

    Args:
        run_dir: a run folder holding ``segmentation/model.safetensors`` + ``model.json``.
        device: where to put the network.

    Returns:
        ``(net in eval mode, meta dict of model.json)``.

    Raises:
        FileNotFoundError: ``<path>: no segmentation model in this run (run 'wsss segment' first)``.
        ValueError: an invalid ``model.json`` or weights that do not fit it (one line naming the file).
    """
    weights, meta_path = segmentation_model_paths(run_dir)
    for path in (meta_path, weights):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no segmentation model in this run (run 'wsss segment' first)")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{meta_path}: not valid JSON ({one_line(exc)})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{meta_path}: must hold a JSON object")
    missing = [k for k in ("architecture", "encoder", "num_classes", "output_stride", "atrous_rates", "class_names",
                           "mean", "std") if k not in meta]
    if missing:
        raise ValueError(f"{meta_path}: missing key(s) {missing}")
    if meta["architecture"] != "deeplabv3plus":
        raise ValueError(f"{meta_path}: unknown architecture {meta['architecture']!r} (expected 'deeplabv3plus')")
    if len(meta["class_names"]) != int(meta["num_classes"]):
        raise ValueError(f"{meta_path}: {len(meta['class_names'])} class names for num_classes {meta['num_classes']}")
    _check_stats(meta, str(meta_path))
    net = build_deeplabv3plus(int(meta["num_classes"]), str(meta["encoder"]), "none", int(meta["output_stride"]),
                              tuple(meta["atrous_rates"]))
    try:
        state = load_file(str(weights))
    except Exception as exc:  # safetensors raises its own error types
        raise ValueError(f"{weights}: unreadable weights ({one_line(exc)})") from None
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{weights}: weights do not fit {meta_path.name} ({str(exc).splitlines()[0]})") from None
    return net.to(device).eval(), meta


def list_images(inputs: Sequence[str | os.PathLike]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Expand files and folders into image files.

    A folder contributes its files (not sub-folders) whose suffix is one of
    :data:`IMAGE_SUFFIXES` (any case), sorted by name; a file is taken as given (whatever its
    suffix: decoding decides). Duplicates are dropped.

    Returns:
        ``(image paths, [(input path, reason)])`` for inputs that do not exist or are empty folders.
    """
    files: list[Path] = []
    errors: list[tuple[Path, str]] = []
    seen: set[Path] = set()

    def add(p: Path) -> None:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            files.append(p)

    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                errors.append((p, f"no {'/'.join(s.lstrip('.') for s in IMAGE_SUFFIXES)} image in this folder"))
            for q in found:
                add(q)
        elif p.is_file():
            add(p)
        else:
            errors.append((p, "no such file or folder"))
    return files, errors


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file as uint8 (H, W, 3) RGB (grey, palette, RGBA, CMYK converted; EXIF ignored).

    Raises:
        ValueError: ``<path>: cannot decode image (...)``.
    """
    from wsss.io import ImageTooLargeError, UnreadableImageError, open_image

    path = Path(path)
    try:
        with open_image(path) as img:
            img.load()
            if img.mode != "RGB":
                img = img.convert("RGB")
            arr = np.asarray(img, dtype=np.uint8).copy()
    except ImageTooLargeError:
        raise
    except UnreadableImageError as exc:  # open_image failed; its message already names the file
        raise ValueError(f"{path}: cannot decode image ({exc.reason})") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ValueError(f"{path}: cannot decode image ({one_line(exc)})") from None
    if arr.ndim != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"{path}: empty image")
    return arr


def _jpeg_bytes(array: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _npz_bytes(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def _resolve_device(device: torch.device | str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def predict_images(
    run_dir: str | os.PathLike,
    inputs: Sequence[str | os.PathLike],
    output: str | os.PathLike,
    *,
    probs: bool = False,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    crf: bool = False,
    long_side: int | None = None,
    device: torch.device | str | None = "auto",
    stderr: TextIO | None = None,
    progress: bool = False,
) -> int:
    """Segment image files with a run's saved segmentation model (``wsss predict``).

    Args:
        run_dir: run folder with ``segmentation/model.safetensors`` + ``model.json``.
        inputs: image files and/or folders (see :func:`list_images`).
        output: output folder (created).
        probs: also write ``<stem>_probs.npz`` (``probs`` float16 (K, H, W), ``class_names``).
        scales, flip: test-time augmentation (:func:`~wsss.segmentation.infer.predict_probs`).
        crf: DeepLab dense CRF post-processing (needs pydensecrf2).
        long_side: if given, each image is segmented at a size whose long side is this many
            pixels (all ``scales`` relative to it) and the probabilities are resized back to the
            image's own size; None = the image's own size.
        device: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"``, ...
        stderr: where error lines go (default ``sys.stderr``).
        progress: print one line per written image to stdout.

    Returns:
        Number of inputs that failed (0 = every image written). Output names are the input
        stems; a stem met twice gets ``_2``, ``_3``, ... An image whose mask would overwrite
        an input file is refused.

    Raises:
        FileNotFoundError / ValueError: no or an invalid saved model (nothing is written).
    """
    err = stderr if stderr is not None else sys.stderr
    dev = _resolve_device(device)
    net, meta = load_segmentation_model(run_dir, dev)
    mean, std = tuple(meta["mean"]), tuple(meta["std"])
    names = np.asarray([str(n) for n in meta["class_names"]])
    if long_side is not None and int(long_side) < 1:
        raise ValueError(f"long_side must be a positive number of pixels, got {long_side}")
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    files, failures = list_images(inputs)
    for path, reason in failures:
        print(f"wsss: error: {path}: {reason}", file=err)
    inputs_resolved = {p.resolve() for p in files}
    used: dict[str, int] = {}
    failed = len(failures)
    for path in files:
        stem = path.stem
        n = used.get(stem, 0) + 1
        used[stem] = n
        if n > 1:
            stem = f"{stem}_{n}"
        mask_path = out / f"{stem}.png"
        try:
            if mask_path.resolve() in inputs_resolved:
                raise ValueError(f"output {mask_path} would overwrite an input image; choose another --output")
            image = read_image(path)
            view_scales = list(scales)
            if long_side is not None:
                f = float(long_side) / max(image.shape[:2])
                view_scales = [s * f for s in scales]
            p = predict_probs(net, image, view_scales, flip, mean, std, dev)
            mask = crf_postprocess(image, p, DEEPLAB_CRF) if crf else np.argmax(p, axis=0).astype(np.uint8)
            save_palette_png(mask_path, mask)
            atomic_write_bytes(out / f"{stem}_overlay.jpg", _jpeg_bytes(mask_overlay(image, mask)))
            if probs:
                atomic_write_bytes(out / f"{stem}_probs.npz", _npz_bytes(probs=p.astype(np.float16), class_names=names))
            if progress:
                print(f"[predict] {path} -> {mask_path}")
        except Exception as exc:  # one bad image must not stop the others
            msg = one_line(exc)
            print(f"wsss: error: {msg if msg.startswith(str(path)) else f'{path}: {msg}'}", file=err)
            failed += 1
    return failed


def add_predict_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``wsss predict`` arguments to ``parser`` (see :func:`run_predict`)."""
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files and/or folders of .jpg/.png")
    parser.add_argument("--run", required=True, metavar="RUN_DIR", help="run folder with segmentation/model.safetensors")
    parser.add_argument("--output", required=True, metavar="OUT", help="folder for <stem>.png and <stem>_overlay.jpg")
    parser.add_argument("--probs", action="store_true", help="also write <stem>_probs.npz (float16 class probabilities)")
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0], help="test scales (default 1.0)")
    parser.add_argument("--flip", action="store_true", help="average with the horizontal flip")
    parser.add_argument("--crf", action="store_true", help="DeepLab dense-CRF post-processing (needs wsss[crf])")
    parser.add_argument("--long-side", type=int, default=None, help="segment at this long side (px), output at full size")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    return parser


def run_predict(args: argparse.Namespace) -> int:
    """Run ``wsss predict`` from parsed arguments; returns the exit code (0 ok, 1 if an image failed).

    Raises:
        FileNotFoundError / ValueError: no or an invalid model in ``--run`` (the CLI prints it
            as one ``wsss: error:`` line).
    """
    failed = predict_images(args.run, args.inputs, args.output, probs=args.probs, scales=args.scales, flip=args.flip,
                            crf=args.crf, long_side=args.long_side, device=args.device, progress=True)
    return 1 if failed else 0
