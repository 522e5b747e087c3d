"""Training schedule of the inter-pixel relation (boundary) network: a LightningModule of its own.

IRN ``step/train_irn.py``: SGD over the head only, lr 0.1, weight decay 1e-4, poly 0.9 per step,
3 epochs, batch 32, crop 512, the same flip / rescale augmentation as CAM training, no colour
jitter. Batches carry the image and its confident label map (``affinity_label``: 0 bg, 1..C
class, 255 unsure/padding) through the same joint augmentation; the map is taken to the
stride-4 grid by nearest sampling (IRN: ``pil_rescale(label, 0.25, 0)``).

IRN's optimiser has the same positional-argument quirk as its CAM training (momentum = 1e-4);
``momentum`` is a parameter here so that both forms can be run.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from wsss.affinity.model import BoundaryNet, affinity_loss
from wsss.backbones import Backbone
from wsss.methods.base import poly_lambda

__all__ = ["BoundaryModule", "stride4_labels"]


def stride4_labels(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour sampling of a (B, S, S) label map onto the (B, h, w) stride-4 grid
    (pixel (i, j) of the grid takes label (4 i, 4 j)), cropped/padded with 255 to ``size``."""
    sub = labels[:, ::4, ::4]
    h, w = size
    out = torch.full((labels.shape[0], h, w), 255, dtype=labels.dtype, device=labels.device)
    hh, ww = min(h, sub.shape[1]), min(w, sub.shape[2])
    out[:, :hh, :ww] = sub[:, :hh, :ww]
    return out


class BoundaryModule(L.LightningModule):
    """Trains :class:`~wsss.affinity.model.BoundaryNet` with IRN's pair loss.

    Args:
        backbone: name of the timm backbone (frozen; IRN: ImageNet ResNet-50, not the CAM net).
        output_stride: its output stride (IRN: 16).
        pretrained: ``offline`` / ``none`` / a weights file (see :mod:`wsss.backbones`).
        radius: training pair radius (IRN: 10).
        lr, momentum, weight_decay, poly_power: SGD + poly schedule of the head (IRN: 0.1, 1e-4
            (quirk), 1e-4, 0.9).
    """

    #: what the training dataset must deliver beside image and label
    extra_inputs = ("affinity_label",)

    def __init__(self, backbone: str = "efficientnet_lite0", output_stride: int = 16, pretrained: str = "offline",
                 radius: int = 10, lr: float = 0.1, momentum: float = 1e-4, weight_decay: float = 1e-4,
                 poly_power: float = 0.9) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = BoundaryNet(Backbone(backbone, output_stride, pretrained, freeze_stem=True, freeze_bn=True))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        logits = self.net(batch["image"])
        labels = stride4_labels(batch["affinity_label"].long(), tuple(logits.shape[-2:]))
        loss, parts = affinity_loss(torch.sigmoid(logits), labels, radius=int(self.hparams.radius))
        bs = batch["image"].shape[0]
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=bs)
        for k in ("bg_pos", "fg_pos", "neg"):
            self.log(f"train/{k}", parts[k], batch_size=bs)
        return loss

    def configure_optimizers(self):
        hp = self.hparams
        opt = torch.optim.SGD(self.net.head_parameters(), lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, poly_lambda(total, hp.poly_power))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
