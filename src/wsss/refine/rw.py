"""Random-walk refinement of a split's CAMs with a trained boundary network (IRN).

For every image (IRN ``step/make_sem_seg_labels.py``):

1. boundary = sigmoid of the mean of the boundary logits of the image and of its flip
   (:meth:`wsss.affinity.model.BoundaryNet.boundary`), on the stride-4 grid
   (ceil(H/4), ceil(W/4)) - the grid of the stored ``strided`` CAMs;
2. the stride-4 CAMs of the image's classes are propagated by the sparse random walk
   (:func:`wsss.refine.random_walk.random_walk`: radius 5, beta 10, 256 steps);
3. the result is upsampled x4 (bilinear), cropped to (H, W) and divided by its global max
   over all classes.

The propagated scores are stored as CAM records (``rw/<id>.npz``, same format as ``cams/``:
``high_res`` (K, H, W) in [0, 1], ``strided`` (K, h4, w4)), so the seed evaluation protocol
applies unchanged: a background threshold (IRN ``sem_seg_bg_thres`` 0.25) prepended before the
argmax, fixed (chosen on val) and swept. IRN applies no CRF after the walk; neither does wsss.

Unlike IRN (which pads every image to 512 x 512 and breaks on larger ones) the boundary network
runs at the image's own size, and the walk's memory is linear in the number of pixels.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from wsss.data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize
from wsss.inference.store import CamRecord, cam_path, load_cam, save_cam
from wsss.refine.random_walk import random_walk

__all__ = ["rw_record", "rw_split"]


@torch.no_grad()
def rw_record(
    net: torch.nn.Module,
    image: np.ndarray,
    record: CamRecord,
    *,
    radius: int = 5,
    beta: float = 10.0,
    steps: int = 256,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    device: torch.device | str = "cpu",
) -> CamRecord:
    """Random-walk scores of one image as a CAM record.

    Args:
        net: a :class:`~wsss.affinity.model.BoundaryNet` in eval mode.
        image: (H, W, 3) uint8 RGB.
        record: the image's CAMs (``strided`` (K, ceil(H/4), ceil(W/4)) is walked).
        radius, beta, steps: walk parameters (IRN: 5, 10, 256).
        mean, std: input normalisation of the boundary network's backbone.
        device: where the boundary network and the walk run.

    Returns:
        CamRecord with the same keys: ``high_res`` (K, H, W) = upsampled scores divided by their
        global max (so in [0, 1]), ``strided`` (K, h4, w4) = the walk's scores divided by the
        same max.

    Raises:
        ValueError: the image size differs from the CAM record's.
    """
    h, w = image.shape[:2]
    if (h, w) != record.size:
        raise ValueError(f"image size {(h, w)} differs from its CAM size {record.size}")
    k = len(record.keys)
    if k == 0:
        return record
    x = normalize(image, mean, std)[None].to(device)
    boundary = net.boundary(x)[0]
    cams = torch.from_numpy(np.ascontiguousarray(record.strided)).float().to(device)
    if cams.shape[-2:] != boundary.shape:
        raise ValueError(f"strided CAM grid {tuple(cams.shape[-2:])} differs from the boundary grid {tuple(boundary.shape)}")
    rw = random_walk(cams, boundary, radius=radius, beta=beta, steps=steps)
    up = F.interpolate(rw[None], scale_factor=4, mode="bilinear", align_corners=False)[0, :, :h, :w]
    top = up.max().clamp(min=1e-5)
    return CamRecord(keys=np.asarray(record.keys), high_res=(up / top).cpu().numpy().astype(np.float32),
                     strided=(rw / top).cpu().numpy().astype(np.float32))


def rw_split(
    net: torch.nn.Module,
    layout: Any,
    cam_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    radius: int = 5,
    beta: float = 10.0,
    steps: int = 256,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    device: torch.device | str = "cpu",
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
) -> int:
    """Write ``<out_dir>/<id>.npz`` (random-walk scores, CAM-record format) for every id of the
    split that has none yet (resumable), this rank's share ``ids[rank::world_size]``.

    Returns:
        number of files written by this call.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    net = net.to(device).eval()
    ids = list(layout.ids)[rank::world_size]
    todo = [i for i in ids if not cam_path(out_dir, i).is_file()]
    for image_id in tqdm(todo, desc=f"random walk {layout.split}", disable=not progress, unit="img"):
        rec = rw_record(net, layout.image(image_id), load_cam(cam_path(cam_dir, image_id)), radius=radius, beta=beta,
                        steps=steps, mean=mean, std=std, device=device)
        save_cam(cam_path(out_dir, image_id), rec)
    return len(todo)
