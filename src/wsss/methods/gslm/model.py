"""GSLM building blocks in plain torch: Seed Reactivation (ReLU-k) and the activation loss.

Source: Mai et al., *Exploit CAM by itself: Complementary Learning System for Weakly
Supervised Semantic Segmentation* (GSLM), Sections 4.2-4.3, Eq. 3-6; the authors' code
behaviour is taken from ``/work/shared/docs/reference-notes.md`` (GSLM section).

- :func:`relu_k` is the bounded ReLU ``psi_k`` of Eq. 4.
- :func:`activation_loss` is Eq. 5: smooth L1 between ``psi_k(f(x)) / k`` and the confidence
  CAM ``N`` on the pixels where ``N >= 0`` (not ignored), for the classes of the image.
- :class:`GSLMParams` holds every hyperparameter with its source.

The network itself is unchanged (paper Sec. 4.1: "GLM or SLM ... does not change the
topology of the network but affects gradient propagation"): any CAM generator
``net(x) -> (logits (B, C), cams (B, C, h, w))`` works.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

__all__ = ["relu_k", "confidence_targets", "activation_loss", "GSLMParams", "REDUCTIONS", "SEED_KINDS", "IGNORE"]

#: Label value of ignored pixels (confusion region, "-1" in Eq. 3) and of crop padding.
IGNORE = 255
#: How :func:`activation_loss` reduces over pixels, classes and images.
REDUCTIONS = ("mean", "sum")
#: What the first confidence CAM is built from when ``seed_source`` names another run.
SEED_KINDS = ("cams", "confident", "pseudo")


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


def activation_loss(
    cams_raw: torch.Tensor,
    confidence: torch.Tensor,
    labels: torch.Tensor,
    k: float = 6.0,
    reduction: str = "mean",
    beta: float = 1.0,
) -> torch.Tensor:
    """Activation loss of the SLM (GSLM Eq. 5) with Seed Reactivation (Eq. 4).

    ``M' = psi_k(cams_raw) / k`` is compared with the confidence CAM by the smooth L1
    (Huber, ``beta``) distance on non-ignored pixels of the image's classes; the confidence
    map is downsampled (nearest) to the CAM size, as in the authors' code.

    Reductions over the selected (image b, class c, pixel p) terms ``l_bcp``:

    - ``"mean"`` (paper, Eq. 5 as a normalised norm): the mean of all ``l_bcp``;
    - ``"sum"`` (authors' code): for each (image, present class) the mean over its valid
      pixels, summed over classes and images (so it grows with the batch size and the
      number of classes per image).

    Either way a term with no valid pixel contributes nothing (and no gradient), and the
    loss is 0 when no pixel is valid.

    Args:
        cams_raw: (B, C, h, w) float raw CAM logits f(x) (pre-ReLU).
        confidence: (B, H, W) integer label map (0 bg, 1..C class, 255 ignore).
        labels: (B, C) multi-hot image labels.
        k: ReLU-k bound (paper: 6).
        reduction: one of :data:`REDUCTIONS`.
        beta: smooth L1 transition point (PyTorch default 1.0; with M', N in [0, 1] the
            loss equals 0.5 * (M' - N)^2 everywhere).

    Returns:
        scalar tensor (differentiable w.r.t. ``cams_raw``).

    Raises:
        ValueError: unknown reduction, shape mismatch, bad labels in ``confidence``.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"activation_loss: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if cams_raw.dim() != 4 or cams_raw.shape[:2] != labels.shape:
        raise ValueError(
            f"activation_loss: cams_raw must be (B, C, h, w) matching labels (B, C) {tuple(labels.shape)}, got {tuple(cams_raw.shape)}"
        )
    target, weight = confidence_targets(confidence.to(cams_raw.device), labels.to(cams_raw.device), tuple(cams_raw.shape[-2:]))
    cam = relu_k(cams_raw.float(), k) / float(k)
    per_px = F.smooth_l1_loss(cam, target, reduction="none", beta=beta) * weight
    if reduction == "mean":
        return per_px.sum() / weight.sum().clamp(min=1.0)
    n = weight.sum(dim=(2, 3))  # (B, C) valid pixels per (image, class)
    per_pair = per_px.sum(dim=(2, 3)) / n.clamp(min=1.0)
    return per_pair.sum()


@dataclass
class GSLMParams:
    """GSLM hyperparameters (``method:`` section of a config); defaults are the paper's.

    Attributes:
        k: ReLU-k bound of Seed Reactivation (paper Sec. 5.1: 6; Fig. 8(b): insensitive for k <= 45).
        alpha: weight of the activation loss, L = L_cls + alpha L_act (paper Eq. 6, Sec. 5.1: 0.5).
        theta_fg: confident-foreground threshold of Coarse Generation (paper Eq. 3, Sec. 5.1: 0.30).
        theta_bg: confident-background threshold (paper Eq. 3, Sec. 5.1: 0.05).
        rounds: number of SLM rounds (paper Sec. 5.1: 3; Fig. 8(c): stable after 3; GSLM+ uses 1).
        epochs_per_round: SLM epochs per round (paper Sec. 5.1: 5; authors' code: 10).
        slm_lr: backbone learning rate of the SLM rounds; new layers get ``optim.new_lr_mult`` x
            (paper Sec. 5.1: "0.01 for SLM ... decreased by 1/10 at the backbone" -> 0.001 / 0.01;
            authors' code: 1e-3 backbone / 1e-2 classifier, the same).
        slm_weight_decay: SLM weight decay; null = ``optim.weight_decay`` (paper Sec. 5.1: 0.001).
        boundary_constraint: refine the confidence CAM with a dense CRF (paper Eq. 3 R(.), Fig. 5:
            with/without BC); false = plain thresholding.
        crf: CRFParams overrides for the boundary constraint; the GSLM default is IRN's CRF with
            Gaussian compat 10 (reference-notes, authors' code).
        conflict: how pixels labelled a class by the fg pass but background by the bg pass are
            resolved (``wsss.refine.pseudo.CONFLICT_RULES``); "keep_fg" is the IRN / GSLM authors'
            procedure (the two passes' disagreement on fg-pass background becomes ignore).
        reduction: activation-loss reduction, "mean" (paper Eq. 5) or "sum" (authors' code:
            summed over classes and images).
        relu_k_inference: also bound the raw CAMs by k at inference of SLM rounds. Off by
            default: the paper's SLM wrapper "does not change the topology ... but affects
            gradient propagation" (Sec. 4.1), and CAMs are evaluated with the usual IRN
            procedure (Fig. 8(a) uses the same 0.15 sampling threshold as the baseline).
        seed_source: null = train the GLM (a plain CAM network, IRN recipe) inside this run
            (round 0); or a path to another run directory whose outputs give the first
            confidence CAM (GSLM+, paper Sec. 5.1 and Table 4).
        seed_kind: with ``seed_source``: "cams" (Coarse Generation on its ``cams/``), "confident"
            (its ``confident/`` PNGs used as they are) or "pseudo" (its ``pseudo/`` PNGs, no
            ignore band).
        init_from: weights the first SLM round starts from: null = the GLM (round 0's model,
            or the seed source's ``model.safetensors``); "imagenet" = ``model.pretrained``
            backbone with a new classifier; or a run directory / ``.safetensors`` file.
    """

    k: float = 6.0
    alpha: float = 0.5
    theta_fg: float = 0.30
    theta_bg: float = 0.05
    rounds: int = 3
    epochs_per_round: int = 5
    slm_lr: float = 0.001
    slm_weight_decay: float | None = None
    boundary_constraint: bool = True
    crf: dict | None = None
    conflict: str = "keep_fg"
    reduction: str = "mean"
    relu_k_inference: bool = False
    seed_source: str | None = None
    seed_kind: str = "cams"
    init_from: str | None = None

    def __post_init__(self) -> None:
        if not self.k > 0:
            raise ValueError(f"gslm: k must be > 0, got {self.k}")
        if self.alpha < 0:
            raise ValueError(f"gslm: alpha must be >= 0, got {self.alpha}")
        if not 0.0 <= self.theta_bg <= self.theta_fg <= 1.0:
            raise ValueError(f"gslm: need 0 <= theta_bg <= theta_fg <= 1, got {self.theta_bg}, {self.theta_fg}")
        if int(self.rounds) != self.rounds or self.rounds < 1:
            raise ValueError(f"gslm: rounds must be a positive integer, got {self.rounds}")
        if int(self.epochs_per_round) != self.epochs_per_round or self.epochs_per_round < 1:
            raise ValueError(f"gslm: epochs_per_round must be a positive integer, got {self.epochs_per_round}")
        if self.reduction not in REDUCTIONS:
            raise ValueError(f"gslm: reduction must be one of {REDUCTIONS}, got {self.reduction!r}")
        if self.seed_kind not in SEED_KINDS:
            raise ValueError(f"gslm: seed_kind must be one of {SEED_KINDS}, got {self.seed_kind!r}")
        from wsss.refine.pseudo import CONFLICT_RULES

        if self.conflict not in CONFLICT_RULES:
            raise ValueError(f"gslm: conflict must be one of {CONFLICT_RULES}, got {self.conflict!r}")

    def crf_params(self):
        """The CRF of the boundary constraint (:class:`wsss.refine.crf.CRFParams`): IRN's with
        Gaussian compat 10 plus ``crf`` overrides; 0 iterations when the constraint is off
        (the CRF then returns its input labels: plain thresholding)."""
        from wsss.refine.crf import CRFParams

        d = {"gaussian_compat": 10.0, **(self.crf or {})}
        if not self.boundary_constraint:
            d["iterations"] = 0
        return CRFParams.from_dict(d)

    def to_dict(self) -> dict:
        return asdict(self)
