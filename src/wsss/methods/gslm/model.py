"""GSLM building blocks in plain torch: Seed Reactivation (ReLU-k) and the two activation losses.

Source: Mai et al., *Exploit CAM by itself: Complementary Learning System for Weakly
Supervised Semantic Segmentation* (GSLM), Sections 4.2-4.3, Eq. 3-6; the authors' running code
(tmlr-group/GSLM ``step/train_fuse_cam.py``, its ``seg_criterion``) as summarised in
``/work/shared/docs/reference-notes.md`` (GSLM section).

- :func:`relu_k` is the bounded ReLU ``psi_k`` of Eq. 4.
- :func:`activation_loss` is the paper's activation loss (Eq. 5, ``loss_form: paper``): smooth
  L1 between ``psi_k(f(x)) / k`` and the {0, 1} confidence CAM ``N`` on the pixels where ``N``
  is not ignored, for the classes of the image.
- :func:`authors_activation_loss` is the authors' running form (``loss_form: authors``): no
  clamp, ``k * relu(f) / (max relu(f) + eps)`` per (image, class) map against ``k * N``.
- :data:`LOSS_FORMS` maps ``loss_form`` to the function the LightningModule calls.
- :class:`BoundedCAMGenerator` wraps a CAM generator to bound its CAMs by ``k`` at inference
  (optional ``relu_k_inference`` of the rounds recipe).
- :class:`GSLMParams` holds the hyperparameters of the SLM training step with their sources
  (the round procedure's own parameters live with the recipe, ``wsss.recipes.rounds``).

The network itself is unchanged (paper Sec. 4.1: "GLM or SLM ... does not change the
topology of the network but affects gradient propagation"): any CAM generator
``net(x) -> (logits (B, C), cams (B, C, h, w))`` works.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from wsss.methods.base import normalize_cam

__all__ = [
    "relu_k",
    "confidence_targets",
    "activation_loss",
    "authors_activation_loss",
    "LOSS_FORMS",
    "BoundedCAMGenerator",
    "GSLMParams",
    "REDUCTIONS",
    "IGNORE",
    "AUTHORS_EPS",
]

#: Label value of ignored pixels (confusion region, "-1" in Eq. 3) and of crop padding.
IGNORE = 255
#: How the activation losses reduce over pixels, classes and images.
REDUCTIONS = ("mean", "sum")
#: The authors' code adds this to the per-map max before dividing (``max + 1e-5``).
AUTHORS_EPS = 1e-5


def relu_k(x: torch.Tensor, k: float) -> torch.Tensor:
    """Bounded ReLU ``psi_k(x) = min(max(x, 0), k)`` (GSLM Eq. 4, Seed Reactivation).

    Args:
        x: any tensor (raw CAM logits).
        k: upper bound, > 0 (paper: 6).

    Returns:
        tensor of ``x``'s shape and dtype, values in [0, k]. The gradient is 1 where
        0 < x < k and 0 elsewhere (saturated salient pixels stop pushing).

    Raises:
        ValueError: k <= 0.
    """
    if not k > 0:
        raise ValueError(f"relu_k: k must be > 0, got {k}")
    return x.clamp(min=0.0, max=float(k))


def confidence_targets(
    confidence: torch.Tensor, labels: torch.Tensor, size: tuple[int, int] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class targets and weights from a confidence label map (GSLM Eq. 3, authors' layout).

    The confidence CAM is stored as one label map per image: 0 background, c in 1..C the
    confident class, 255 ignored (confusion region or crop padding). For class c (channel
    c - 1) the target is 1 where the map is c, 0 where it is any other label (background or
    another class), and the pixel is ignored where the map is 255. Only the classes of the
    image's label take part (weight 0 for absent classes).

    Args:
        confidence: (B, H, W) integer label map (uint8/int64), values 0..C or 255.
        labels: (B, C) multi-hot image-level labels (> 0.5 = present).
        size: (h, w) to downsample the map to with nearest-neighbour sampling (the authors
            downsample the labels to the CAM stride); None keeps (H, W).

    Returns:
        ``(target, weight)``, both float32 (B, C, h, w): target in {0, 1}, weight in {0, 1}
        (1 = the pixel counts for that class).

    Raises:
        ValueError: shapes disagree, or the map holds a label outside 0..C and not 255.
    """
    if confidence.dim() != 3:
        raise ValueError(f"confidence_targets: confidence must be (B, H, W), got {tuple(confidence.shape)}")
    if labels.dim() != 2 or labels.shape[0] != confidence.shape[0]:
        raise ValueError(f"confidence_targets: labels must be (B, C) with B = {confidence.shape[0]}, got {tuple(labels.shape)}")
    num_classes = labels.shape[1]
    conf = confidence.long()
    bad = (conf != IGNORE) & ((conf < 0) | (conf > num_classes))
    if bad.any():
        raise ValueError(f"confidence_targets: label {int(conf[bad][0])} outside 0..{num_classes} and not {IGNORE}")
    if size is not None and tuple(size) != tuple(conf.shape[-2:]):
        conf = F.interpolate(conf[:, None].float(), size=tuple(size), mode="nearest")[:, 0].long()
    classes = torch.arange(1, num_classes + 1, device=conf.device).view(1, -1, 1, 1)
    target = (conf[:, None] == classes).float()
    valid = (conf != IGNORE)[:, None].float()
    present = (labels > 0.5).float()[:, :, None, None]
    weight = valid * present
    return target, weight


def _check(cams_raw: torch.Tensor, labels: torch.Tensor, reduction: str, who: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"{who}: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if cams_raw.dim() != 4 or cams_raw.shape[:2] != labels.shape:
        raise ValueError(
            f"{who}: cams_raw must be (B, C, h, w) matching labels (B, C) {tuple(labels.shape)}, got {tuple(cams_raw.shape)}"
        )


def _reduce(per_px: torch.Tensor, weight: torch.Tensor, reduction: str) -> torch.Tensor:
    """``per_px`` (B, C, h, w) already multiplied by ``weight``: "mean" = mean over all weighted
    terms; "sum" = per (image, class) mean over its valid pixels, summed over classes and images.
    A term without valid pixels contributes 0 (and no gradient)."""
    if reduction == "mean":
        return per_px.sum() / weight.sum().clamp(min=1.0)
    n = weight.sum(dim=(2, 3))  # (B, C) valid pixels per (image, class)
    return (per_px.sum(dim=(2, 3)) / n.clamp(min=1.0)).sum()


def activation_loss(
    cams_raw: torch.Tensor,
    confidence: torch.Tensor,
    labels: torch.Tensor,
    k: float = 6.0,
    reduction: str = "mean",
    beta: float = 1.0,
) -> torch.Tensor:
    """The paper's activation loss of the SLM (GSLM Eq. 5) with Seed Reactivation (Eq. 4).

    ``M' = psi_k(cams_raw) / k`` (values in [0, 1]) is compared with the {0, 1} confidence
    target by the smooth L1 (Huber, ``beta``) distance on non-ignored pixels of the image's
    classes; the confidence map is downsampled (nearest) to the CAM size, as in the authors'
    code. With ``M'`` and the target in [0, 1] and ``beta = 1`` every term is in the quadratic
    regime, ``0.5 (M' - N)^2``, so the gradient per pixel is at most ``1 / k``.

    Reductions over the selected (image b, class c, pixel p) terms ``l_bcp``:

    - ``"mean"`` (paper, Eq. 5 as a normalised norm): the mean of all ``l_bcp``;
    - ``"sum"``: for each (image, present class) the mean over its valid pixels, summed over
      classes and images (the authors' reduction).

    Either way a term with no valid pixel contributes nothing (and no gradient), and the
    loss is 0 when no pixel is valid.

    Args:
        cams_raw: (B, C, h, w) float raw CAM logits f(x) (pre-ReLU).
        confidence: (B, H, W) integer label map (0 bg, 1..C class, 255 ignore).
        labels: (B, C) multi-hot image labels.
        k: ReLU-k bound (paper: 6).
        reduction: one of :data:`REDUCTIONS`.
        beta: smooth L1 transition point (PyTorch default 1.0).

    Returns:
        scalar float32 tensor >= 0 (differentiable w.r.t. ``cams_raw``).

    Raises:
        ValueError: unknown reduction, shape mismatch, bad labels in ``confidence``, k <= 0.
    """
    _check(cams_raw, labels, reduction, "activation_loss")
    target, weight = confidence_targets(confidence.to(cams_raw.device), labels.to(cams_raw.device), tuple(cams_raw.shape[-2:]))
    cam = relu_k(cams_raw.float(), k) / float(k)
    per_px = F.smooth_l1_loss(cam, target, reduction="none", beta=beta) * weight
    return _reduce(per_px, weight, reduction)


def authors_activation_loss(
    cams_raw: torch.Tensor,
    confidence: torch.Tensor,
    labels: torch.Tensor,
    k: float = 6.0,
    reduction: str = "sum",
    beta: float = 1.0,
    eps: float = AUTHORS_EPS,
) -> torch.Tensor:
    """The authors' running activation loss (tmlr-group/GSLM ``train_fuse_cam.py``, ``seg_criterion``).

    Per image b and class c: ``A_bc = k * relu(f_bc) / (max_p relu(f_bc)(p) + eps)`` (the max
    over *all* pixels of the map, ignored ones included, as the authors take it before masking;
    the gradient flows through the max too), compared with ``k * N_bc`` ({0, k}) by the smooth
    L1 (``beta`` 1) on the valid pixels of the image's classes. No clamp: with targets 0 / k
    most terms are in the linear regime (|d| >= 1), so each pixel gets a gradient of magnitude
    up to ``k / max`` - one to two orders of magnitude more than :func:`activation_loss`. The
    authors reduce with ``"sum"``: the mean over an (image, class)'s valid pixels, summed over
    classes and images (images without a valid pixel are skipped, i.e. contribute 0).

    Args:
        cams_raw: (B, C, h, w) float raw CAM logits f(x) (pre-ReLU).
        confidence: (B, H, W) integer label map (0 bg, 1..C class, 255 ignore), downsampled
            (nearest) to (h, w) like the authors'.
        labels: (B, C) multi-hot image labels.
        k: scale of the normalised CAM and of the target (authors: 6).
        reduction: one of :data:`REDUCTIONS` (authors: "sum").
        beta: smooth L1 transition point (authors: PyTorch default 1.0).
        eps: added to the per-map max (authors: 1e-5).

    Returns:
        scalar float32 tensor >= 0 (differentiable w.r.t. ``cams_raw``).

    Raises:
        ValueError: unknown reduction, shape mismatch, bad labels in ``confidence``, k <= 0,
            eps <= 0.
    """
    _check(cams_raw, labels, reduction, "authors_activation_loss")
    if not k > 0:
        raise ValueError(f"authors_activation_loss: k must be > 0, got {k}")
    if not eps > 0:
        raise ValueError(f"authors_activation_loss: eps must be > 0, got {eps}")
    target, weight = confidence_targets(confidence.to(cams_raw.device), labels.to(cams_raw.device), tuple(cams_raw.shape[-2:]))
    cam = float(k) * normalize_cam(cams_raw.float(), float(eps))
    per_px = F.smooth_l1_loss(cam, float(k) * target, reduction="none", beta=beta) * weight
    return _reduce(per_px, weight, reduction)


#: ``loss_form`` -> the activation-loss function (same signature: cams_raw, confidence, labels, k, reduction)
LOSS_FORMS: dict[str, Callable[..., torch.Tensor]] = {"paper": activation_loss, "authors": authors_activation_loss}


class BoundedCAMGenerator(nn.Module):
    """A CAM generator whose CAMs are bounded by ``k`` (``min(cams, k)``; the inference's ReLU
    then gives ``psi_k``, Eq. 4). Used at inference only with the recipe's ``relu_k_inference``.

    ``forward(x) -> (logits (B, C) unchanged, cams (B, C, h, w) float, values <= k)``.

    Raises:
        ValueError: k <= 0.
    """

    def __init__(self, net: nn.Module, k: float) -> None:
        super().__init__()
        if not k > 0:
            raise ValueError(f"BoundedCAMGenerator: k must be > 0, got {k}")
        self.net = net
        self.k = float(k)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, cams = self.net(x)
        return logits, cams.clamp(max=self.k)


@dataclass
class GSLMParams:
    """Hyperparameters of the SLM training step (``method:`` keys the module reads).

    The round procedure's keys (thresholds, CRF, rounds, epochs, learning rate, seed source,
    ...) are validated by the rounds recipe (``wsss.recipes.rounds.RoundsParams``), which also
    rejects keys neither knows.

    Attributes:
        k: ReLU-k bound of Seed Reactivation (paper Sec. 5.1: 6; Fig. 8(b): insensitive for
            k <= 45); in the authors' form the scale of the normalised CAM and target (6).
        alpha: weight of the activation loss, L = L_cls + alpha L_act (paper Eq. 6, Sec. 5.1: 0.5;
            authors' ``fuse_cam_seg_loss_rate``).
        loss_form: ``"paper"`` (:func:`activation_loss`, Eq. 4-5: smooth L1 between
            ``psi_k(f)/k`` and {0, 1}) or ``"authors"`` (:func:`authors_activation_loss`: smooth
            L1 between ``k relu(f)/max`` and {0, k}, tmlr-group/GSLM ``train_fuse_cam.py``).
        reduction: ``"mean"`` | ``"sum"`` | None; None = the form's own: "mean" for the paper
            (Eq. 5), "sum" for the authors' code (per (image, class) mean, summed).
    """

    k: float = 6.0
    alpha: float = 0.5
    loss_form: str = "paper"
    reduction: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, (int, float)) or not self.k > 0:
            raise ValueError(f"gslm: k must be a number > 0, got {self.k!r}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or self.alpha < 0:
            raise ValueError(f"gslm: alpha must be a number >= 0, got {self.alpha!r}")
        if self.loss_form not in LOSS_FORMS:
            raise ValueError(f"gslm: loss_form must be one of {sorted(LOSS_FORMS)}, got {self.loss_form!r}")
        if self.reduction is not None and self.reduction not in REDUCTIONS:
            raise ValueError(f"gslm: reduction must be one of {REDUCTIONS} or null, got {self.reduction!r}")

    @property
    def resolved_reduction(self) -> str:
        """``reduction``, or the loss form's own when null ("mean" paper, "sum" authors)."""
        if self.reduction is not None:
            return self.reduction
        return "sum" if self.loss_form == "authors" else "mean"

    def loss_fn(self) -> Callable[..., torch.Tensor]:
        """The activation-loss function of ``loss_form`` (:data:`LOSS_FORMS`)."""
        return LOSS_FORMS[self.loss_form]

    def to_dict(self) -> dict:
        return asdict(self)
