"""Path affinities from a boundary map and the random walk that spreads CAMs over them (IRN).

Source: Ahn, Cho & Kwak, "Weakly Supervised Learning of Instance Segmentation with Inter-pixel
Relations" (IRN, CVPR 2019), Sec. 3.2-3.3 and jiwoon-ahn/irn ``misc/indexing.py``:

- **Neighbourhood** (``PathIndex.get_search_paths_dst``): the half-disc of offsets (dy, dx) with
  dy = 0, 1 <= dx < r, or 1 <= dy < r, |dx| < r, dx^2 + dy^2 < r^2. For r = 5: 34 offsets, so each
  pixel has 68 neighbours plus itself = 69 non-zeros per row of the transition matrix.
- **Path** between p and p + (dy, dx): every integer point (y, x) of the bounding box of
  (0, 0)-(dy, dx) whose squared distance to the line through them is < 1 (both ends included).
- **Affinity** of a pair: ``a = 1 - max(boundary on the path)``; pixels outside the image count as
  boundary 1 (IRN pads the boundary map with 1), so no affinity crosses the border.
- **Transition**: ``A = a^beta`` (beta = 10) on the pairs, symmetric, identity on the diagonal;
  ``T = A / column sums``; IRN squares T eight times (``T^256``) and computes ``x @ T^256`` with
  ``x = cam * (1 - boundary)``. IRN builds T dense (N x N, N = pixels at stride 4: 1.07 GB fp32
  for a 512 x 512 image, ~17 GiB at 1024 x 1024).

wsss never builds the dense matrix: :func:`random_walk` applies ``y <- (y A) / d`` (A symmetric)
``steps`` times with A stored sparse (CSR, 69 non-zeros per row at r = 5), which is exactly
``x @ T^steps`` with memory linear in N. :func:`dense_random_walk` is the IRN form, kept as the
reference the tests compare against (small inputs only).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "search_offsets",
    "path_affinity",
    "transition_csr",
    "random_walk",
    "dense_affinity",
    "dense_random_walk",
    "rw_to_mask",
]


@lru_cache(maxsize=16)
def search_offsets(radius: int) -> tuple[tuple[tuple[int, int], ...], tuple[tuple[tuple[int, int], ...], ...]]:
    """Half-neighbourhood offsets and the pixel path of each (IRN ``PathIndex``).

    Args:
        radius: neighbourhood radius r >= 2 in pixels of the affinity grid (IRN: 10 for
            training, 5 for the walk).

    Returns:
        ``(offsets, paths)``: offsets (dy, dx) with (dy = 0, 1 <= dx < r) or (1 <= dy < r,
        |dx| < r), dy^2 + dx^2 < r^2; paths[k] the integer points (y, x) between (0, 0) and
        offsets[k] inclusive, at squared distance < 1 from the line through them.

    Raises:
        ValueError: radius < 2.
    """
    if int(radius) != radius or radius < 2:
        raise ValueError(f"radius must be an integer >= 2, got {radius}")
    r = int(radius)
    dirs = [(0, x) for x in range(1, r)]
    dirs += [(y, x) for y in range(1, r) for x in range(-r + 1, r) if x * x + y * y < r * r]
    paths = []
    for dy, dx in dirs:
        length_sq = dy * dy + dx * dx
        ys = range(min(0, dy), max(0, dy) + 1)
        xs = range(min(0, dx), max(0, dx) + 1)
        pts = [(y, x) for y in ys for x in xs if (dy * x - dx * y) ** 2 / length_sq < 1]
        paths.append(tuple(pts))
    return tuple(dirs), tuple(paths)


def path_affinity(boundary: torch.Tensor, radius: int) -> torch.Tensor:
    """Affinity of every pixel with each half-neighbourhood offset: 1 - max boundary on the path.

    Args:
        boundary: (H, W) or (B, H, W) float boundary probability in [0, 1] (differentiable).
        radius: neighbourhood radius (see :func:`search_offsets`).

    Returns:
        (K, H, W) or (B, K, H, W) float, K = len(offsets): ``aff[..., k, y, x]`` is the affinity
        between (y, x) and (y + dy_k, x + dx_k); 0 where the partner lies outside the image.
    """
    if boundary.dim() not in (2, 3):
        raise ValueError(f"boundary must be (H, W) or (B, H, W), got shape {tuple(boundary.shape)}")
    single = boundary.dim() == 2
    b = boundary[None] if single else boundary
    offsets, paths = search_offsets(radius)
    h, w = b.shape[-2:]
    r = int(radius)
    padded = F.pad(b[:, None].float(), (r, r, r, r), value=1.0)[:, 0]
    out = []
    for path in paths:
        m = None
        for py, px in path:
            view = padded[:, r + py : r + py + h, r + px : r + px + w]
            m = view if m is None else torch.maximum(m, view)
        out.append(1.0 - m)
    aff = torch.stack(out, dim=1)
    return aff[0] if single else aff


def transition_csr(aff: torch.Tensor, radius: int, beta: float = 10.0,
                   dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric sparse affinity matrix ``A = aff^beta`` (+ identity) and its column sums.

    Args:
        aff: (K, H, W) from :func:`path_affinity`.
        radius: the radius ``aff`` was computed with.
        beta: affinity exponent (IRN: 10).
        dtype: dtype of A and d (the power ``aff^beta`` is taken in it).

    Returns:
        ``(A, d)``: A a (N, N) sparse CSR tensor of ``dtype``, N = H * W, with 2 K + 1 non-zeros per row
        at most; d (N,) its row (= column) sums, all >= 1.
    """
    offsets, _ = search_offsets(radius)
    k, h, w = aff.shape
    if k != len(offsets):
        raise ValueError(f"aff has {k} offsets, radius {radius} has {len(offsets)}")
    n = h * w
    dev = aff.device
    yy, xx = torch.meshgrid(torch.arange(h, device=dev), torch.arange(w, device=dev), indexing="ij")
    rows, cols, vals = [torch.arange(n, device=dev)], [torch.arange(n, device=dev)], [torch.ones(n, device=dev, dtype=dtype)]
    weights = aff.to(dtype).clamp(0, 1).pow(beta)
    for i, (dy, dx) in enumerate(offsets):
        ty, tx = yy + dy, xx + dx
        ok = (ty >= 0) & (ty < h) & (tx >= 0) & (tx < w) & (weights[i] > 0)
        src = (yy * w + xx)[ok]
        dst = (ty * w + tx)[ok]
        v = weights[i][ok]
        rows += [src, dst]
        cols += [dst, src]
        vals += [v, v]
    rows_t, cols_t, vals_t = torch.cat(rows), torch.cat(cols), torch.cat(vals)
    coo = torch.sparse_coo_tensor(torch.stack([rows_t, cols_t]), vals_t, (n, n), check_invariants=False).coalesce()
    d = torch.zeros(n, device=dev, dtype=dtype).index_add_(0, rows_t, vals_t)
    return coo.to_sparse_csr(), d


def random_walk(cams: torch.Tensor, boundary: torch.Tensor, radius: int = 5, beta: float = 10.0, steps: int = 256,
                dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """IRN's random walk, sparse: ``x @ T^steps`` with ``x = cams * (1 - boundary)``.

    Memory is linear in the number of pixels (about (2 K + 1) * N non-zeros, K = 34 at r = 5).

    Args:
        cams: (C, H, W) float non-negative class maps on the boundary's grid (IRN: the stride-4
            CAMs of the image's foreground classes; no background channel is propagated).
        boundary: (H, W) boundary probability in [0, 1].
        radius: walk neighbourhood radius (IRN: 5).
        beta: affinity exponent (IRN: 10).
        steps: number of transitions (IRN: 2^8 = 256 by repeated squaring).
        dtype: accumulation type of the walk. float64 by default: 256 float32 products drift by
            ~1.6e-4 from IRN's exact result on an MSRC-sized graph (float32 dense squaring: 3e-5);
            float64 stays within 1e-6 and costs ~1.5x the time.

    Returns:
        (C, H, W) float32 propagated scores (not normalised).
    """
    if cams.dim() != 3 or cams.shape[-2:] != boundary.shape:
        raise ValueError(f"cams (C, H, W) must match boundary (H, W): {tuple(cams.shape)} vs {tuple(boundary.shape)}")
    c, h, w = cams.shape
    if c == 0:
        return cams.float().clone()
    a, d = transition_csr(path_affinity(boundary, radius), radius, beta, dtype=dtype)
    x = (cams.to(dtype) * (1.0 - boundary.to(dtype))[None]).reshape(c, h * w).t().contiguous()  # (N, C)
    inv_d = (1.0 / d)[:, None]
    for _ in range(int(steps)):
        x = torch.sparse.mm(a, x) * inv_d
    return x.t().reshape(c, h, w).float()


def dense_affinity(boundary: torch.Tensor, radius: int, beta: float = 10.0) -> torch.Tensor:
    """The dense (N, N) matrix ``A`` of IRN (``affinity_sparse2dense`` then ``pow(beta)``): the
    reference for tests; N^2 memory, small inputs only."""
    offsets, _ = search_offsets(radius)
    aff = path_affinity(boundary, radius).double()
    h, w = boundary.shape
    n = h * w
    dense = torch.eye(n, dtype=torch.float64)
    for k, (dy, dx) in enumerate(offsets):
        for y in range(h):
            for x in range(w):
                ty, tx = y + dy, x + dx
                if 0 <= ty < h and 0 <= tx < w:
                    v = aff[k, y, x] ** beta
                    dense[y * w + x, ty * w + tx] = v
                    dense[ty * w + tx, y * w + x] = v
    return dense


def dense_random_walk(cams: torch.Tensor, boundary: torch.Tensor, radius: int = 5, beta: float = 10.0, exp_times: int = 8) -> torch.Tensor:
    """IRN's dense form (``to_transition_matrix`` + ``propagate_to_edge``), float64, for tests:
    ``T = A / A.sum(0)``, squared ``exp_times`` times, ``rw = x @ T``. Returns (C, H, W)."""
    c, h, w = cams.shape
    a = dense_affinity(boundary, radius, beta)
    t = a / a.sum(dim=0, keepdim=True)
    for _ in range(exp_times):
        t = t @ t
    x = (cams.double() * (1.0 - boundary.double())[None]).reshape(c, h * w)
    return (x @ t).reshape(c, h, w).float()


def rw_to_mask(rw: torch.Tensor, keys: np.ndarray, size: tuple[int, int], bg_threshold: float = 0.25) -> np.ndarray:
    """Pseudo mask from propagated scores (IRN ``make_sem_seg_labels``).

    The scores are upsampled x4 (bilinear) and cropped to ``size``, divided by their global max
    over all classes, a constant background channel ``bg_threshold`` (IRN ``sem_seg_bg_thres``
    0.25) is prepended, and the argmax is mapped through ``[0, *keys]``.

    Args:
        rw: (C, h, w) propagated scores on the stride-4 grid (h = ceil(H / 4)).
        keys: (C,) int class values 1..num_classes of the channels.
        size: (H, W) of the image.
        bg_threshold: background score after the walk.

    Returns:
        (H, W) uint8 label map (0 background).
    """
    hgt, wid = size
    if rw.shape[0] == 0:
        return np.zeros((hgt, wid), np.uint8)
    up = F.interpolate(rw[None].float(), scale_factor=4, mode="bilinear", align_corners=False)[0, :, :hgt, :wid]
    if up.shape[-2:] != (hgt, wid):  # odd sizes: ceil(H/4)*4 >= H always, but guard anyway
        up = F.interpolate(rw[None].float(), size=(hgt, wid), mode="bilinear", align_corners=False)[0]
    up = up / up.max().clamp(min=1e-5)
    scores = torch.cat([torch.full((1, hgt, wid), float(bg_threshold)), up.cpu()], dim=0)
    lut = np.concatenate([[0], np.asarray(keys, dtype=np.int64)]).astype(np.uint8)
    return lut[scores.argmax(0).numpy()]
