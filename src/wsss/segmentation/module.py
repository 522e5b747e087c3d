"""Training schedule of the segmentation network: cross-entropy on pseudo masks, SGD + poly.

:class:`SegParams` is the ``segmentation:`` config section (every value with its source);
:class:`SegmentationModule` is the LightningModule that trains a
:class:`~wsss.segmentation.model.SegmentationNet` on ``batch["image"]`` and a label map
``batch[target_key]`` (``"pseudo_mask"``: the run's pseudo masks; ``"mask"``: the true masks,
for the fully supervised upper bound).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from wsss.methods.base import poly_lambda
from wsss.segmentation.model import SegmentationNet, build_deeplabv3plus

__all__ = ["SegParams", "SegmentationModule", "SOURCES", "IGNORE_INDEX"]

#: label value ignored by the loss and the metrics (VOC void / uncertain pseudo-mask pixels)
IGNORE_INDEX = 255

#: ``source`` -> (folder of the run the training masks come from, batch key of the target).
#: ``"gt"`` trains on the dataset's true masks: the fully supervised upper bound.
SOURCES: dict[str, tuple[str | None, str]] = {
    "pseudo": ("pseudo", "pseudo_mask"),  # dense-CRF pseudo masks (refine stage)
    "pseudo_rw": ("pseudo_rw", "pseudo_mask"),  # affinity + random-walk pseudo masks
    "pseudo_rw_crf": ("pseudo_rw_crf", "pseudo_mask"),  # the walk's masks + dense CRF (random_walk.crf)
    "gt": (None, "mask"),  # ground truth (upper bound)
}


@dataclass(frozen=True)
class SegParams:
    """The ``segmentation:`` config section (all keys optional).

    Stage:
        enabled: run the segmentation stage in ``wsss pipeline`` (``wsss segment`` always runs).
        source: training masks: ``"pseudo"`` (CRF pseudo masks, ``<run>/pseudo/``),
            ``"pseudo_rw"`` (random-walk masks, ``<run>/pseudo_rw/``), ``"pseudo_rw_crf"`` (the same
            + dense CRF, ``random_walk.crf``) or ``"gt"`` (true masks;
            fully supervised upper bound, issue 11).
        eval_splits: splits scored against ground truth (issue 11: val, and train to compare
            with the pseudo masks).

    Network (:func:`~wsss.segmentation.model.build_deeplabv3plus`):
        encoder: timm encoder; ``efficientnet_lite0`` (CPU recipe, offline ImageNet weights;
            papers: ResNet-101 V2, P-NOC ResNeSt-269 V3+).
        pretrained: ``"offline"`` | ``"none"`` | path to a weights file (timm key names).
        output_stride: 16 (DeepLabV3+ training stride, Chen et al. 2018).
        atrous_rates: (6, 12, 18), DeepLabV3 rates at stride 16.
        normalization: input normalisation name (``wsss.data.transforms.NORMALIZATIONS``);
            ``None`` = the run's ``model.normalization``.

    Data (the CAM training augmentation, ``wsss.data.transforms.TrainTransform``):
        crop_size: 320 (CPU recipe for ~320 px MSRC photos; P-NOC V3+ 512, DeepLabV2 321).
        resize_long: (240, 400) (CPU recipe; P-NOC V3+ 320-640 for crop 512).
        hflip: True (every DeepLab recipe).
        color_jitter: None (P-NOC V3+ runner uses colour jitter).
        batch_size: 8 (CPU recipe; P-NOC V3+ 32 runner / 16 paper, SSC 16). Must be >= 2: the
            ASPP image-pooling branch has a BatchNorm over a 1x1 map.
        epochs: 40 (CPU recipe: ~1,700 iterations on MSRC's 354 train images at batch 8;
            P-NOC V3+ 15 epochs runner / 50 paper on VOC's 10,582).

    Optimisation (DeepLab SGD + poly):
        lr: 0.007 (DeepLabV3+, Chen et al. 2018; P-NOC V3+ runner; SSC/BECO 0.01).
        momentum: 0.9 (all DeepLab recipes).
        weight_decay: 4e-5 (DeepLabV3+ / P-NOC V3+ runner; SSC/BECO 1e-4, DeepLabV2 5e-4).
        head_lr_mult: 10 (DeepLabV2 convention, kazuto1011/deeplab-pytorch: decoder/ASPP and
            classifier at lr x10 over the pretrained encoder).
        poly_power: 0.9 (DeepLab poly schedule, stepped per iteration).
        label_smoothing: 0.0 (P-NOC V3+ runner: 0.1).
        freeze_bn: False (DeepLabV3+ fine-tunes BatchNorm; DeepLabV2 freezes it). True keeps
            every encoder BatchNorm in eval mode with frozen affine parameters.

    Evaluation (:func:`~wsss.segmentation.infer.evaluate_segmentation`):
        eval_scales: (0.5, 1.0, 1.5, 2.0) with flip for the multi-scale variant (P-NOC V3+:
            0.5-2.0 + flip; DeepLabV2 MSC); the single-scale variant always uses (1.0,), no flip.
        crf: also score multi-scale + flip + dense CRF (DeepLab CRF, kazuto1011/deeplab-pytorch).

    Raises:
        ValueError: an invalid value (``SegParams: <key> ...``).
    """

    enabled: bool = False
    source: str = "pseudo"
    eval_splits: tuple[str, ...] = ("val", "train")
    encoder: str = "efficientnet_lite0"
    pretrained: str = "offline"
    output_stride: int = 16
    atrous_rates: tuple[int, int, int] = (6, 12, 18)
    normalization: str | None = None
    crop_size: int = 320
    resize_long: tuple[int, int] = (240, 400)
    hflip: bool = True
    color_jitter: Mapping[str, float] | None = None
    batch_size: int = 8
    epochs: int = 40
    lr: float = 0.007
    momentum: float = 0.9
    weight_decay: float = 4e-5
    head_lr_mult: float = 10.0
    poly_power: float = 0.9
    label_smoothing: float = 0.0
    freeze_bn: bool = False
    eval_scales: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0)
    crf: bool = True

    def __post_init__(self) -> None:
        def bad(key: str, msg: str) -> None:
            raise ValueError(f"SegParams: {key} {msg}, got {getattr(self, key)!r}")

        if self.source not in SOURCES:
            bad("source", f"must be one of {sorted(SOURCES)}")
        if self.output_stride not in (8, 16):
            bad("output_stride", "must be 8 or 16")
        for key, fix in (("eval_splits", str), ("atrous_rates", int), ("resize_long", int), ("eval_scales", float)):
            object.__setattr__(self, key, tuple(fix(v) for v in getattr(self, key)))
        if len(self.atrous_rates) != 3 or min(self.atrous_rates) < 1:
            bad("atrous_rates", "must be three positive integers")
        if len(self.resize_long) != 2 or not 0 < self.resize_long[0] <= self.resize_long[1]:
            bad("resize_long", "must be [lo, hi] with 0 < lo <= hi")
        if not self.eval_scales or min(self.eval_scales) <= 0:
            bad("eval_scales", "must be a non-empty list of positive scales")
        if int(self.crop_size) < 16:
            bad("crop_size", "must be >= 16")
        if int(self.batch_size) < 2:
            bad("batch_size", "must be >= 2 (BatchNorm in the ASPP pooling branch)")
        if int(self.epochs) < 1:
            bad("epochs", "must be >= 1")
        if float(self.lr) <= 0:
            bad("lr", "must be > 0")
        if not 0.0 <= float(self.label_smoothing) < 1.0:
            bad("label_smoothing", "must lie in [0, 1)")
        if float(self.weight_decay) < 0 or float(self.head_lr_mult) <= 0 or not 0 <= float(self.momentum) < 1:
            raise ValueError("SegParams: weight_decay must be >= 0, head_lr_mult > 0, momentum in [0, 1)")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "SegParams":
        """Build from the ``segmentation:`` config mapping; missing keys keep their defaults.

        Raises:
            ValueError: ``SegParams: unknown key(s) [...]; known: [...]`` or an invalid value.
        """
        if d is None:
            return cls()
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"SegParams: unknown key(s) {unknown}; known: {sorted(known)}")
        return cls(**dict(d))

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (lists instead of tuples) for configs, fingerprints and ``model.json``."""
        out = dataclasses.asdict(self)
        return {k: (list(v) if isinstance(v, tuple) else (dict(v) if isinstance(v, Mapping) else v)) for k, v in out.items()}

    @property
    def target_key(self) -> str:
        """Batch key of the training target for ``source`` (``"pseudo_mask"`` or ``"mask"``)."""
        return SOURCES[self.source][1]

    @property
    def mask_folder(self) -> str | None:
        """Run sub-folder of the training masks for ``source`` (None for ``"gt"``)."""
        return SOURCES[self.source][0]


class SegmentationModule(L.LightningModule):
    """Trains DeepLabV3+ with per-pixel cross-entropy (ignore 255) under SGD + poly.

    Args:
        num_classes: K, classes including background (the network's output channels).
        params: hyperparameters (:class:`SegParams`, defaults if None).
        target_key: batch key of the target label map; default ``params.target_key``
            (``"pseudo_mask"``, or ``"mask"`` for ``source: gt``).
        net: an already built :class:`SegmentationNet` (tests, fine-tuning); default
            :func:`build_deeplabv3plus` from ``params``.

    Batch:
        ``batch["image"]`` float32 (B, 3, S, S) normalised, B >= 2; ``batch[target_key]`` int64
        (B, S, S) with values in 0..K-1 or 255 (ignored: void, uncertain, crop padding).

    Loss:
        ``F.cross_entropy(logits, target, ignore_index=255, label_smoothing=params.label_smoothing)``,
        the mean over non-ignored pixels (DeepLab; P-NOC V3+ with label smoothing 0.1). A batch
        with every pixel ignored gives loss 0 (no gradient) instead of NaN.

    Optimiser:
        SGD (momentum, weight decay) with the encoder at ``lr`` and decoder + head at
        ``lr * head_lr_mult``; poly factor ``(1 - step / total) ** poly_power`` every step,
        ``total = trainer.estimated_stepping_batches`` (:func:`wsss.methods.base.poly_lambda`).

    Raises:
        ValueError: in ``training_step``, a target of the wrong shape/dtype, labels outside
            0..K-1 and not 255, or a batch of one image.
    """

    def __init__(self, num_classes: int, params: SegParams | None = None, *, target_key: str | None = None,
                 net: SegmentationNet | None = None) -> None:
        super().__init__()
        self.params = params or SegParams()
        p = self.params
        self.num_classes = int(num_classes)
        self.target_key = target_key or p.target_key
        self.net = net if net is not None else build_deeplabv3plus(
            self.num_classes, p.encoder, p.pretrained, p.output_stride, p.atrous_rates)
        if self.net.num_classes != self.num_classes:
            raise ValueError(f"SegmentationModule: network has {self.net.num_classes} classes, expected {self.num_classes}")
        if p.freeze_bn:
            for m in self.net.model.encoder.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    for q in m.parameters():
                        q.requires_grad_(False)

    def train(self, mode: bool = True) -> "SegmentationModule":
        super().train(mode)
        if self.params.freeze_bn:
            for m in self.net.model.encoder.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, K, H, W) of normalised images (B, 3, H, W)."""
        return self.net(x)

    def compute_loss(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Cross-entropy of one batch (see the class docstring); checks the target."""
        x = batch["image"]
        if self.target_key not in batch:
            raise ValueError(f"SegmentationModule: batch has no {self.target_key!r} (keys: {sorted(batch)}); "
                             "the dataset must deliver the training masks under that key")
        y = batch[self.target_key]
        if x.shape[0] < 2:
            raise ValueError("SegmentationModule: batch of one image; the ASPP pooling BatchNorm needs >= 2 "
                             "(use drop_last=True and batch_size >= 2)")
        if y.shape != (x.shape[0], *x.shape[-2:]):
            raise ValueError(f"SegmentationModule: target {self.target_key!r} shape {tuple(y.shape)} does not match "
                             f"images {tuple(x.shape)}")
        if y.dtype != torch.int64:
            raise ValueError(f"SegmentationModule: target {self.target_key!r} must be int64, got {y.dtype}")
        bad = (y != IGNORE_INDEX) & ((y < 0) | (y >= self.num_classes))
        if bool(bad.any()):
            raise ValueError(f"SegmentationModule: target label {int(y[bad][0])} outside 0..{self.num_classes - 1} "
                             f"and not {IGNORE_INDEX}")
        logits = self.net(x)
        if not bool((y != IGNORE_INDEX).any()):
            return logits.sum() * 0.0
        return F.cross_entropy(logits, y, ignore_index=IGNORE_INDEX, label_smoothing=float(self.params.label_smoothing))

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self.compute_loss(batch)
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=int(batch["image"].shape[0]))
        return loss

    def param_groups(self) -> list[dict]:
        """SGD groups: encoder at ``lr``, decoder + head at ``lr * head_lr_mult`` (empty groups dropped)."""
        p = self.params
        enc, new = self.net.param_groups()
        groups = [{"params": enc, "lr": p.lr, "name": "encoder"},
                  {"params": new, "lr": p.lr * p.head_lr_mult, "name": "decoder"}]
        return [g for g in groups if g["params"]]

    def configure_optimizers(self):
        p = self.params
        opt = torch.optim.SGD(self.param_groups(), lr=p.lr, momentum=p.momentum, weight_decay=p.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, poly_lambda(total, p.poly_power))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
