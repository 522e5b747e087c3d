"""IRN's inter-pixel relation network (boundary branch), its pair labels and its loss.

Source: Ahn, Cho & Kwak, IRN (CVPR 2019) Sec. 3.2, and jiwoon-ahn/irn ``net/resnet50_irn.py``,
``step/train_irn.py``, ``misc/indexing.py`` (reference-notes, "Affinity and random walk"):

- the backbone is frozen and kept in eval mode (features detached); only the head trains;
- head: per backbone stage a 1x1 conv to 32 channels + GroupNorm(4) + ReLU, resized to stride 4,
  concatenated (5 x 32 = 160) -> 1x1 conv (with bias) -> 1 channel; boundary = sigmoid;
- affinity of a pixel pair = 1 - max boundary on the straight path between them
  (:func:`wsss.refine.random_walk.path_affinity`), training radius 10;
- labels: the confident label map (0 background, 1..C class, 255 unsure) at stride 4 (nearest);
  a pair inside the image with both labels < 255 is positive-background (both 0),
  positive-foreground (same class > 0) or negative (different labels);
- loss (train_irn.py): ``(bg_pos / 2 + fg_pos / 2 + neg) / 2`` with ``pos = -log(aff + 1e-5)``,
  ``neg = -log(1 + 1e-5 - aff)``, each term the mean over its pairs: weights 1/4, 1/4, 1/2.
  (IRN's displacement branch is for instances and is left out, irn#19.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from wsss.backbones import Backbone
from wsss.refine.random_walk import path_affinity, search_offsets

__all__ = ["BoundaryNet", "pair_labels", "affinity_loss", "pair_counts", "pair_f1", "unsure_band", "LABEL_SOURCES"]

#: where the affinity labels come from: ``confident`` = IRN's two CRF passes (``cam_to_ir_label``);
#: ``pseudo`` = wsss option, the refine stage's CRF pseudo masks with an unsure band at their edges
LABEL_SOURCES = ("confident", "pseudo")


class BoundaryNet(nn.Module):
    """Frozen backbone + IRN boundary head.

    Args:
        backbone: a :class:`~wsss.backbones.Backbone` (its ImageNet weights; IRN does not start
            from the CAM network). Frozen here: no gradient, BatchNorm in eval mode.
        width: channels per stage branch (IRN: 32).

    ``forward(x)``: x (B, 3, H, W) normalised RGB -> boundary logits (B, ceil(H/4), ceil(W/4)).
    ``boundary(x)``: sigmoid of the mean of the logits of x and of its flip flipped back (IRN
    ``EdgeDisplacement``), (B, ceil(H/4), ceil(W/4)) in [0, 1].
    """

    def __init__(self, backbone: Backbone, width: int = 32) -> None:
        super().__init__()
        self.backbone = backbone
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.branches = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, width, 1, bias=False), nn.GroupNorm(4, width), nn.ReLU(inplace=True))
            for c in backbone.stage_channels
        )
        self.fuse = nn.Conv2d(width * len(backbone.stage_channels), 1, 1, bias=True)

    def train(self, mode: bool = True) -> "BoundaryNet":
        super().train(mode)
        self.backbone.eval()  # IRN: the backbone stays in eval mode
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = ((x.shape[-2] - 1) // 4 + 1, (x.shape[-1] - 1) // 4 + 1)
        with torch.no_grad():
            _, stages = self.backbone.forward_stages(x)
        feats = []
        for branch, f in zip(self.branches, stages):
            y = branch(f.detach())
            if y.shape[-2:] != size:
                y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
            feats.append(y)
        return self.fuse(torch.cat(feats, dim=1))[:, 0]

    @torch.no_grad()
    def boundary(self, x: torch.Tensor) -> torch.Tensor:
        logits = self(torch.cat([x, x.flip(-1)], dim=0))
        b = x.shape[0]
        return torch.sigmoid(logits[:b] / 2 + logits[b:].flip(-1) / 2)

    def head_parameters(self) -> list[nn.Parameter]:
        """The trainable parameters (the head only)."""
        return [p for p in self.parameters() if p.requires_grad]


def pair_labels(labels: torch.Tensor, radius: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Positive-background, positive-foreground and negative pair masks of a label map.

    Args:
        labels: (B, h, w) int64 label map on the affinity grid (0 bg, 1..C class, 255 unsure
            or padding).
        radius: pair radius (IRN training: 10).

    Returns:
        ``(bg_pos, fg_pos, neg)``, each (B, K, h, w) float32 in {0, 1}, K = number of offsets of
        :func:`~wsss.refine.random_walk.search_offsets`; entry [b, k, y, x] is the pair
        ((y, x), (y + dy_k, x + dx_k)); pairs with a partner outside the map or an unsure
        (255) end are 0 in all three.
    """
    if labels.dim() != 3:
        raise ValueError(f"labels must be (B, h, w), got {tuple(labels.shape)}")
    offsets, _ = search_offsets(radius)
    r = int(radius)
    h, w = labels.shape[-2:]
    padded = F.pad(labels, (r, r, r, r), value=255)
    src = labels[:, None]
    dst = torch.stack([padded[:, r + dy : r + dy + h, r + dx : r + dx + w] for dy, dx in offsets], dim=1)
    valid = (src < 255) & (dst < 255)
    same = src == dst
    bg_pos = (valid & same & (src == 0)).float()
    fg_pos = (valid & same & (src > 0)).float()
    neg = (valid & ~same).float()
    return bg_pos, fg_pos, neg


def affinity_loss(boundary: torch.Tensor, labels: torch.Tensor, radius: int = 10, eps: float = 1e-5) -> tuple[torch.Tensor, dict]:
    """IRN's inter-pixel relation loss on a predicted boundary map.

    Args:
        boundary: (B, h, w) boundary probability in [0, 1] (sigmoid of the logits).
        labels: (B, h, w) int64 label map on the same grid (255 = unsure/padding).
        radius: pair radius (IRN: 10).
        eps: IRN's 1e-5 inside the logs and denominators.

    Returns:
        ``(loss, parts)``: loss = bg_pos / 4 + fg_pos / 4 + neg / 2 (scalar, differentiable),
        parts = the three detached means and the pair counts.
    """
    if boundary.shape != labels.shape:
        raise ValueError(f"boundary {tuple(boundary.shape)} and labels {tuple(labels.shape)} differ")
    aff = path_affinity(boundary, radius)  # (B, K, h, w)
    bg_pos, fg_pos, neg = pair_labels(labels, radius)
    pos_loss = -torch.log(aff + eps)
    neg_loss = -torch.log(1.0 + eps - aff)
    bg = (bg_pos * pos_loss).sum() / (bg_pos.sum() + eps)
    fg = (fg_pos * pos_loss).sum() / (fg_pos.sum() + eps)
    ng = (neg * neg_loss).sum() / (neg.sum() + eps)
    loss = (bg / 2 + fg / 2 + ng) / 2
    parts = {"bg_pos": bg.detach(), "fg_pos": fg.detach(), "neg": ng.detach(),
             "n_bg_pos": bg_pos.sum().detach(), "n_fg_pos": fg_pos.sum().detach(), "n_neg": neg.sum().detach()}
    return loss, parts


def pair_counts(labels: torch.Tensor, gt: torch.Tensor, radius: int) -> dict[str, int]:
    """Confusion counts of the pair labels a confident label map gives against the true pairs.

    A true pair has both ends non-void in ``gt``: positive when the two true labels are equal,
    negative otherwise. A labelled pair is one of :func:`pair_labels` (positive = bg_pos or
    fg_pos, negative = neg); only labelled pairs whose true pair exists are scored.

    Args:
        labels: (B, h, w) int64 confident labels on the affinity grid (255 = unsure).
        gt: (B, h, w) int64 true labels on the same grid (255 = void).
        radius: pair radius (IRN training: 10).

    Returns:
        ``{"tp_pos", "n_pos_pred", "n_pos_true", "tp_neg", "n_neg_pred", "n_neg_true"}`` (ints):
        true-positive, labelled and true counts of positive and of negative pairs.
    """
    if labels.shape != gt.shape or labels.dim() != 3:
        raise ValueError(f"labels {tuple(labels.shape)} and gt {tuple(gt.shape)} must be equal (B, h, w) shapes")
    bg_pos, fg_pos, neg = pair_labels(labels, radius)
    t_bg, t_fg, t_neg = pair_labels(gt, radius)
    t_pos = (t_bg + t_fg) > 0
    t_neg = t_neg > 0
    t_any = t_pos | t_neg
    p_pos = ((bg_pos + fg_pos) > 0) & t_any
    p_neg = (neg > 0) & t_any
    return {"tp_pos": int((p_pos & t_pos).sum()), "n_pos_pred": int(p_pos.sum()), "n_pos_true": int(t_pos.sum()),
            "tp_neg": int((p_neg & t_neg).sum()), "n_neg_pred": int(p_neg.sum()), "n_neg_true": int(t_neg.sum())}


def pair_f1(counts: dict[str, int]) -> dict[str, float]:
    """F1 of the positive and of the negative pair labels from (summed) :func:`pair_counts`,
    and their mean ``f1`` (the criterion of ``affinity.criterion: pair_f1``; IRN weighs the
    positive and the negative terms of its loss equally). Each F1 in [0, 100] (percent); 0 when
    a class of pairs is neither labelled nor true."""
    out: dict[str, float] = {}
    for kind in ("pos", "neg"):
        tp, npred, ntrue = counts[f"tp_{kind}"], counts[f"n_{kind}_pred"], counts[f"n_{kind}_true"]
        out[f"f1_{kind}"] = 200.0 * tp / (npred + ntrue) if npred + ntrue else 0.0
        out[f"precision_{kind}"] = 100.0 * tp / npred if npred else 0.0
        out[f"recall_{kind}"] = 100.0 * tp / ntrue if ntrue else 0.0
    out["f1"] = (out["f1_pos"] + out["f1_neg"]) / 2
    return out


def unsure_band(labels: torch.Tensor, width: int) -> torch.Tensor:
    """Mark every pixel within ``width`` px of a label change as unsure (255).

    The affinity labels of ``affinity.label_source: pseudo`` (a wsss option, not IRN): a CRF
    pseudo mask labels every pixel, so its pairs include many negatives, but the mask's edges are
    only near the true object edges; the band drops the pairs whose ends sit closest to them.

    Args:
        labels: (H, W) integer label map (e.g. 0 background, 1..C class; 255 unsure).
        width: band half-width in pixels (Chebyshev distance to the nearest pixel on the other
            side of a change, counted on both sides); 0 returns the labels unchanged.

    Returns:
        (H, W) tensor of the same dtype: ``labels`` with the band set to 255.

    Raises:
        ValueError: labels not 2-D, or width < 0.
    """
    if labels.dim() != 2:
        raise ValueError(f"unsure_band: labels must be (H, W), got {tuple(labels.shape)}")
    if int(width) != width or width < 0:
        raise ValueError(f"unsure_band: width must be an integer >= 0, got {width!r}")
    if width == 0:
        return labels.clone()
    edge = torch.zeros(labels.shape, dtype=torch.float32)
    dv = (labels[1:] != labels[:-1]).float()
    dh = (labels[:, 1:] != labels[:, :-1]).float()
    edge[1:] = torch.maximum(edge[1:], dv)
    edge[:-1] = torch.maximum(edge[:-1], dv)
    edge[:, 1:] = torch.maximum(edge[:, 1:], dh)
    edge[:, :-1] = torch.maximum(edge[:, :-1], dh)
    w = int(width)
    near = F.max_pool2d(edge[None, None], 2 * w - 1, 1, w - 1)[0, 0] > 0
    out = labels.clone()
    out[near] = 255
    return out
