"""What every wsss method shares: the CAM network and the Lightning training schedule.

A *CAM generator* is any ``nn.Module`` whose ``forward(images)`` returns
``(logits, cams)``: logits (B, C) (pre-sigmoid, one per foreground class) and raw class
activation maps (B, C, h, w) (pre-ReLU, at the backbone's output stride). Inference,
evaluation and refinement only see that interface, so any method, and GSLM on top of
any method, is evaluated the same way.

Methods subclass :class:`WSSSModule` and override :meth:`WSSSModule.compute_loss` (and, when
they train extra networks, :meth:`WSSSModule.extra_param_groups` or the whole
``training_step`` with manual optimisation); the optimiser, the poly schedule, logging,
checkpointing and the data loop are shared and never copied.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from wsss.backbones import Backbone
from wsss.config import Config, ConfigError, ModelConfig

__all__ = ["CAMNet", "WSSSModule", "multilabel_loss", "build_backbone", "build_cam_net", "init_classifier", "method_params", "poly_lambda", "check_finite", "TrainingDiverged", "normalize_cam"]


def normalize_cam(cam: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """ReLU, then divide each map by its own spatial max + ``eps`` (IRN's CAM normalisation).

    The one definition of the max normalisation every stage and method uses: inference
    (IRN ``make_cam``), GSLM's authors' activation loss, P-OC's psi (per image), CPN's max mode.

    Args:
        cam: (..., H, W) raw CAMs, any real values.
        eps: added to each map's max; > 0 keeps all-zero maps at 0.
    Returns:
        same shape and dtype, values in [0, 1) (all 0 where a map has no positive value).
        Differentiable.
    """
    cam = F.relu(cam)
    return cam / (cam.amax(dim=(-2, -1), keepdim=True) + eps)


def build_backbone(cfg: ModelConfig) -> Backbone:
    """A :class:`Backbone` from the ``model`` section of a config."""
    return Backbone(cfg.backbone, cfg.output_stride, cfg.pretrained, cfg.freeze_stem, cfg.freeze_bn, cfg.feature_layer,
                    getattr(cfg, "bn_mode", None))


CLASSIFIER_INITS = ("kaiming_fan_out", "kaiming_fan_in", "torch_default", "xavier")


def init_classifier(weight: torch.Tensor, scheme: str) -> None:
    """Initialise a classifier weight (C, D, 1, 1) in place.

    Schemes (std for D = 1280 / 2048 inputs, C = 20 outputs):

    - ``kaiming_fan_out``: N(0, 2/C), std ~0.32 (wsss before the fidelity review);
    - ``kaiming_fan_in``: N(0, 2/D), std 0.040 / 0.031 (Puzzle-CAM, lucasdavid/PNOC ``initialize``);
    - ``torch_default``: PyTorch's Conv2d default, U(-1/sqrt(D), 1/sqrt(D)), std 0.016 / 0.013
      (IRN ``resnet50_cam``: plain ``nn.Conv2d``);
    - ``xavier``: Xavier-uniform, std sqrt(2/(D+C)) ~0.04 / 0.03.

    Raises:
        ValueError: unknown scheme.
    """
    if scheme == "kaiming_fan_out":
        nn.init.kaiming_normal_(weight, mode="fan_out", nonlinearity="relu")
    elif scheme == "kaiming_fan_in":
        nn.init.kaiming_normal_(weight, mode="fan_in", nonlinearity="relu")
    elif scheme == "torch_default":
        nn.init.kaiming_uniform_(weight, a=5**0.5)  # what nn.Conv2d.reset_parameters does
    elif scheme == "xavier":
        nn.init.xavier_uniform_(weight)
    else:
        raise ValueError(f"model.classifier_init must be one of {CLASSIFIER_INITS}, got {scheme!r}")


def build_cam_net(cfg: ModelConfig, num_classes: int, **overrides) -> "CAMNet":
    """A :class:`CAMNet` from the ``model`` section (``overrides`` replace its fields, e.g.
    ``pretrained="none"`` for a network whose weights are loaded afterwards)."""
    if overrides:
        cfg = dataclasses.replace(cfg, **overrides)
    return CAMNet(build_backbone(cfg), num_classes, classifier_init=cfg.classifier_init)


def multilabel_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Multilabel soft-margin loss (mean over classes and batch), as in CAM/IRN/Puzzle-CAM.

    Args:
        logits: (B, C) pre-sigmoid scores.
        targets: (B, C) in [0, 1] (multi-hot, or smoothed labels).
    """
    return F.multilabel_soft_margin_loss(logits, targets)


class TrainingDiverged(ValueError):
    """The training loss became NaN or infinite (a one-line error for the CLI)."""


def check_finite(loss: torch.Tensor, step: int) -> None:
    """Stop a training whose loss is NaN/inf instead of writing NaN CAMs.

    Raises:
        TrainingDiverged: ``training diverged at step N: loss nan; lower optim.lr or change model.bn_mode``.
    """
    if not bool(torch.isfinite(loss.detach()).all()):
        raise TrainingDiverged(f"training diverged at step {step}: loss {float(loss.detach().float().mean())}; "
                               "lower optim.lr or change model.bn_mode")


def poly_lambda(total_steps: int, power: float = 0.9):
    """Poly learning-rate factor ``(1 - step/total)^power`` (DeepLab/IRN), floored at 0."""

    def f(step: int) -> float:
        return max(0.0, 1.0 - step / max(1, total_steps)) ** power

    return f


class CAMNet(nn.Module):
    """Backbone + 1x1 convolution classifier without bias (Zhou et al. 2016; IRN).

    ``forward(x)``: x (B, 3, H, W) normalised RGB -> ``(logits (B, C), cams (B, C, h, w))``
    with h = ceil(H / output_stride). Logits are the global average of the raw CAMs
    (equal to classifying GAP-pooled features, the classifier being linear).
    """

    def __init__(self, backbone: Backbone, num_classes: int, classifier_init: str = "kaiming_fan_out") -> None:
        super().__init__()
        self.backbone = backbone
        self.num_classes = num_classes
        self.classifier = nn.Conv2d(backbone.out_channels, num_classes, kernel_size=1, bias=False)
        init_classifier(self.classifier.weight, classifier_init)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cams = self.classifier(self.backbone(x))
        return cams.mean(dim=(2, 3)), cams

    def param_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(pretrained backbone parameters, newly added parameters), trainable ones only."""
        backbone = [p for p in self.backbone.parameters() if p.requires_grad]
        ids = {id(p) for p in backbone}
        new = [p for p in self.parameters() if p.requires_grad and id(p) not in ids]
        return backbone, new


def method_params(cfg: Config, params_cls: type, name: str):
    """Build a method's hyperparameter dataclass from ``cfg.method`` (minus ``name``).

    Raises:
        ConfigError: on keys the method does not know.
    """
    raw = {k: v for k, v in cfg.method.items() if k != "name"}
    known = {f.name for f in dataclasses.fields(params_cls)}
    bad = set(raw) - known
    if bad:
        raise ConfigError(f"{cfg.source or 'config'}: method '{name}' has no parameter(s) {sorted(bad)}; known: {sorted(known)}")
    return params_cls(**raw)


class WSSSModule(L.LightningModule):
    """Shared training schedule: SGD (momentum, weight decay), new layers at lr x ``new_lr_mult``,
    poly decay per optimisation step, multilabel soft-margin loss by default.

    Subclasses set ``self.net`` (the CAM generator used at inference) in ``__init__`` via
    :meth:`build_net` and override :meth:`compute_loss`.

    Class attributes a method may set (read by the shared frame, never by the method itself):

    - ``recipe``: ``"single"`` (default: the plain stage sequence train -> infer -> evaluate ->
      refine -> report of ``wsss.pipeline.run_pipeline``) or the name of a multi-stage recipe
      in ``wsss.pipeline.RECIPES`` (``"rounds"``: GSLM's rounds, ``wsss.recipes.rounds``).
    - ``extra_inputs``: names of per-image training inputs beside image and label (e.g.
      ``("confidence",)``); ``wsss.training.train(extras=...)`` must supply each one as a
      ``wsss.data.extras.ExtraSource`` and batches then carry ``batch[name]`` int64 (B, S, S),
      augmented jointly with the image. Training without one raises ValueError.
    - ``requires_map``: how a dependency run (``requires: {name: config}`` in the config) feeds
      the method: ``{name: (method parameter, file inside the run dir or "" for the dir)}``,
      e.g. ``{"oc": ("oc_checkpoint", "model.safetensors")}``; ``run_pipeline`` sets
      ``cfg.method[parameter] = str(<dependency run dir> / file)`` before training.
    """

    recipe: str = "single"
    extra_inputs: tuple[str, ...] = ()
    requires_map: dict[str, tuple[str, str]] = {}

    def __init__(self, cfg: Config, num_classes: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_classes = num_classes
        self.net = self.build_net()

    # -- to override -------------------------------------------------------------------
    def build_net(self) -> nn.Module:
        """The CAM generator trained by this method (default: :class:`CAMNet`)."""
        return build_cam_net(self.cfg.model, self.num_classes)

    def compute_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss of one batch and the scalars to log. Default: the CAM baseline."""
        logits, _ = self.net(batch["image"])
        loss = multilabel_loss(logits, batch["label"])
        return loss, {"cls": loss.detach()}

    def extra_param_groups(self) -> list[dict]:
        """Additional optimiser parameter groups (e.g. a method's extra heads)."""
        return []

    # -- shared ---------------------------------------------------------------------------
    def cam_generator(self) -> nn.Module:
        """The network whose ``forward`` gives ``(logits, cams)`` at inference."""
        return self.net

    @property
    def progress(self) -> float:
        """Fraction of training done, in [0, 1] (drives the ramps of P-NOC, GSLM, ...)."""
        total = max(1, int(self.trainer.estimated_stepping_batches)) if self._trainer is not None else 1
        return min(1.0, self.global_step / total)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss, logs = self.compute_loss(batch)
        check_finite(loss, self.global_step)
        bs = batch["image"].shape[0]
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=bs)
        for k, v in logs.items():
            self.log(f"train/{k}", v, batch_size=bs)
        return loss

    def param_groups_for(self, net: nn.Module, lr: float) -> list[dict]:
        """SGD groups for a CAMNet-like network: backbone at ``lr``, new layers at ``lr * new_lr_mult``."""
        o = self.cfg.optim
        if hasattr(net, "param_groups"):
            backbone, new = net.param_groups()
        else:
            backbone, new = [], [p for p in net.parameters() if p.requires_grad]
        groups = [{"params": backbone, "lr": lr}, {"params": new, "lr": lr * o.new_lr_mult}]
        return [g for g in groups if g["params"]]

    def make_optimizer(self, groups: list[dict]) -> tuple[torch.optim.Optimizer, dict]:
        """SGD over ``groups`` with the poly schedule stepped every optimisation step."""
        o = self.cfg.optim
        opt = torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, nesterov=o.nesterov)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, poly_lambda(total, o.poly_power))
        return opt, {"scheduler": sched, "interval": "step"}

    def configure_optimizers(self):
        groups = self.param_groups_for(self.net, self.cfg.optim.lr) + self.extra_param_groups()
        opt, sched = self.make_optimizer(groups)
        return {"optimizer": opt, "lr_scheduler": sched}
