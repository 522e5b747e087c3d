"""CPN as plain torch: complementary patch pairs, the triplet losses, PCM and PRCM.

Paper: Zhang, Gu, Zhang & Dai, *Complementary Patch for Weakly Supervised Semantic
Segmentation* (ICCV 2021), Sections 3.1-3.4 and 4.1, Eq. 6 and 9-17. Facts about the authors'
code (Ferenas/CPN ``train_cpn.py``, ``network/resnet38_CPN.py``, ``network/da_atten.py``,
``tool/imutils.py``, ``infer_cam.py``) were read, not copied; where code and paper differ both
forms are here, the paper's as the default (:class:`CPNParams` names each option).

Notation. ``B`` images, ``C`` foreground classes, ``K = C + 1`` channels with the background
first, CAM grid ``h x w`` (``N = h w`` pixels), crop ``S x S``. ``Y`` raw CAM of the shared
classifier (Eq. 1), ``Y~`` the refined CAM (PCM + PRCM). Subscripts ``o``, ``h``, ``hbar`` are
the branches of the triplet: the image ``I`` and its complementary pair ``I_h``, ``I_hbar``
(``I_h + I_hbar = I``). ``lambda`` (per image) weighs ``I_h``; ``lambda_bar = 1 - lambda``
weighs ``I_hbar`` (Eq. 6). ``||.||_1`` is the mean absolute error over every element (the
authors' ``torch.mean(torch.abs(...))``).

Patch masks (Sec. 3.2) are computed for a whole batch with tensor look-ups: every patch (grid
cell or superpixel) gets one random bit, and ``table[patch id]`` spreads it over the pixels
(the authors' per-pixel Python loop is replaced by one ``gather``).

Nothing here knows about Lightning; :mod:`wsss.methods.cpn.module` wires it into training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from wsss.backbones import Backbone
from wsss.methods.base import init_classifier, multilabel_loss, normalize_cam

__all__ = [
    "CPNParams",
    "PatchMasks",
    "CPNNet",
    "grid_patch_ids",
    "scaled_grid_sizes",
    "complementary_masks",
    "branch_weights",
    "cp_pair",
    "normalize_cams",
    "with_background",
    "max_onehot",
    "refinement_input",
    "pcm_affinity",
    "pcm",
    "object_region_relation",
    "prcm",
    "classification_loss",
    "tcp_term",
    "tcp_loss",
    "ohem_mean",
    "cpcr_loss",
    "min_pool_loss",
    "cpn_loss",
    "PATCH_STRATEGIES",
    "SAMPLINGS",
    "LAMBDA_MODES",
    "CPCR_FORMS",
    "CAM_NORMS",
    "PRCM_FORMS",
    "INFERENCE_CAMS",
    "EPS",
]

PATCH_STRATEGIES = ("superpixels", "grid")
SAMPLINGS = ("bernoulli", "with_replacement")
LAMBDA_MODES = ("pixels", "patches")
CPCR_FORMS = ("paper", "authors")
CAM_NORMS = ("max", "minmax")
PRCM_FORMS = ("paper", "authors")
INFERENCE_CAMS = ("refined", "raw")
#: the authors' epsilon in every normalisation (``1e-5``)
EPS = 1e-5
#: channels of the projected stage-3 / stage-4 features in X (paper Sec. 4.1, SEAM)
PROJ_CHANNELS = (64, 128)
#: output channels of g (authors' ``f9``) and phi (``f10``)
EMBED_CHANNELS = 192


# ---------------------------------------------------------------------------------------
# Hyperparameters (read from the YAML ``method:`` section by ``method_params``)
# ---------------------------------------------------------------------------------------
def _choice(key: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"method.{key} must be one of {list(choices)}, got {value!r}")


def _number(key: str, value: object, lo: float, hi: float, *, lo_open: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok:
        v = float(value)
        ok = (v > lo if lo_open else v >= lo) and v <= hi
    if not ok:
        bound = f"({lo}, {hi}]" if lo_open else f"[{lo}, {hi}]"
        raise ValueError(f"method.{key} must be a number in {bound}, got {value!r}")


def _flag(key: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"method.{key} must be true or false, got {value!r}")


@dataclass
class CPNParams:
    """CPN hyperparameters (``method:`` keys); every default is the paper's, the authors' code
    values are the documented alternatives (README "Options").

    Attributes:
        patches: ``"superpixels"`` (Super-pixel Patch, Sec. 3.2; the paper's Tables 1-4 and the
            authors' ``hide_patch_ss`` default) or ``"grid"`` (Grid Patch, Sec. 3.2).
        n_segments: SLIC S_N (paper Fig. 6 best: 200; authors' code: 300).
        compactness: SLIC compactness (authors' code: 10; the paper does not say).
        grid_sizes: the set K of grid cell sizes, one drawn per image (paper Fig. 7 best
            {56, 112} at crop 448; authors' ``hide_patch``: {224, 448}, the paper's worst).
        grid_reference_crop: crop size at which ``grid_sizes`` are given; cell sizes are scaled by
            ``data.crop_size / grid_reference_crop`` (448: the paper's crop). null: pixels as given.
        hide_prob: p_h, probability that a patch is hidden in I_h (paper Sec. 3.2 and Table 4: 0.5).
        sampling: ``"bernoulli"`` (paper Sec. 3.2: each patch hidden with p_h) or
            ``"with_replacement"`` (authors' ``hide_patch_ss``: floor(p_h n) ids drawn with
            replacement among the n patches, so fewer than p_h are hidden; superpixels only -
            the authors' grid code is Bernoulli).
        lambda_mode: ``"pixels"`` (lambda = visible fraction of the image's pixels in I_h: the
            paper's gloss of Sec. 3.1 "decided by the quantity of uncovered pixels" and the
            authors' superpixel code) or ``"patches"`` (``1 - N_h / N`` counted in patches, Sec. 3.1
            as printed and the authors' grid code).
        cam_norm: normalisation of the CAMs entering the losses: ``"max"`` (paper Sec. 3.4,
            ``Y / max Y``) or ``"minmax"`` (authors' ``max_norm``: ``relu(Y - min - eps) / (max - min + eps)``).
        bg_alpha: alpha of Eq. 16, background ``(1 - max_c Y^c)^alpha`` (paper: 1).
        tcp_refined_detach: stop the gradient through the pair's refined CAMs in the second
            term of Eq. 14 (paper Sec. 3.1: the pair's CAMs are detached; authors' code: only in
            the raw term, so false).
        cpcr_form: ``"paper"`` (Eq. 15 as printed: targets ``Y_o - lambda Y_h`` with per-branch
            background, detached) or ``"authors"`` (``max_onehot`` of the detached difference, each
            background recomputed after the lambda scaling).
        ohem_ratio: fraction of the largest per-element L_cpcr losses kept per image (paper
            Sec. 4.1 and authors' code: 0.2); 1.0 = plain mean (Table 2 row without OHEM).
        w_cls, w_tcp, w_cpcr: loss weights w1, w2, w3 of Eq. 17 (paper: 1, 1, 1).
        min_pool_weight: weight of the authors' extra SEAM-style min-pool loss on the refined
            CAMs (``adaptive_min_pooling_loss`` in ``train_cpn.py``: 1, averaged over branches);
            the paper has no such term: 0.
        min_pool_ratio: fraction of lowest-scoring pixels in that loss (authors: 1/4).
        pcm_stages: the two backbone stages (indices into ``Backbone.stage_channels``, negative
            from the end) projected to 64 / 128 channels for X (paper Sec. 4.1 "stage 3 and 4";
            ResNet-50 [-3, -2] = 512 / 1024 channels as SEAM's ResNet-50 and ResNet-38's conv4/conv5).
        prcm_form: ``"paper"`` (Eq. 11: phi applied to each region's C1 vector, ``phi(Z)`` of
            shape (K, 192)) or ``"authors"`` (``resnet38_CPN.PRCM``: the (192, K) output of f10 is
            reshaped to (K, 192) without transposing), or ``"none"``: no PRCM, the refined CAM is
            PCM's alone (the rows of the paper's Table 2 before "+ PRCM"; ``phi`` is not built).
        inference_cam: what ``forward`` returns as CAMs: ``"refined"`` (paper Sec. 3.4: Y~_o is
            used for segmentation; authors' ``infer_cam.py``) or ``"raw"`` (the classifier CAM Y_o).
        superpixel_cache: folder for the cached SLIC maps (a relative path is relative to the working
            directory; maps are shared by every run that names it); null = ``<output_dir>/cache/superpixels``.
        superpixel_workers: processes that compute them; null = every available core.

    Raises:
        ValueError: ``method.<key> must be ...`` for an invalid value.
    """

    patches: str = "superpixels"
    n_segments: int = 200
    compactness: float = 10.0
    grid_sizes: list = field(default_factory=lambda: [56, 112])
    grid_reference_crop: int | None = 448
    hide_prob: float = 0.5
    sampling: str = "bernoulli"
    lambda_mode: str = "pixels"
    cam_norm: str = "max"
    bg_alpha: float = 1.0
    tcp_refined_detach: bool = True
    cpcr_form: str = "paper"
    ohem_ratio: float = 0.2
    w_cls: float = 1.0
    w_tcp: float = 1.0
    w_cpcr: float = 1.0
    min_pool_weight: float = 0.0
    min_pool_ratio: float = 0.25
    pcm_stages: list = field(default_factory=lambda: [-3, -2])
    prcm_form: str = "paper"
    inference_cam: str = "refined"
    superpixel_cache: str | None = None
    superpixel_workers: int | None = None

    def __post_init__(self) -> None:
        _choice("patches", self.patches, PATCH_STRATEGIES)
        if isinstance(self.n_segments, bool) or not isinstance(self.n_segments, int) or self.n_segments < 1:
            raise ValueError(f"method.n_segments must be an integer >= 1, got {self.n_segments!r}")
        _number("compactness", self.compactness, 0.0, math.inf, lo_open=True)
        sizes = self.grid_sizes
        if (not isinstance(sizes, (list, tuple)) or not sizes
                or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes)):
            raise ValueError(f"method.grid_sizes must be a non-empty list of integers >= 1, got {sizes!r}")
        ref = self.grid_reference_crop
        if ref is not None and (isinstance(ref, bool) or not isinstance(ref, int) or ref < 1):
            raise ValueError(f"method.grid_reference_crop must be an integer >= 1 or null, got {ref!r}")
        _number("hide_prob", self.hide_prob, 0.0, 1.0)
        _choice("sampling", self.sampling, SAMPLINGS)
        _choice("lambda_mode", self.lambda_mode, LAMBDA_MODES)
        _choice("cam_norm", self.cam_norm, CAM_NORMS)
        _number("bg_alpha", self.bg_alpha, 0.0, math.inf, lo_open=True)
        _flag("tcp_refined_detach", self.tcp_refined_detach)
        _choice("cpcr_form", self.cpcr_form, CPCR_FORMS)
        _number("ohem_ratio", self.ohem_ratio, 0.0, 1.0, lo_open=True)
        for k in ("w_cls", "w_tcp", "w_cpcr", "min_pool_weight"):
            _number(k, getattr(self, k), 0.0, math.inf)
        _number("min_pool_ratio", self.min_pool_ratio, 0.0, 1.0, lo_open=True)
        st = self.pcm_stages
        if (not isinstance(st, (list, tuple)) or len(st) != 2
                or any(isinstance(s, bool) or not isinstance(s, int) for s in st)):
            raise ValueError(f"method.pcm_stages must be a list of two stage indices, got {st!r}")
        _choice("prcm_form", self.prcm_form, PRCM_FORMS + ("none",))
        _choice("inference_cam", self.inference_cam, INFERENCE_CAMS)
        if self.superpixel_cache is not None and not isinstance(self.superpixel_cache, str):
            raise ValueError(f"method.superpixel_cache must be a path or null, got {self.superpixel_cache!r}")
        w = self.superpixel_workers
        if w is not None and (isinstance(w, bool) or not isinstance(w, int) or w < 1):
            raise ValueError(f"method.superpixel_workers must be an integer >= 1 or null, got {w!r}")


# ---------------------------------------------------------------------------------------
# Complementary patch pairs (Sec. 3.1-3.2)
# ---------------------------------------------------------------------------------------
class PatchMasks(NamedTuple):
    """A batch of complementary patch masks.

    Attributes:
        visible_h: float32 (B, S, S), 1 where a pixel of the image is visible in I_h.
        visible_hbar: float32 (B, S, S), 1 where it is visible in I_hbar; ``visible_h +
            visible_hbar = valid`` exactly (crop padding is hidden in both).
        hidden: bool (B, P), patch p of image b is hidden in I_h (P = largest patch id + 1).
        present: bool (B, P), patch p has at least one valid pixel in image b's crop.
    """

    visible_h: torch.Tensor
    visible_hbar: torch.Tensor
    hidden: torch.Tensor
    present: torch.Tensor


def scaled_grid_sizes(sizes: Sequence[int], crop_size: int, reference_crop: int | None) -> list[int]:
    """Grid cell sizes in pixels of the training crop.

    ``round(s * crop_size / reference_crop)`` (at least 1) for every s; ``reference_crop`` None
    keeps the sizes. E.g. the paper's best K = {56, 112} at crop 448 is {40, 80} at crop 320.

    Raises:
        ValueError: a size or the crop < 1.
    """
    if int(crop_size) < 1 or any(int(s) < 1 for s in sizes) or (reference_crop is not None and int(reference_crop) < 1):
        raise ValueError(f"scaled_grid_sizes: sizes {list(sizes)}, crop {crop_size} and reference {reference_crop} must be >= 1")
    if reference_crop is None:
        return [int(s) for s in sizes]
    return [max(1, int(round(int(s) * int(crop_size) / int(reference_crop)))) for s in sizes]


def grid_patch_ids(valid: torch.Tensor, sizes: Sequence[int], generator: torch.Generator | None = None) -> torch.Tensor:
    """Grid Patch ids (paper Sec. 3.2; Hide-and-Seek): square cells of a size drawn per image.

    For image b a cell size ``s_b`` is drawn uniformly from ``sizes`` (the set K); pixel (y, x)
    belongs to cell ``(y // s_b) * ceil(W / s_b) + x // s_b``, the grid anchored at the crop's
    top-left corner as in the authors' ``hide_patch``. Padding (``valid == 0``) gets -1.

    Args:
        valid: (B, S, S) float or bool, 1 on real pixels, 0 on crop padding.
        sizes: the set K of cell sizes in pixels (>= 1).
        generator: CPU random generator (reproducible draws).

    Returns:
        int64 (B, S, S) on ``valid``'s device, ids >= 0 on valid pixels, -1 on padding.

    Raises:
        ValueError: ``valid`` not 3-D, empty ``sizes`` or a size < 1.
    """
    if valid.dim() != 3:
        raise ValueError(f"grid_patch_ids: valid must be (B, H, W), got {tuple(valid.shape)}")
    if not len(sizes) or any(int(s) < 1 for s in sizes):
        raise ValueError(f"grid_patch_ids: sizes must be a non-empty list of integers >= 1, got {list(sizes)}")
    b, h, w = valid.shape
    table = torch.as_tensor([int(s) for s in sizes], dtype=torch.int64)
    s = table[torch.randint(len(table), (b,), generator=generator)].to(valid.device).view(b, 1, 1)
    ys = torch.arange(h, device=valid.device).view(1, h, 1)
    xs = torch.arange(w, device=valid.device).view(1, 1, w)
    cols = (w + s - 1) // s
    ids = (ys // s) * cols + xs // s
    return torch.where(valid > 0, ids, torch.full_like(ids, -1))


def complementary_masks(patch_ids: torch.Tensor, hide_prob: float = 0.5, generator: torch.Generator | None = None,
                        sampling: str = "bernoulli") -> PatchMasks:
    """Complementary hiding masks of a batch (paper Sec. 3.1-3.2, vectorised).

    Every patch id present in an image's crop is hidden in I_h (and so visible in I_hbar) or
    visible in I_h (hidden in I_hbar):

    - ``"bernoulli"`` (paper): each patch independently with probability ``hide_prob``;
    - ``"with_replacement"`` (authors' ``hide_patch_ss``): ``floor(hide_prob * n)`` ids drawn
      uniformly *with replacement* among the image's n present patches; duplicates make the
      expected hidden share ``1 - (1 - 1/n)^(p n)`` (~0.39 for p = 0.5).

    Pixels take their patch's bit through one ``gather`` (no per-pixel loop). Padding (id < 0)
    is hidden in both, so ``visible_h + visible_hbar`` is exactly the valid-pixel mask.

    Args:
        patch_ids: int (B, S, S), patch ids >= 0 (superpixel labels or grid cells), < 0 on padding.
        hide_prob: p_h in [0, 1].
        generator: CPU random generator (reproducible masks); draws happen on the CPU.
        sampling: one of :data:`SAMPLINGS`.

    Returns:
        :class:`PatchMasks` on ``patch_ids``' device.

    Raises:
        ValueError: ``patch_ids`` not 3-D or not integer, ``hide_prob`` outside [0, 1], unknown
            ``sampling``.
    """
    if patch_ids.dim() != 3 or patch_ids.is_floating_point():
        raise ValueError(f"complementary_masks: patch_ids must be an integer (B, H, W) tensor, got {patch_ids.dtype} {tuple(patch_ids.shape)}")
    if not 0.0 <= float(hide_prob) <= 1.0:
        raise ValueError(f"complementary_masks: hide_prob must be in [0, 1], got {hide_prob}")
    if sampling not in SAMPLINGS:
        raise ValueError(f"complementary_masks: sampling must be one of {SAMPLINGS}, got {sampling!r}")
    device = patch_ids.device
    ids = patch_ids.detach().to("cpu", torch.int64)
    b = ids.shape[0]
    valid = ids >= 0
    n_ids = int(ids.max().item()) + 1 if bool(valid.any()) else 1
    flat = ids.clamp(min=0).reshape(b, -1)
    present = torch.zeros((b, n_ids), dtype=torch.bool)
    present.scatter_(1, flat, valid.reshape(b, -1))
    if sampling == "bernoulli":
        hidden = torch.rand((b, n_ids), generator=generator) < float(hide_prob)
    else:
        hidden = torch.zeros((b, n_ids), dtype=torch.bool)
        for i in range(b):  # one small draw per image (k differs per image); the pixels are not looped
            cand = present[i].nonzero().flatten()
            k = int(math.floor(float(hide_prob) * len(cand)))
            if k:
                hidden[i, cand[torch.randint(len(cand), (k,), generator=generator)]] = True
    hidden &= present
    hid_px = hidden.gather(1, flat).view_as(ids)
    vis_h = (valid & ~hid_px).float()
    vis_hbar = (valid & hid_px).float()
    return PatchMasks(vis_h.to(device), vis_hbar.to(device), hidden.to(device), present.to(device))


def branch_weights(masks: PatchMasks, mode: str = "pixels") -> torch.Tensor:
    """lambda per image: the weight of I_h's CAM in Eq. 6 / 14 / 15 (lambda_bar = 1 - lambda).

    - ``"pixels"``: visible share of the image's valid pixels in I_h (the paper's gloss
      "decided by the quantity of uncovered pixels"; authors' ``hide_patch_ss`` ``contri_rate``);
    - ``"patches"``: ``1 - N_h / N`` over the patches present in the crop (Sec. 3.1 as printed;
      authors' ``hide_patch`` for the grid).

    An image without valid pixels / patches gets 0.5.

    Args:
        masks: :class:`PatchMasks`.
        mode: one of :data:`LAMBDA_MODES`.

    Returns:
        float32 (B,) in [0, 1].

    Raises:
        ValueError: unknown mode.
    """
    if mode == "pixels":
        vis = masks.visible_h.flatten(1).sum(1)
        tot = vis + masks.visible_hbar.flatten(1).sum(1)
    elif mode == "patches":
        tot = masks.present.float().sum(1)
        vis = tot - (masks.hidden & masks.present).float().sum(1)
    else:
        raise ValueError(f"branch_weights: mode must be one of {LAMBDA_MODES}, got {mode!r}")
    return torch.where(tot > 0, vis / tot.clamp(min=1.0), torch.full_like(tot, 0.5)).float()


def cp_pair(images: torch.Tensor, masks: PatchMasks) -> tuple[torch.Tensor, torch.Tensor]:
    """The CP Pair (I_h, I_hbar) of normalised images (paper Sec. 3.1).

    Hidden pixels are set to 0, the dataset mean after normalisation (paper Sec. 3.2; the
    authors use ImageNet's mean, like wsss's ``model.normalization``). Where ``images`` is 0 on
    crop padding (the augmentation's container), ``I_h + I_hbar = I`` holds exactly.

    Args:
        images: (B, 3, S, S) normalised images.
        masks: :class:`PatchMasks` of the same batch and size.

    Returns:
        ``(I_h, I_hbar)``, each like ``images``.

    Raises:
        ValueError: sizes differ.
    """
    if images.shape[0] != masks.visible_h.shape[0] or images.shape[-2:] != masks.visible_h.shape[-2:]:
        raise ValueError(f"cp_pair: images {tuple(images.shape)} and masks {tuple(masks.visible_h.shape)} differ")
    vh = masks.visible_h.to(images.dtype).unsqueeze(1)
    vhb = masks.visible_hbar.to(images.dtype).unsqueeze(1)
    return images * vh, images * vhb


# ---------------------------------------------------------------------------------------
# CAM normalisation (Sec. 3.4, Eq. 16)
# ---------------------------------------------------------------------------------------
def normalize_cams(cams: torch.Tensor, labels: torch.Tensor | None = None, mode: str = "max", eps: float = EPS) -> torch.Tensor:
    """Per (image, class) normalisation of CAMs before the losses (paper Sec. 3.4).

    - ``"max"`` (paper): ``relu(Y) / (max_xy relu(Y) + eps)``;
    - ``"minmax"`` (authors' ``max_norm``): ``p = relu(Y)``, ``relu(p - min p - eps) / (max p - min p + eps)``.

    Classes absent from ``labels`` are set to 0 (Sec. 3.4 "all scores irrelevant to ground
    truth are thresholding to 0"). Differentiable (the max included).

    Args:
        cams: (B, C, h, w) raw CAMs.
        labels: (B, C) multi-hot (> 0.5 present) or None (keep every class).
        mode: one of :data:`CAM_NORMS`.

    Returns:
        (B, C, h, w), values in [0, 1).

    Raises:
        ValueError: unknown mode, or labels not (B, C).
    """
    if mode == "max":
        out = normalize_cam(cams, eps)
    elif mode == "minmax":
        p = F.relu(cams)
        lo = p.amin(dim=(-2, -1), keepdim=True)
        hi = p.amax(dim=(-2, -1), keepdim=True)
        out = F.relu(p - lo - eps) / (hi - lo + eps)
    else:
        raise ValueError(f"normalize_cams: mode must be one of {CAM_NORMS}, got {mode!r}")
    if labels is not None:
        if labels.shape != cams.shape[:2]:
            raise ValueError(f"normalize_cams: labels must be (B, C) = {tuple(cams.shape[:2])}, got {tuple(labels.shape)}")
        out = out * (labels > 0.5).to(out.dtype)[:, :, None, None]
    return out


def with_background(fg: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """Prepend the background map of Eq. 16: ``Y^0 = (1 - max_c Y^c)^alpha``.

    Args:
        fg: (B, C, h, w) normalised foreground CAMs (values in [0, 1]).
        alpha: exponent (paper: 1).

    Returns:
        (B, C + 1, h, w), channel 0 the background.
    """
    bg = (1.0 - fg.amax(dim=1, keepdim=True)).clamp(min=0.0)
    if alpha != 1.0:
        bg = bg.pow(alpha)
    return torch.cat([bg, fg], dim=1)


def max_onehot(x: torch.Tensor) -> torch.Tensor:
    """Keep, at every pixel, only the channel(s) holding the maximum (their value, not 1); zero
    the others (authors' ``tool/imutils.max_onehot``, used in their L_cpcr).

    Args:
        x: (B, K, h, w).

    Returns:
        same shape (a new tensor; the authors modify in place).
    """
    return x * (x == x.amax(dim=1, keepdim=True)).to(x.dtype)


# ---------------------------------------------------------------------------------------
# PCM (SEAM; paper Eq. 9-10) and PRCM (paper Eq. 11-12)
# ---------------------------------------------------------------------------------------
@torch.no_grad()
def refinement_input(cams: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """The CAM that PCM and PRCM refine (SEAM; authors' ``resnet38_CPN.Net.forward``), without gradient.

    ``relu(relu(Y) - eps) / (max relu(Y) + eps)`` per (image, class); background ``1 - max_c``
    prepended (Eq. 16, alpha 1); at every pixel the foreground classes below that pixel's
    maximum are zeroed. No labels are used (the same map at training and inference).

    Args:
        cams: (B, C, h, w) raw CAMs.

    Returns:
        (B, C + 1, h, w) in [0, 1], detached.
    """
    p = F.relu(cams.detach().float())
    fg = F.relu(p - eps) / (p.amax(dim=(-2, -1), keepdim=True) + eps)
    top = fg.amax(dim=1, keepdim=True)
    bg = 1.0 - top
    fg = torch.where(fg < top, torch.zeros_like(fg), fg)
    return torch.cat([bg, fg], dim=1).to(cams.dtype)


def pcm_affinity(g_feat: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Pixel affinity of PCM (paper Eq. 10; SEAM): ReLU of the cosine similarity of ``g(X)``,
    each row divided by its sum.

    ``A[b, j, i] = relu(cos(g_i, g_j)) / (sum_i relu(cos(g_i, g_j)) + eps)``: row j holds the
    weights with which output pixel j gathers the input pixels i (rows sum to 1 up to eps;
    the authors normalise the columns of the symmetric matrix and multiply from the right,
    which is the same). The printed Eq. 9 divides by the sum over *all* (i, j); SEAM and the
    authors' code normalise per pixel, which is what is done here.

    Args:
        g_feat: (B, D, h, w) embedded features g(X).

    Returns:
        (B, N, N), N = h w, non-negative, rows summing to 1 (0 for an all-zero row).
    """
    f = g_feat.flatten(2)
    f = f / (f.norm(dim=1, keepdim=True) + eps)
    aff = F.relu(torch.bmm(f.transpose(1, 2), f))
    return aff / (aff.sum(dim=-1, keepdim=True) + eps)


def pcm(cam_in: torch.Tensor, g_feat: torch.Tensor) -> torch.Tensor:
    """Pixel Correlation Module (SEAM; paper Eq. 9): ``Y_pcm = Y A^T`` with ``A = pcm_affinity(g(X))``.

    Args:
        cam_in: (B, K, h, w) the CAM to refine (:func:`refinement_input`).
        g_feat: (B, D, h, w) embedded features g(X) (authors' ``f9`` without ReLU).

    Returns:
        (B, K, h, w).

    Raises:
        ValueError: spatial sizes differ.
    """
    if cam_in.shape[-2:] != g_feat.shape[-2:] or cam_in.shape[0] != g_feat.shape[0]:
        raise ValueError(f"pcm: cam {tuple(cam_in.shape)} and features {tuple(g_feat.shape)} differ in size")
    b, k, h, w = cam_in.shape
    aff = pcm_affinity(g_feat)
    return torch.bmm(cam_in.reshape(b, k, h * w), aff.transpose(1, 2)).reshape(b, k, h, w)


def object_region_relation(cam_in: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Object-Region Relation ``Z = SoftMax(Y) X^T`` (paper Sec. 3.3, after OCR): each class's
    soft region (softmax of its map over the pixels, the authors' ``SpatialGather_Module``)
    pools the features X.

    Args:
        cam_in: (B, K, h, w) soft object regions.
        x: (B, C1, h, w) aggregated features X.

    Returns:
        Z, (B, K, C1).

    Raises:
        ValueError: sizes differ.
    """
    if cam_in.shape[-2:] != x.shape[-2:] or cam_in.shape[0] != x.shape[0]:
        raise ValueError(f"object_region_relation: cam {tuple(cam_in.shape)} and features {tuple(x.shape)} differ in size")
    probs = F.softmax(cam_in.flatten(2), dim=-1)  # (B, K, N)
    return torch.bmm(probs, x.flatten(2).transpose(1, 2))


def prcm(cam_in: torch.Tensor, x: torch.Tensor, phi: nn.Module, g: nn.Module, form: str = "paper") -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-Region Correlation Module (paper Eq. 11-12).

    ``Z = SoftMax(Y) X^T`` (:func:`object_region_relation`, (B, K, C1)); ``phi`` embeds each
    region's C1-vector: ``phi(Z) = relu(W_phi Z_k)`` (K, D) (authors' ``f10``, a 1x1 conv with
    ReLU); ``g(X) = relu(W_g X)`` (D, N) (authors' ``f9``, shared with PCM);
    ``P_R = phi(Z) g(X) / sqrt(K)`` (K, N) (Eq. 11; the authors scale by ``21 ** -0.5`` = K^-1/2);
    ``Y_prcm = Y o SoftMax(P_R)`` (Eq. 12) with the softmax over the pixels, as the authors'
    code (the paper does not name the axis).

    ``form`` ``"authors"`` reproduces ``resnet38_CPN.PRCM``: the conv output (B, D, K, 1) is
    reshaped to (B, K, D) *without transposing* (``.view(n, 21, -1)``), which scrambles
    regions and channels; ``"paper"`` transposes.

    Args:
        cam_in: (B, K, h, w) the CAM to refine.
        x: (B, C1, h, w) aggregated features X.
        phi: module mapping (B, C1, K, 1) -> (B, D, K, 1) (1x1 conv).
        g: module mapping (B, C1, h, w) -> (B, D, h, w) (1x1 conv).
        form: one of :data:`PRCM_FORMS`.

    Returns:
        ``(Y_prcm (B, K, h, w), P_R (B, K, h, w))``.

    Raises:
        ValueError: unknown form, sizes differ.
    """
    if form not in PRCM_FORMS:
        raise ValueError(f"prcm: form must be one of {PRCM_FORMS}, got {form!r}")
    b, k, h, w = cam_in.shape
    z = object_region_relation(cam_in, x)  # (B, K, C1)
    e = F.relu(phi(z.transpose(1, 2).unsqueeze(-1)))  # (B, D, K, 1)
    d = e.shape[1]
    key = e.reshape(b, k, d) if form == "authors" else e.squeeze(-1).transpose(1, 2)  # (B, K, D)
    gx = F.relu(g(x)).flatten(2)  # (B, D, N)
    p_r = torch.bmm(key, gx) * (k ** -0.5)
    y_prcm = cam_in * F.softmax(p_r, dim=-1).reshape(b, k, h, w)
    return y_prcm, p_r.reshape(b, k, h, w)


# ---------------------------------------------------------------------------------------
# Losses (Eq. 13-17)
# ---------------------------------------------------------------------------------------
def _lam(lam: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    lam = torch.as_tensor(lam, dtype=like.dtype, device=like.device)
    if lam.dim() != 1 or lam.shape[0] != like.shape[0]:
        raise ValueError(f"lambda must be (B,) with B = {like.shape[0]}, got {tuple(lam.shape)}")
    return lam.view(-1, 1, 1, 1)


def classification_loss(logits_o: torch.Tensor, logits_h: torch.Tensor, logits_hbar: torch.Tensor,
                        labels: torch.Tensor) -> torch.Tensor:
    """L_cls (paper Eq. 13): mean of the multilabel soft-margin losses of the three branches.

    Args:
        logits_*: (B, C) GAP of each branch's raw CAM.
        labels: (B, C) multi-hot.

    Returns:
        scalar.
    """
    return (multilabel_loss(logits_o, labels) + multilabel_loss(logits_h, labels) + multilabel_loss(logits_hbar, labels)) / 3.0


def tcp_term(y_o: torch.Tensor, y_h: torch.Tensor, y_hbar: torch.Tensor, lam: torch.Tensor, detach_pair: bool = True) -> torch.Tensor:
    """One term of L_tcp (paper Eq. 6 / 14): ``|| (lambda Y_h + lambda_bar Y_hbar) - Y_o ||_1``.

    The mean absolute error over every element (foreground channels only, as the authors'
    ``[:, 1:]``); with ``detach_pair`` the pair's CAMs get no gradient ("we stop the gradient
    update for (Y_h, Y_hbar) to push Y^c to approximate the better one", Sec. 3.1).

    Args:
        y_o, y_h, y_hbar: (B, C, h, w) normalised foreground CAMs.
        lam: (B,) lambda of I_h.
        detach_pair: stop gradients into y_h and y_hbar.

    Returns:
        scalar >= 0.

    Raises:
        ValueError: shapes differ or lam not (B,).
    """
    if not (y_o.shape == y_h.shape == y_hbar.shape):
        raise ValueError(f"tcp_term: shapes differ: {tuple(y_o.shape)}, {tuple(y_h.shape)}, {tuple(y_hbar.shape)}")
    if detach_pair:
        y_h, y_hbar = y_h.detach(), y_hbar.detach()
    lm = _lam(lam, y_o)
    return (lm * y_h + (1.0 - lm) * y_hbar - y_o).abs().mean()


def tcp_loss(raw: tuple[torch.Tensor, torch.Tensor, torch.Tensor], refined: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
             lam: torch.Tensor, detach_refined: bool = True) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L_tcp (paper Eq. 14): the raw term (pair detached) plus the refined term.

    Args:
        raw: ``(Y_o, Y_h, Y_hbar)``, each (B, C, h, w) normalised foreground CAMs.
        refined: ``(Y~_o, Y~_h, Y~_hbar)``, the same for the refined CAMs.
        lam: (B,) lambda.
        detach_refined: detach the pair in the refined term too (paper); False = authors' code.

    Returns:
        ``(loss, {"tcp_raw": ..., "tcp_refined": ...})`` (logs detached).
    """
    t_raw = tcp_term(*raw, lam, detach_pair=True)
    t_ref = tcp_term(*refined, lam, detach_pair=detach_refined)
    return t_raw + t_ref, {"tcp_raw": t_raw.detach(), "tcp_refined": t_ref.detach()}


def ohem_mean(losses: torch.Tensor, ratio: float = 0.2) -> torch.Tensor:
    """Online hard example mining: per image, the mean of the ``k = max(1, int(ratio * n))``
    largest of its n element losses, averaged over images (authors' ``torch.topk(loss.view(n, -1),
    k=int(21*h*w*0.2))`` then ``torch.mean``). ``ratio`` 1 is the plain mean.

    Args:
        losses: (B, ...) element losses.
        ratio: kept fraction in (0, 1] (paper Sec. 4.1: 20 %).

    Returns:
        scalar.

    Raises:
        ValueError: ratio outside (0, 1].
    """
    if not 0.0 < float(ratio) <= 1.0:
        raise ValueError(f"ohem_mean: ratio must be in (0, 1], got {ratio}")
    flat = losses.reshape(losses.shape[0], -1)
    k = max(1, int(float(ratio) * flat.shape[1]))
    if k >= flat.shape[1]:
        return flat.mean()
    return flat.topk(k, dim=1).values.mean()


def cpcr_loss(raw: tuple[torch.Tensor, torch.Tensor, torch.Tensor], refined_pair: tuple[torch.Tensor, torch.Tensor],
              lam: torch.Tensor, ohem_ratio: float = 0.2, form: str = "paper", alpha: float = 1.0
              ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L_cpcr (paper Eq. 15) with OHEM:
    ``|| (Y_o - lambda Y_h) - lambda_bar Y~_hbar ||_1 + || (Y_o - lambda_bar Y_hbar) - lambda Y~_h ||_1``,
    each norm the OHEM mean (:func:`ohem_mean`) of its element-wise absolute errors over all
    K = C + 1 channels (background included, Eq. 16), the targets ``Y_o - lambda Y_h`` detached
    (the term regularises the refined CAMs; the authors detach it).

    - ``"paper"``: every CAM gets its own background (Eq. 16) before the lambda scaling, so
      ``lambda Y_h`` has background ``lambda (1 - max Y_h)``;
    - ``"authors"`` (``train_cpn.py``): the background is recomputed *after* scaling
      (``1 - max(lambda Y_h)``) and the target is ``max_onehot(Y_o - lambda Y_h)``.

    Args:
        raw: ``(Y_o, Y_h, Y_hbar)``, each (B, C, h, w) normalised foreground CAMs.
        refined_pair: ``(Y~_h, Y~_hbar)``, normalised refined foreground CAMs of the pair.
        lam: (B,) lambda.
        ohem_ratio: fraction kept per image (paper: 0.2).
        form: one of :data:`CPCR_FORMS`.
        alpha: background exponent of Eq. 16.

    Returns:
        ``(loss, {"cpcr_h": ..., "cpcr_hbar": ...})`` (logs detached; ``cpcr_h`` is the term
        that trains Y~_h).

    Raises:
        ValueError: unknown form, bad lambda.
    """
    if form not in CPCR_FORMS:
        raise ValueError(f"cpcr_loss: form must be one of {CPCR_FORMS}, got {form!r}")
    y_o, y_h, y_hbar = raw
    r_h, r_hbar = refined_pair
    lm = _lam(lam, y_o)
    lb = 1.0 - lm
    o = with_background(y_o, alpha)
    if form == "paper":
        t_for_hbar = (o - lm * with_background(y_h, alpha)).detach()
        t_for_h = (o - lb * with_background(y_hbar, alpha)).detach()
        s_hbar = lb * with_background(r_hbar, alpha)
        s_h = lm * with_background(r_h, alpha)
    else:
        t_for_hbar = max_onehot((o - with_background(lm * y_h, alpha)).detach())
        t_for_h = max_onehot((o - with_background(lb * y_hbar, alpha)).detach())
        s_hbar = with_background(lb * r_hbar, alpha)
        s_h = with_background(lm * r_h, alpha)
    l_hbar = ohem_mean((t_for_hbar - s_hbar).abs(), ohem_ratio)
    l_h = ohem_mean((t_for_h - s_h).abs(), ohem_ratio)
    return l_hbar + l_h, {"cpcr_h": l_h.detach(), "cpcr_hbar": l_hbar.detach()}


def min_pool_loss(refined_fg: torch.Tensor, labels: torch.Tensor, ratio: float = 0.25) -> torch.Tensor:
    """The authors' extra loss (``train_cpn.py`` ``adaptive_min_pooling_loss``, from SEAM): at
    every pixel the largest refined score of the image's classes; the ReLU of the lowest
    ``k = int(ratio * h w)`` of them, summed and divided by ``k B``. Not in the paper (weight 0
    by default, ``min_pool_weight``).

    Args:
        refined_fg: (B, C, h, w) refined foreground CAMs (not normalised, as the authors').
        labels: (B, C) multi-hot.
        ratio: fraction of pixels (authors: 1/4).

    Returns:
        scalar >= 0.
    """
    x = (refined_fg * (labels > 0.5).to(refined_fg.dtype)[:, :, None, None]).amax(dim=1).flatten(1)
    k = max(1, int(float(ratio) * x.shape[1]))
    low = x.topk(k, dim=1, largest=False).values
    return F.relu(low).sum() / (k * x.shape[0])


def cpn_loss(outs: tuple[dict, dict, dict], labels: torch.Tensor, lam: torch.Tensor, p: CPNParams
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L_all (paper Eq. 17) = w1 L_cls + w2 L_tcp + w3 L_cpcr (+ the authors' min-pool term
    with weight ``min_pool_weight``, 0 in the paper).

    Args:
        outs: the three branches' :meth:`CPNNet.forward_all` outputs (I, I_h, I_hbar): dicts
            with ``logits`` (B, C), ``cams`` (B, C, h, w) raw, ``refined`` (B, C + 1, h, w).
        labels: (B, C) multi-hot.
        lam: (B,) lambda of I_h.
        p: :class:`CPNParams`.

    Returns:
        ``(loss, logs)``: logs hold the detached terms ``cls``, ``tcp``, ``tcp_raw``,
        ``tcp_refined``, ``cpcr``, ``cpcr_h``, ``cpcr_hbar`` (and ``min_pool`` when weighted).
    """
    o, h, hb = outs
    cls = classification_loss(o["logits"], h["logits"], hb["logits"], labels)
    raw = tuple(normalize_cams(b["cams"], labels, p.cam_norm) for b in (o, h, hb))
    ref = tuple(normalize_cams(b["refined"][:, 1:], labels, p.cam_norm) for b in (o, h, hb))
    tcp, tcp_logs = tcp_loss(raw, ref, lam, detach_refined=p.tcp_refined_detach)
    cpcr, cpcr_logs = cpcr_loss(raw, (ref[1], ref[2]), lam, p.ohem_ratio, p.cpcr_form, p.bg_alpha)
    loss = p.w_cls * cls + p.w_tcp * tcp + p.w_cpcr * cpcr
    logs = {"cls": cls.detach(), "tcp": tcp.detach(), **tcp_logs, "cpcr": cpcr.detach(), **cpcr_logs}
    if p.min_pool_weight > 0:
        mp = sum(min_pool_loss(b["refined"][:, 1:], labels, p.min_pool_ratio) for b in (o, h, hb)) / 3.0
        loss = loss + p.min_pool_weight * mp
        logs["min_pool"] = mp.detach()
    return loss, logs


# ---------------------------------------------------------------------------------------
# The network
# ---------------------------------------------------------------------------------------
class CPNNet(nn.Module):
    """One branch of the shared-weight triplet (paper Fig. 2, 4): backbone + bias-free 1x1
    classifier (the CAM, Eq. 1) + PCM and PRCM on the aggregated features X.

    X = concat(image resized to the CAM grid (3 ch), ReLU(1x1 conv of stage ``pcm_stages[0]``
    -> 64 ch), ReLU(1x1 conv of stage ``pcm_stages[1]`` -> 128 ch)) = 195 channels (paper
    Sec. 4.1; authors' ``f8_3`` / ``f8_4``); the stage features are **detached** and the CAM
    that PCM/PRCM refine is computed without gradient (:func:`refinement_input`), so the
    refinement trains only its own convolutions (paper Sec. 4.1: gradients from PCM and PRCM to
    the network blocked). ``g`` (195 -> 192, authors' ``f9``) and ``phi`` (195 -> 192, ``f10``)
    are 1x1 convs without bias, Xavier-uniform with gain 4 (authors); the projections are
    Kaiming-normal (authors).

    ``forward(x)`` is the CAM-generator interface of :mod:`wsss.methods.base`: ``(logits (B, C),
    cams (B, C, h, w))`` where cams are the refined CAM's foreground channels
    (``inference_cam="refined"``, paper Sec. 3.4) or the raw CAM (``"raw"``).
    :meth:`forward_all` gives everything the losses need.

    Args:
        backbone: :class:`~wsss.backbones.Backbone`.
        num_classes: C foreground classes.
        classifier_init: see :func:`wsss.methods.base.init_classifier`.
        pcm_stages: two indices into ``backbone.stage_channels`` (negative from the end).
        prcm_form: ``"paper"`` | ``"authors"`` (:func:`prcm`) | ``"none"`` (PCM only).
        inference_cam: ``"refined"`` | ``"raw"``.

    Raises:
        ValueError: a stage index out of range, unknown form.
    """

    def __init__(self, backbone: Backbone, num_classes: int, classifier_init: str = "kaiming_fan_out",
                 pcm_stages: Sequence[int] = (-3, -2), prcm_form: str = "paper", inference_cam: str = "refined") -> None:
        super().__init__()
        n = len(backbone.stage_channels)
        if len(pcm_stages) != 2 or any(not -n <= int(s) < n for s in pcm_stages):
            raise ValueError(f"method.pcm_stages must be two indices in [-{n}, {n - 1}] for backbone "
                             f"'{backbone.name}' ({n} stages, channels {backbone.stage_channels}), got {list(pcm_stages)}")
        if prcm_form not in PRCM_FORMS + ("none",):
            raise ValueError(f"method.prcm_form must be one of {list(PRCM_FORMS) + ['none']}, got {prcm_form!r}")
        if inference_cam not in INFERENCE_CAMS:
            raise ValueError(f"method.inference_cam must be one of {list(INFERENCE_CAMS)}, got {inference_cam!r}")
        self.backbone = backbone
        self.num_classes = num_classes
        self.pcm_stages = tuple(int(s) % n for s in pcm_stages)
        self.prcm_form = prcm_form
        self.inference_cam = inference_cam
        self.classifier = nn.Conv2d(backbone.out_channels, num_classes, kernel_size=1, bias=False)
        init_classifier(self.classifier.weight, classifier_init)
        ch = backbone.stage_channels
        self.proj_a = nn.Conv2d(ch[self.pcm_stages[0]], PROJ_CHANNELS[0], 1, bias=False)
        self.proj_b = nn.Conv2d(ch[self.pcm_stages[1]], PROJ_CHANNELS[1], 1, bias=False)
        c1 = 3 + sum(PROJ_CHANNELS)
        self.g = nn.Conv2d(c1, EMBED_CHANNELS, 1, bias=False)
        self.phi = nn.Conv2d(c1, EMBED_CHANNELS, 1, bias=False) if prcm_form != "none" else None
        nn.init.kaiming_normal_(self.proj_a.weight)
        nn.init.kaiming_normal_(self.proj_b.weight)
        nn.init.xavier_uniform_(self.g.weight, gain=4)
        if self.phi is not None:
            nn.init.xavier_uniform_(self.phi.weight, gain=4)

    def aggregated_features(self, x: torch.Tensor, feat_a: torch.Tensor, feat_b: torch.Tensor,
                            size: tuple[int, int]) -> torch.Tensor:
        """X (B, 195, h, w): image and the two projected, detached stages, resized bilinearly
        (``align_corners=True``, as the authors) to the CAM grid ``size``."""
        def rs(t: torch.Tensor) -> torch.Tensor:
            return t if tuple(t.shape[-2:]) == tuple(size) else F.interpolate(t, size=size, mode="bilinear", align_corners=True)

        a = F.relu(self.proj_a(feat_a.detach()))
        b = F.relu(self.proj_b(feat_b.detach()))
        return torch.cat([rs(x.detach()), rs(a), rs(b)], dim=1)

    def refine(self, cams: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """Refined CAM ``Y~ = Y_pcm + Y_prcm`` (paper Sec. 3.3; ``Y_pcm`` alone for ``prcm_form: none``),
        (B, C + 1, h, w), background first.

        Args:
            cams: (B, C, h, w) raw CAMs (used without gradient).
            feats: (B, 195, h, w) aggregated features X.
        """
        cam_in = refinement_input(cams)
        y_pcm = pcm(cam_in, self.g(feats))
        if self.prcm_form == "none":  # Table 2 rows without PRCM
            return y_pcm
        y_prcm, _ = prcm(cam_in, feats, self.phi, self.g, self.prcm_form)
        return y_pcm + y_prcm

    def forward_all(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Everything of one branch.

        Args:
            x: (B, 3, H, W) normalised images.

        Returns:
            ``{"logits": (B, C) GAP of the raw CAM, "cams": (B, C, h, w) raw CAM,
            "refined": (B, C + 1, h, w) refined CAM (background first)}``.
        """
        last, stages = self.backbone.forward_stages(x)
        cams = self.classifier(last)
        size = tuple(cams.shape[-2:])
        feats = self.aggregated_features(x, stages[self.pcm_stages[0]], stages[self.pcm_stages[1]], size)
        return {"logits": cams.mean(dim=(2, 3)), "cams": cams, "refined": self.refine(cams, feats)}

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.inference_cam == "raw":
            cams = self.classifier(self.backbone(x))
            return cams.mean(dim=(2, 3)), cams
        out = self.forward_all(x)
        return out["logits"], out["refined"][:, 1:]

    def param_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(pretrained backbone parameters, new layers: classifier, projections, g, phi), trainable only."""
        backbone = [p for p in self.backbone.parameters() if p.requires_grad]
        ids = {id(p) for p in backbone}
        return backbone, [p for p in self.parameters() if p.requires_grad and id(p) not in ids]
