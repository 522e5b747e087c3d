"""Multi-scale + flip CAM inference (IRN, Ahn et al. 2019, ``make_cam``).

For every scale s the image is resized to (round(sH), round(sW)); the view and its
horizontal flip run in one batch; each view's CAMs of the image's classes go through ReLU,
the flipped one is flipped back, and the two are added. The per-scale maps are resized to
the full resolution (H, W) and to the stride-4 size (ceil(H/4), ceil(W/4)) and *summed* over
scales (not averaged). Finally each class map is divided by its own spatial max + 1e-5,
giving values in [0, 1).
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from wsss.data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize
from wsss.inference.store import CamRecord, cam_path, save_cam
from wsss.methods.base import normalize_cam

__all__ = ["multiscale_cam", "normalize_cam", "infer_split"]


@torch.no_grad()
def multiscale_cam(
    net: nn.Module,
    image: np.ndarray,
    class_indices: Sequence[int],
    scales: Sequence[float] = (1.0, 0.5, 1.5, 2.0),
    flip: bool = True,
    device: torch.device | str = "cpu",
    channels_last: bool = True,
    bf16: bool = False,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> tuple[np.ndarray, np.ndarray]:
    """TTA CAMs of one image.

    Args:
        net: CAM generator, ``net(x) -> (logits (B, C), cams (B, C, h, w))``, in eval mode.
        image: (H, W, 3) uint8 RGB.
        class_indices: 0-based foreground class indices (into the C output channels) to keep.
        scales: resize factors; each view is added, not averaged (IRN).
        flip: also run the horizontal flip of every scale.
        device: where to run.
        channels_last: NHWC memory format (same outputs, faster on CPU).
        bf16: bfloat16 autocast (faster; changes CAMs noticeably, off by default).
        mean, std: input normalisation on the 0..1 scale; must be the one the network was
            trained with (``model.normalization``).

    Returns:
        ``(high_res (K, H, W), strided (K, ceil(H/4), ceil(W/4)))`` float32 in [0, 1),
        K = len(class_indices).
    """
    h, w = image.shape[:2]
    k = len(class_indices)
    strided_size = (math.ceil(h / 4), math.ceil(w / 4))
    if k == 0:
        return np.zeros((0, h, w), np.float32), np.zeros((0, *strided_size), np.float32)
    idx = torch.as_tensor(list(class_indices), dtype=torch.long, device=device)
    x0 = normalize(image, mean, std).unsqueeze(0).to(device)
    high = torch.zeros((k, h, w), device=device)
    strided = torch.zeros((k, *strided_size), device=device)
    autocast = torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    for s in scales:
        size = (max(1, round(h * s)), max(1, round(w * s)))
        x = x0 if size == (h, w) else F.interpolate(x0, size=size, mode="bilinear", align_corners=False)
        if flip:
            x = torch.cat([x, x.flip(-1)], dim=0)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast:
            _, cams = net(x)
        cams = F.relu(cams.float()[:, idx])
        cam = cams[0] + cams[1].flip(-1) if flip else cams[0]
        cam = cam.unsqueeze(0)
        high += F.interpolate(cam, size=(h, w), mode="bilinear", align_corners=False)[0]
        strided += F.interpolate(cam, size=strided_size, mode="bilinear", align_corners=False)[0]
    return normalize_cam(high).cpu().numpy(), normalize_cam(strided).cpu().numpy()


def infer_split(
    net: nn.Module,
    layout,
    cam_dir: str | Path,
    *,
    scales: Sequence[float] = (1.0, 0.5, 1.5, 2.0),
    flip: bool = True,
    device: torch.device | str = "cpu",
    channels_last: bool = True,
    bf16: bool = False,
    progress: bool = True,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    rank: int = 0,
    world_size: int = 1,
) -> int:
    """Write ``<cam_dir>/<id>.npz`` for every id of ``layout`` that has none yet (resumable).

    Only the classes of each image's label are computed and stored. With ``world_size > 1``
    (DDP inference) this process handles ``layout.ids[rank::world_size]`` only; the other
    ranks write the rest (the caller synchronises them with a barrier).

    Args:
        net, scales, flip, device, channels_last, bf16, mean, std: see :func:`multiscale_cam`.
        layout: dataset split (``ids``, ``label(id)`` float32 (C,), ``image(id)`` uint8 (H, W, 3)).
        cam_dir: output folder (created).
        progress: show a tqdm bar.
        rank, world_size: this process's share of the ids (``0 <= rank < world_size``).

    Returns:
        number of CAM files written by this call.

    Raises:
        ValueError: ``rank`` / ``world_size`` out of range.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"infer_split: rank {rank} is not in [0, world_size={world_size})")
    cam_dir = Path(cam_dir)
    cam_dir.mkdir(parents=True, exist_ok=True)
    net = net.to(device).eval()
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    todo = [i for i in list(layout.ids)[rank::world_size] if not cam_path(cam_dir, i).is_file()]
    written = 0
    for image_id in tqdm(todo, desc=f"CAMs {layout.split}", disable=not progress, unit="img"):
        label = layout.label(image_id)
        fg = np.nonzero(label > 0.5)[0]
        image = layout.image(image_id)
        high, strided = multiscale_cam(net, image, fg.tolist(), scales, flip, device, channels_last, bf16, mean, std)
        save_cam(cam_path(cam_dir, image_id), CamRecord(keys=fg + 1, high_res=high, strided=strided))
        written += 1
    return written
