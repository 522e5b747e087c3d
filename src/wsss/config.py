"""Typed run configuration: YAML files plus dotted command-line overrides.

A config is a YAML mapping with the sections below; every key has a default, so a file
only states what it changes. Unknown keys are errors (naming the file and the key), so a
typo never silently falls back to a default.

Dotted overrides address any key: ``--data.root DIR``, ``--data.limit 24``,
``--trainer.max_epochs 1``, ``--output_dir runs/x``, ``--method.alpha_re 2``. Values are
parsed as YAML scalars/lists (``--inference.scales "[1.0, 0.5]"``).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "Config",
    "ConfigError",
    "load_config",
    "apply_overrides",
    "parse_override_args",
]


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the file/key."""


@dataclass
class DataConfig:
    """Dataset and training augmentation (IRN / Puzzle-CAM recipe)."""

    root: str = "../shared/data/msrc21-voc"  # VOC-layout folder
    train_split: str = "train"  # split the CAM network is trained on
    eval_split: str = "train"  # split whose seeds / pseudo masks are the result (papers: VOC train)
    limit: int | None = None  # first N ids of every split (smoke runs)
    mask_dir: str = "auto"  # SegmentationClass | SegmentationClassAug | auto
    crop_size: int = 320  # random crop side, px
    resize_long: list[int] = field(default_factory=lambda: [240, 400])  # long side drawn uniformly in [lo, hi]
    hflip: bool = True
    color_jitter: dict | None = None  # e.g. {brightness: 0.3, contrast: 0.3, saturation: 0.3, hue: 0.1}
    batch_size: int = 8
    num_workers: int = 2
    check_files: bool = True  # open every image header / mask size before training
    train_unlabelled: bool = True  # train on images with no foreground class (all-zero label: negatives)


@dataclass
class ModelConfig:
    """Backbone of the CAM network (see :mod:`wsss.backbones`)."""

    backbone: str = "efficientnet_lite0"  # any timm model name
    output_stride: int = 16  # 8 or 16 (dilated last stages)
    pretrained: str = "offline"  # offline (packaged weights) | none (random init) | path to .pth/.safetensors
    freeze_stem: bool = True  # stem conv + its BN frozen (IRN)
    freeze_bn: bool = True  # every BatchNorm in eval mode with frozen affine (IRN)
    feature_layer: str = "head"  # head (timm forward_features) | last_stage (before EfficientNet's conv_head)
    classifier_init: str = "kaiming_fan_out"  # kaiming_fan_out | kaiming_fan_in | torch_default | xavier
    normalization: str = "imagenet"  # imagenet | inception ((x-0.5)/0.5, TF-Lite weights)


@dataclass
class OptimConfig:
    """SGD + poly schedule (IRN: lr 0.1, wd 1e-4, classifier lr x10, power 0.9)."""

    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    nesterov: bool = False
    new_lr_mult: float = 10.0  # lr multiplier of newly added layers (classifier, heads)
    poly_power: float = 0.9


@dataclass
class InferenceConfig:
    """Multi-scale + flip CAM inference (IRN: scales 1.0, 0.5, 1.5, 2.0, summed)."""

    scales: list[float] = field(default_factory=lambda: [1.0, 0.5, 1.5, 2.0])
    flip: bool = True
    splits: list[str] = field(default_factory=lambda: ["train", "val"])  # splits to infer CAMs for
    channels_last: bool = True  # same outputs, ~1.6x faster on CPU
    bf16: bool = False  # bf16 autocast: faster on CPU but changes CAMs by up to 0.45 at some pixels
    batch_views: bool = True  # run an image's views of one scale in one batch


@dataclass
class EvaluationConfig:
    """Seed evaluation: fixed background threshold + sweep (reference-notes protocol)."""

    threshold: float = 0.15  # IRN's cam_eval_thres for a ResNet-50 CAM; used when threshold_from is null
    threshold_from: str | None = "val"  # choose the fixed threshold by sweeping this split, apply unchanged
    sweep: list[float] = field(default_factory=lambda: [0.0, 0.6, 0.01])  # start, stop (inclusive), step


@dataclass
class RefineConfig:
    """Dense CRF pseudo masks and confident (affinity-style) labels."""

    enabled: bool = True
    fg_threshold: float = 0.30  # confident foreground (IRN conf_fg_thres)
    bg_threshold: float = 0.05  # confident background (IRN conf_bg_thres)
    confident: bool = True  # also write confident labels (255 = uncertain)
    workers: int | None = None  # processes for CRF; null = all cores
    crf: dict = field(default_factory=dict)  # CRFParams overrides (iterations, gt_prob, gaussian_*, bilateral_*)


@dataclass
class ReportConfig:
    num_samples: int = 8


@dataclass
class Config:
    """A whole run. ``method`` is free-form: ``name`` plus the method's own hyperparameters,
    validated by the method itself; ``trainer`` is passed to ``lightning.Trainer``."""

    method: dict = field(default_factory=lambda: {"name": "cam"})
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: dict = field(
        default_factory=lambda: {"max_epochs": 8, "accelerator": "auto", "devices": "auto", "strategy": "auto", "precision": "32-true"}
    )
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    output_dir: str = "runs/default"
    seed: int = 0
    source: str | None = None  # path of the YAML file this came from (set by load_config)

    def to_dict(self) -> dict:
        """Plain nested dict (for saving next to a run and for ``protocol`` blocks)."""
        return dataclasses.asdict(self)

    @property
    def method_name(self) -> str:
        return str(self.method.get("name", "cam"))


def _merge(base: dict, update: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _build(raw: dict, where: str) -> Config:
    """Validate ``raw`` against the dataclasses and build a Config."""
    defaults = Config().to_dict()
    unknown = set(raw) - set(defaults)
    if unknown:
        raise ConfigError(f"{where}: unknown top-level key(s) {sorted(unknown)}; allowed: {sorted(defaults)}")
    merged = _merge(defaults, raw)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(Config):
        value = merged[f.name]
        sub = f.default_factory() if f.default_factory is not dataclasses.MISSING else None  # type: ignore[misc]
        if dataclasses.is_dataclass(sub):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: section '{f.name}' must be a mapping, got {value!r}")
            names = {g.name for g in dataclasses.fields(sub)}
            bad = set(value) - names
            if bad:
                raise ConfigError(f"{where}: unknown key(s) {sorted(f'{f.name}.{b}' for b in bad)}; allowed: {sorted(names)}")
            kwargs[f.name] = type(sub)(**value)
        else:
            if f.name in ("method", "trainer") and not isinstance(value, dict):
                raise ConfigError(f"{where}: section '{f.name}' must be a mapping, got {value!r}")
            kwargs[f.name] = value
    cfg = Config(**kwargs)
    if cfg.data.limit is not None and (not isinstance(cfg.data.limit, int) or cfg.data.limit < 1):
        raise ConfigError(f"{where}: data.limit must be a positive integer or null, got {cfg.data.limit!r}")
    if cfg.model.output_stride not in (8, 16, 32):
        raise ConfigError(f"{where}: model.output_stride must be 8, 16 or 32, got {cfg.model.output_stride}")
    return cfg


def parse_override_args(args: list[str]) -> dict[str, Any]:
    """Turn ``["--data.root", "DIR", "--trainer.max_epochs=1"]`` into ``{"data.root": "DIR", ...}``.

    Raises:
        ConfigError: on a token that is not ``--key value`` / ``--key=value``.
    """
    out: dict[str, Any] = {}
    i = 0
    while i < len(args):
        tok = args[i]
        if not tok.startswith("--") or len(tok) < 3:
            raise ConfigError(f"command line: expected --key value, got {tok!r}")
        if "=" in tok:
            key, val = tok[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(args):
                raise ConfigError(f"command line: {tok} needs a value")
            key, val = tok[2:], args[i + 1]
            i += 2
        try:
            out[key] = yaml.safe_load(val) if val != "" else ""
        except yaml.YAMLError:
            out[key] = val
    return out


def apply_overrides(raw: dict, overrides: dict[str, Any]) -> dict:
    """Set dotted keys in a nested dict (creating mappings as needed); returns a copy."""
    out = copy.deepcopy(raw)
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        node = out
        for p in parts[:-1]:
            if not isinstance(node.get(p, {}), dict):
                raise ConfigError(f"command line: --{dotted}: '{p}' is not a section")
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Load a YAML config (or the defaults when ``path`` is None) and apply dotted overrides.

    Raises:
        ConfigError: missing/unparsable file, unknown keys, wrong section types.
    """
    raw: dict = {}
    where = "defaults"
    if path is not None:
        path = Path(path)
        where = str(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: invalid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
    if overrides:
        raw = apply_overrides(raw, overrides)
        where += " + command-line overrides"
    cfg = _build(raw, where)
    cfg.source = str(path) if path is not None else None
    return cfg
