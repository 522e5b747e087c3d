"""The P-NOC family as plain torch: puzzle tiling, class-specific erasure, ramps and losses.

Paper: David, Pedrini & Dias, *P-NOC: adversarial training of CAM generating networks for
robust weakly supervised semantic segmentation priors* (Sections 2.4, 3, 6.1, Algorithm 1),
built on Puzzle-CAM (Jo & Yu, ICIP 2021) and OC-CSE (Kweon et al., ICCV 2021).

Notation (paper Sec. 2.4): ``f`` is the CAM generator (a :class:`wsss.methods.base.CAMNet`);
``A = f(x)`` are its raw CAMs (B, C, h, w), pre-ReLU; logits ``GAP(A)`` (B, C); ``y`` the
multi-hot image label (B, C) over the C foreground classes; ``r`` one class present in the
image; ``psi`` (Eq. 2) = ReLU then max-normalisation; ``oc``/``noc`` a second CAM network
that scores the erased image. ``l_cls`` is the multilabel soft-margin loss (mean over classes
and images, Sec. 3.1), ``||.||_1`` the mean absolute error.

Nothing here knows about Lightning; :mod:`wsss.methods.pnoc.module` wires it into training.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from wsss.methods.base import multilabel_loss, normalize_cam

__all__ = [
    "PuzzleParams",
    "OCCSEParams",
    "POCParams",
    "PNOCParams",
    "tile",
    "merge",
    "psi",
    "class_maps",
    "erasure_map",
    "soft_erase",
    "hard_erase",
    "sample_present_class",
    "remove_class",
    "linear_ramp",
    "smooth_labels",
    "reconstruction_loss",
    "puzzle_loss",
    "cse_loss",
    "occse_loss",
    "poc_loss",
    "noc_loss",
    "noc_objective",
    "PSI_MODES",
    "NOC_OBJECTIVES",
    "NOC_BN_MODES",
    "RE_MASKS",
    "CLASS_SAMPLING",
]

PSI_MODES = ("image", "batch")
RE_MASKS = ("none", "labels")
CLASS_SAMPLING = ("uniform",)
# which loss noc's parameters descend (see :func:`noc_objective`)
NOC_OBJECTIVES = ("paper", "authors")
# noc's BatchNorm (a subset of wsss.backbones.BN_MODES: noc's affine parameters stay fixed)
NOC_BN_MODES = ("frozen", "batch_stats")


# ---------------------------------------------------------------------------------------
# Hyperparameters (read from the YAML ``method:`` section by ``method_params``)
# ---------------------------------------------------------------------------------------
def _check_range(name: str, value: float, lo: float, hi: float) -> None:
    if not lo <= float(value) <= hi:
        raise ValueError(f"method.{name} must be in [{lo}, {hi}], got {value!r}")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"method.{name} must be one of {list(choices)}, got {value!r}")


@dataclass
class PuzzleParams:
    """Puzzle-CAM (paper Eq. 3).

    A ramp ``(x_from, x_to, x_ramp)`` means: the weight rises linearly from ``x_from`` to
    ``x_to`` over the first ``x_ramp`` fraction of training, then stays at ``x_to``
    (``x_ramp = 0``: constant ``x_to``). Progress is counted in generator optimisation steps.
    """

    tiles_per_side: int = 2  # 2x2 tiles = 4 pieces (Puzzle-CAM num_pieces=4; paper Sec. 2.4.2)
    alpha_re_from: float = 0.0  # lambda_re starts at 0 (paper Sec. 6.1; authors' runner P_INIT=0.0)
    alpha_re_to: float = 4.0  # ... and reaches 4 (paper Sec. 6.1; Puzzle-CAM alpha=4; runner P_ALPHA=4.0)
    alpha_re_ramp: float = 0.5  # ... over the first half of training (paper Sec. 6.1; runner P_SCHEDULE=0.5)
    # which CAM channels the reconstruction L1 covers: "labels" = only the image's classes, mean
    # still over all B*C*h*w elements (Puzzle-CAM and P-NOC code: (re_loss * labels).mean());
    # "none" = all C classes, as Eq. 3 is printed. Default "labels" (the authors' code, which
    # produced the paper's numbers) because "none" collapsed on MSRC (seed mIoU 9.0: the L1 on
    # absent classes shrinks every CAM and classification stalls; benchmarks/pnoc-family.md)
    re_mask: str = "labels"
    label_smoothing: float = 0.0  # eps: targets y (1 - eps) + eps / 2 (paper Sec. 6.1 applies 0.1 to P-OC/P-NOC only)

    def __post_init__(self) -> None:
        if int(self.tiles_per_side) < 1:
            raise ValueError(f"method.tiles_per_side must be >= 1, got {self.tiles_per_side!r}")
        _check_range("alpha_re_ramp", self.alpha_re_ramp, 0.0, 1.0)
        _check_choice("re_mask", self.re_mask, RE_MASKS)
        _check_range("label_smoothing", self.label_smoothing, 0.0, 0.999)


@dataclass
class OCCSEParams:
    """OC-CSE (paper Eq. 4-6): class-specific soft erasure scored by a frozen ordinary classifier."""

    # weights of the ordinary classifier oc: the CAM baseline's model.safetensors
    # (OC-CSE: a separately trained CAM network, Kweon et al. 2021; P-NOC Sec. 6.1: vanilla CAM + RandAugment)
    # null: filled by the pipeline from the recipe's `requires: {oc: <cam config>}` run
    oc_checkpoint: str | None = None
    lambda_cse_from: float = 0.3  # lambda_cse starts at 0.3 (paper Sec. 6.1; runner OC_INIT=0.3)
    lambda_cse_to: float = 1.0  # ... and reaches 1 (paper Sec. 6.1; runner OC_ALPHA=1.0)
    lambda_cse_ramp: float = 1.0  # ... at the end of training (paper Sec. 6.1 "throughout training"; runner OC_SCHEDULE=1.0)
    # normalisation of psi for the soft erasure: "image" = each image's map by its own max
    # (paper Eq. 2); "batch" = by the max over the whole batch's selected maps (OC-CSE code
    # `mask / (mask.max() + 1e-5)`; P-NOC code soft_mask_images(globalnorm=True))
    psi_norm: str = "image"
    psi_eps: float = 1e-5  # added to the max before dividing (OC-CSE / P-NOC code)
    class_sampling: str = "uniform"  # r ~ uniform over the image's classes (paper Sec. 2.4.3; runner OC_STRATEGY=random)
    label_smoothing: float = 0.0  # see PuzzleParams.label_smoothing

    def __post_init__(self) -> None:
        _check_range("lambda_cse_ramp", self.lambda_cse_ramp, 0.0, 1.0)
        _check_choice("psi_norm", self.psi_norm, PSI_MODES)
        _check_choice("class_sampling", self.class_sampling, CLASS_SAMPLING)
        _check_range("psi_eps", self.psi_eps, 0.0, 1.0)
        _check_range("label_smoothing", self.label_smoothing, 0.0, 0.999)


@dataclass
class POCParams(PuzzleParams, OCCSEParams):
    """P-OC (paper Eq. 8) = Puzzle-CAM + OC-CSE (+ label smoothing, Sec. 6.1)."""

    label_smoothing: float = 0.1  # P-OC+LS (paper Sec. 6.1 and Table 2; authors' runner LABELSMOOTHING=0.1)

    def __post_init__(self) -> None:
        PuzzleParams.__post_init__(self)
        OCCSEParams.__post_init__(self)


@dataclass
class PNOCParams(POCParams):
    """P-NOC (paper Eq. 9-10, Algorithm 1): P-OC whose classifier noc is trained adversarially."""

    k_noc: int = 1  # noc is updated every k_noc generator steps (Algorithm 1 line 7; runner OC_TRAIN_INT_STEPS=1)
    delta_noc: float = 0.2  # hard erasure keeps pixels with psi(A_r) <= delta_noc (Sec. 6.1; runner OC_TRAIN_MASK_T=0.2)
    lambda_noc_from: float = 0.0  # lambda_noc starts at 0 (Sec. 6.1 "linearly increases"; runner OW_INIT=0.0)
    lambda_noc_to: float = 1.0  # ... and reaches 1 (runner OW=1.0; the script's argparse default is 0.5)
    lambda_noc_ramp: float = 1.0  # ... at the end of training (Sec. 6.1; runner OW_SCHEDULE=1.0)
    # normalisation of psi for the hard erasure: per image (P-NOC code hard_mask_images
    # divides by adaptive_max_pool2d, i.e. each image's own max; paper Eq. 2)
    noc_psi_norm: str = "image"
    # starting weights of noc; null = oc_checkpoint (paper Sec. 3.2: noc starts as the pretrained oc)
    noc_checkpoint: str | None = None
    # noc learning rate; null = optim.lr (P-NOC code builds both optimisers with the same --lr)
    noc_lr: float | None = None
    # what noc minimises (see noc_objective): "paper" = L_noc only, noc shielded from the
    # generator's loss (Algorithm 1 "fix noc and train f", Eq. 10); "authors" = the generator's
    # loss also reaches noc, which then descends lambda_cse L_cse + L_noc (lucasdavid/PNOC
    # scripts/cam/train_pnoc.py: cg_loss.backward() reaches ocnet, only cgopt.zero_grad() before
    # ocopt.step()). Default "paper" until the val split chooses between them.
    noc_objective: str = "paper"
    # noc's BatchNorm: "frozen" = running statistics and affine fixed in every mode (lucasdavid/PNOC
    # train_pnoc.py builds ocnet with mode="fix", i.e. FixedBatchNorm; wsss before the plug-in frame
    # did the same through the frozen-BN train() override). "batch_stats" = the generator's mode:
    # noc's step normalises the hard-erased batch by its own statistics and moves the running
    # statistics that the generator phase then uses (what the frame ran until 2026-12-07).
    noc_bn_mode: str = "frozen"

    def __post_init__(self) -> None:
        POCParams.__post_init__(self)
        if int(self.k_noc) < 1:
            raise ValueError(f"method.k_noc must be an integer >= 1, got {self.k_noc!r}")
        _check_range("delta_noc", self.delta_noc, 0.0, 1.0)
        _check_range("lambda_noc_ramp", self.lambda_noc_ramp, 0.0, 1.0)
        _check_choice("noc_psi_norm", self.noc_psi_norm, PSI_MODES)
        _check_choice("noc_objective", self.noc_objective, NOC_OBJECTIVES)
        _check_choice("noc_bn_mode", self.noc_bn_mode, NOC_BN_MODES)
        if self.noc_lr is not None and float(self.noc_lr) <= 0:
            raise ValueError(f"method.noc_lr must be positive or null, got {self.noc_lr!r}")


# ---------------------------------------------------------------------------------------
# Puzzle tiling
# ---------------------------------------------------------------------------------------
def tile(x: torch.Tensor, n: int = 2) -> torch.Tensor:
    """Split every image into an n x n grid of equal tiles, stacked along the batch axis.

    Args:
        x: (B, K, H, W) any dtype; H and W must be divisible by ``n``.
        n: tiles per side (Puzzle-CAM: 2, i.e. 4 pieces).

    Returns:
        (n*n*B, K, H/n, W/n): tile-major order, ``out[t*B + b]`` is tile ``t`` of image ``b``,
        tiles numbered row by row (top-left, top-right, bottom-left, bottom-right for n = 2),
        as Puzzle-CAM's ``tile_features``.

    Raises:
        ValueError: x is not 4-D or H/W is not divisible by n.
    """
    if x.dim() != 4:
        raise ValueError(f"tile expects a (B, K, H, W) tensor, got shape {tuple(x.shape)}")
    b, k, h, w = x.shape
    if h % n or w % n:
        raise ValueError(f"tile: height {h} and width {w} must be divisible by {n}")
    th, tw = h // n, w // n
    # (B, K, n, th, n, tw) -> (n, n, B, K, th, tw)
    t = x.reshape(b, k, n, th, n, tw).permute(2, 4, 0, 1, 3, 5)
    return t.reshape(n * n * b, k, th, tw)


def merge(tiles: torch.Tensor, batch_size: int, n: int = 2) -> torch.Tensor:
    """Inverse of :func:`tile`: reassemble n x n tiles into whole maps.

    Args:
        tiles: (n*n*B, K, h, w) in the order produced by :func:`tile`.
        batch_size: B.
        n: tiles per side.

    Returns:
        (B, K, n*h, n*w); ``merge(tile(x, n), B, n)`` equals ``x`` exactly.

    Raises:
        ValueError: the leading dimension is not n*n*batch_size.
    """
    if tiles.dim() != 4 or tiles.shape[0] != n * n * batch_size:
        raise ValueError(f"merge expects ({n * n * batch_size}, K, h, w) tiles, got shape {tuple(tiles.shape)}")
    _, k, h, w = tiles.shape
    t = tiles.reshape(n, n, batch_size, k, h, w).permute(2, 3, 0, 4, 1, 5)
    return t.reshape(batch_size, k, n * h, n * w)


# ---------------------------------------------------------------------------------------
# psi, erasure, class sampling
# ---------------------------------------------------------------------------------------
def psi(maps: torch.Tensor, mode: str = "image", eps: float = 1e-5) -> torch.Tensor:
    """Normalisation psi of paper Eq. 2: ``ReLU(A) / (max ReLU(A) + eps)``, values in [0, 1).

    Args:
        maps: (B, ..., H, W) float activation maps (raw CAMs).
        mode: ``"image"``: each map divided by its own spatial max (Eq. 2; every leading
            index (b, ...) separately); ``"batch"``: all maps divided by the single max over
            the whole tensor (OC-CSE and P-NOC code for the soft erasure mask).
        eps: added to the max (1e-5 in the authors' code); keeps all-negative maps at 0.

    Returns:
        Tensor of the same shape and dtype, in [0, 1). Differentiable.

    Raises:
        ValueError: unknown mode.
    """
    _check_choice("psi_norm", mode, PSI_MODES)
    if mode == "image":
        return normalize_cam(maps, eps)
    a = F.relu(maps)
    return a / (a.amax() + eps)


def class_maps(cams: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """The CAM of class ``r[b]`` of every image: ``A_b^{r_b}``.

    Args:
        cams: (B, C, h, w) raw CAMs.
        r: (B,) int64 class indices in [0, C).

    Returns:
        (B, h, w), differentiable w.r.t. ``cams``.
    """
    idx = r.to(device=cams.device, dtype=torch.long).view(-1, 1, 1, 1).expand(-1, 1, *cams.shape[-2:])
    return cams.gather(1, idx).squeeze(1)


def erasure_map(
    cams: torch.Tensor, r: torch.Tensor, size: tuple[int, int], mode: str = "image", eps: float = 1e-5
) -> torch.Tensor:
    """``psi(A^r)`` at image resolution: the map of class r, bilinearly upsampled
    (``align_corners=False``, as the OC-CSE/P-NOC code), then ReLU + max-normalised.

    Args:
        cams: (B, C, h, w) raw CAMs of the generator.
        r: (B,) class index per image (all valid, in [0, C)).
        size: (H, W) of the images, pixels.
        mode, eps: see :func:`psi`.

    Returns:
        (B, H, W) float in [0, 1), differentiable w.r.t. ``cams``.
    """
    m = class_maps(cams, r).unsqueeze(1)
    if tuple(m.shape[-2:]) != tuple(size):
        m = F.interpolate(m, size=tuple(size), mode="bilinear", align_corners=False)
    return psi(m.squeeze(1), mode=mode, eps=eps)


def soft_erase(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Differentiable class-specific erasure of Eq. 4-5: ``x o (1 - psi(A^r))``.

    Args:
        images: (B, 3, H, W) normalised images (0 = the dataset mean colour).
        mask: (B, H, W) ``psi(A^r)`` in [0, 1] (see :func:`erasure_map`).

    Returns:
        (B, 3, H, W); gradients flow into ``mask`` (the generator's CAMs).
    """
    return images * (1.0 - mask).unsqueeze(1)


def hard_erase(images: torch.Tensor, mask: torch.Tensor, delta: float) -> torch.Tensor:
    """Hard erasure that noc learns from (Algorithm 1 line 9, Eq. 10):
    ``x o (psi(A^r) <= delta)``, i.e. pixels with ``psi > delta`` are set to 0 (mean colour).

    Args:
        images: (B, 3, H, W) normalised images.
        mask: (B, H, W) ``psi(A^r)`` in [0, 1].
        delta: delta_noc (0.2 in the paper).

    Returns:
        (B, 3, H, W), no gradient into ``mask`` (the threshold is not differentiable).
    """
    keep = (mask.detach() <= delta).to(images.dtype)
    return images * keep.unsqueeze(1)


def sample_present_class(labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw one present class r per image, uniformly among its classes (paper Sec. 2.4.3).

    Args:
        labels: (B, C) multi-hot labels (a class is present where the value > 0.5).
        generator: CPU ``torch.Generator`` for reproducible draws (None: global RNG).

    Returns:
        (B,) int64 on ``labels.device``: the class index, or -1 for an image without any
        foreground class (MSRC has such images; callers skip them in the CSE/NOC terms).
    """
    present = (labels.detach() > 0.5).to("cpu", torch.float64)
    b = present.shape[0]
    out = torch.full((b,), -1, dtype=torch.long)
    u = torch.rand(b, generator=generator, dtype=torch.float64)
    counts = present.sum(dim=1)
    for i in range(b):
        n = int(counts[i])
        if n == 0:
            continue
        j = min(int(u[i] * n), n - 1)  # uniform index among the n present classes
        out[i] = torch.nonzero(present[i]).view(-1)[j]
    return out.to(labels.device)


def remove_class(labels: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """``y \\ {r}``: the labels with class ``r[b]`` set to 0 in row b (rows with r = -1 unchanged).

    Args:
        labels: (B, C) multi-hot float.
        r: (B,) int64 class indices or -1.

    Returns:
        A new (B, C) tensor.
    """
    out = labels.clone()
    rows = torch.nonzero(r >= 0).view(-1)
    out[rows, r[rows]] = 0
    return out


# ---------------------------------------------------------------------------------------
# Schedules and label smoothing
# ---------------------------------------------------------------------------------------
def linear_ramp(progress: float, start: float, end: float, start_value: float, end_value: float) -> float:
    """Piecewise-linear ramp used for lambda_re, lambda_cse and lambda_noc (paper Sec. 6.1).

    Args:
        progress: fraction of training done, in [0, 1].
        start, end: fractions of training where the ramp begins and ends (``start <= end``).
        start_value, end_value: the weight before ``start`` and after ``end``.

    Returns:
        ``start_value`` for progress <= start, ``end_value`` for progress >= end, linear in
        between; ``end_value`` whenever ``end <= start`` (a zero-length ramp, as the authors'
        ``linear_schedule`` with rate 0).
    """
    if end <= start:
        return float(end_value)
    t = min(1.0, max(0.0, (float(progress) - start) / (end - start)))
    return float(start_value + (end_value - start_value) * t)


def smooth_labels(labels: torch.Tensor, eps: float) -> torch.Tensor:
    """Label smoothing for the multilabel loss (Mueller et al. 2019; paper Sec. 6.1):
    ``y (1 - eps) + eps / 2`` (eps = 0.1: 1 -> 0.95, 0 -> 0.05).

    Args:
        labels: (B, C) targets in [0, 1].
        eps: smoothing in [0, 1).
    """
    if eps == 0:
        return labels
    return labels * (1.0 - eps) + eps / 2.0


# ---------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------
def reconstruction_loss(cams: torch.Tensor, cams_re: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """``||A - A^re||_1`` of Eq. 3 as a mean absolute error over (B, C, h, w).

    Args:
        cams: (B, C, h, w) raw CAMs of the whole image.
        cams_re: (B, C, h, w) merged tile CAMs.
        labels: None (all classes, Eq. 3 as printed) or (B, C) multi-hot: the error of absent
            classes is zeroed before the mean over all elements (Puzzle-CAM / P-NOC code).
    """
    err = (cams - cams_re).abs()
    if labels is not None:
        err = err * labels.to(err.dtype)[:, :, None, None]
    return err.mean()


def puzzle_loss(
    logits: torch.Tensor,
    cams: torch.Tensor,
    cams_re: torch.Tensor,
    targets: torch.Tensor,
    alpha_re: float,
    re_labels: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Puzzle-CAM objective, paper Eq. 3:
    ``L_P = l_cls(p, y) + l_cls(p^re, y) + lambda_re ||A - A^re||_1`` with ``p^re = GAP(A^re)``.

    Args:
        logits: (B, C) ``GAP(A)`` of the whole image.
        cams: (B, C, h, w) ``A``; cams_re: (B, C, h, w) ``A^re = merge(f(tile(x)))``.
        targets: (B, C) (possibly smoothed) labels.
        alpha_re: lambda_re at this step.
        re_labels: see :func:`reconstruction_loss`.

    Returns:
        (loss, {"cls", "re_cls", "re"}) with the unweighted terms (detached) for logging.
    """
    cls = multilabel_loss(logits, targets)
    re_cls = multilabel_loss(cams_re.mean(dim=(2, 3)), targets)
    re = reconstruction_loss(cams, cams_re, re_labels)
    loss = cls + re_cls + alpha_re * re
    return loss, {"cls": cls.detach(), "re_cls": re_cls.detach(), "re": re.detach()}


def cse_loss(oc_logits: torch.Tensor, targets_without_r: torch.Tensor) -> torch.Tensor:
    """The class-specific erasing term ``l_cls(p^oc, y \\ {r})`` of Eq. 6, 8 and 9 (unweighted).

    Args:
        oc_logits: (N, C) logits of oc/noc on the softly erased images (N images that have a
            sampled class; may be 0).
        targets_without_r: (N, C) targets with the erased class removed (possibly smoothed).

    Returns:
        Scalar; 0 when N = 0 (images without any foreground class contribute nothing).
    """
    if oc_logits.shape[0] == 0:
        return oc_logits.sum() * 0.0
    return multilabel_loss(oc_logits, targets_without_r)


def occse_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    oc_logits: torch.Tensor,
    oc_targets: torch.Tensor,
    lambda_cse: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """OC-CSE objective, paper Eq. 6: ``L = l_cls(p, y) + lambda_cse l_cls(p^oc, y \\ {r})``.

    Args:
        logits: (B, C) generator logits; targets: (B, C).
        oc_logits: (N, C) oc logits on the erased images; oc_targets: (N, C) ``y \\ {r}``.
        lambda_cse: weight at this step.

    Returns:
        (loss, {"cls", "cse"}) unweighted terms, detached.
    """
    cls = multilabel_loss(logits, targets)
    cse = cse_loss(oc_logits, oc_targets)
    return cls + lambda_cse * cse, {"cls": cls.detach(), "cse": cse.detach()}


def poc_loss(
    logits: torch.Tensor,
    cams: torch.Tensor,
    cams_re: torch.Tensor,
    targets: torch.Tensor,
    oc_logits: torch.Tensor,
    oc_targets: torch.Tensor,
    alpha_re: float,
    lambda_cse: float,
    re_labels: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """P-OC objective, paper Eq. 8 (also the generator's objective in P-NOC, with noc as oc):
    ``L = l_cls(p, y) + l_cls(p^re, y) + lambda_re ||A - A^re||_1 + lambda_cse l_cls(p^oc, y \\ {r})``.

    Returns:
        (loss, {"cls", "re_cls", "re", "cse"}) unweighted terms, detached.
    """
    loss, logs = puzzle_loss(logits, cams, cams_re, targets, alpha_re, re_labels)
    cse = cse_loss(oc_logits, oc_targets)
    logs["cse"] = cse.detach()
    return loss + lambda_cse * cse, logs


def noc_loss(noc_logits: torch.Tensor, targets: torch.Tensor, lambda_noc: float) -> torch.Tensor:
    """The noc objective, paper Eq. 10: ``lambda_noc l_cls(p^noc, y)`` where ``p^noc`` scores the
    hard-erased image ``x o (psi(A^r) <= delta_noc)`` against the *full* label y.

    Args:
        noc_logits: (N, C) noc logits on the hard-erased images (N may be 0).
        targets: (N, C) full (possibly smoothed) labels.
        lambda_noc: weight at this step.

    Returns:
        Scalar; 0 when N = 0.
    """
    if noc_logits.shape[0] == 0:
        return noc_logits.sum() * 0.0
    return lambda_noc * multilabel_loss(noc_logits, targets)


def noc_objective(noc_term: torch.Tensor, cse_term: torch.Tensor, lambda_cse: float, objective: str) -> torch.Tensor:
    """The loss whose gradient w.r.t. noc's parameters is noc's update direction in P-NOC.

    - ``"paper"`` (Algorithm 1, lines 3-11: "fix noc and train f", then "fix f and train noc";
      Eq. 10): ``L = L_noc = lambda_noc l_cls(noc(x o (psi(A^r) <= delta_noc)), y)``; noc is
      shielded from the generator's loss.
    - ``"authors"`` (lucasdavid/PNOC ``scripts/cam/train_pnoc.py``: ``cg_loss.backward()`` also
      reaches ``ocnet``, only ``cgopt.zero_grad()`` runs before ``ocopt.step()``):
      ``L = lambda_cse l_cls(noc(x o (1 - psi(A^r))), y \\ {r}) + L_noc``. The first term is the
      only part of the generator's P-OC loss (Eq. 8-9) that depends on noc, so
      ``d L / d theta_noc = d L_gen / d theta_noc + d L_noc / d theta_noc``: noc *cooperates* with f
      on the softly erased image (it learns to miss r there) and is *adversarial* on the hard
      erased one (it learns to find r outside f's activation).

    Training does not build this sum: it reproduces the authors' mechanism (the generator's
    backward deposits ``d L_gen / d theta_noc`` in noc's ``.grad``, noc's own backward adds
    ``d L_noc / d theta_noc``, then noc steps; with ``k_noc > 1`` the generator part accumulates
    over the ``k_noc`` generator steps since noc's last step, as in the authors' code).
    :class:`wsss.methods.pnoc.module.PNOCModule` logs this value (``train/noc_objective``) and
    the tests check noc's accumulated gradient against the autograd gradient of this function.

    Args:
        noc_term: scalar ``L_noc`` (already weighted by lambda_noc, see :func:`noc_loss`).
        cse_term: scalar unweighted ``l_cls(noc(x o (1 - psi(A^r))), y \\ {r})`` (:func:`cse_loss`
            with noc as the classifier); ignored for ``"paper"``.
        lambda_cse: lambda_cse at this step (>= 0).
        objective: ``"paper"`` or ``"authors"``.

    Returns:
        Scalar tensor.

    Raises:
        ValueError: unknown objective.
    """
    _check_choice("noc_objective", objective, NOC_OBJECTIVES)
    if objective == "paper":
        return noc_term
    return lambda_cse * cse_term + noc_term
