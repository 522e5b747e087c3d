"""Typed run configuration: YAML files composed with ``base:``, plus dotted command-line overrides.

A config is a YAML mapping with the sections below; every key has a default, so a file
only states what it changes. Unknown keys are errors (naming the file and the key), so a
typo never silently falls back to a default, and every value is checked against the type
of its dataclass field (``<file>: data.batch_size must be an int, got 'eight'``).

**Composition.** ``base: cam.yaml`` (a path relative to the including file, or a list of
them, merged in order) loads another config first; the including file's values are then
deep-merged over it: mappings merge key by key, anything else (lists included) is replaced.
Bases may have bases; a cycle is an error naming the files. Resolution order, last wins:
dataclass defaults < bases (in list order, each resolved recursively) < the file itself <
command-line overrides.

**Dependencies.** ``requires: {oc: cam.yaml}`` names the configs of runs this recipe needs
(what they feed is the method's business, see :func:`wsss.pipeline.resolve_requires`). Each
path is resolved relative to the file that declares it (command-line ``--requires.NAME PATH``:
relative to the working directory) and stored relative to the working directory when it lies
below it, else absolute. ``NAME: null`` drops a dependency declared by a base.

Dotted overrides address any key: ``--data.root DIR``, ``--data.limit 24``,
``--trainer.max_epochs 1``, ``--output_dir runs/x``, ``--method.alpha_re 2``. Values are
parsed as YAML scalars/lists (``--inference.scales "[1.0, 0.5]"``). The overrides applied
are kept in :attr:`Config.overrides` so that a dependency run can be built with the same ones.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import shlex
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "Config",
    "ConfigError",
    "load_config",
    "dump_config",
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
    freeze_bn: bool = True  # shorthand for bn_mode when bn_mode is null: true = frozen, false = trainable
    bn_mode: str | None = None  # frozen (IRN: eval mode, stats + affine fixed) | batch_stats | trainable; null = from freeze_bn
    feature_layer: str = "head"  # head (timm forward_features) | last_stage (before EfficientNet's conv_head)
    classifier_init: str = "kaiming_fan_out"  # kaiming_fan_out | kaiming_fan_in | torch_default | xavier
    normalization: str = "imagenet"  # imagenet | inception ((x-0.5)/0.5, TF-Lite weights)
    channels_last: bool = False  # NHWC memory format in every training stage: same math up to float rounding, 1.3-1.6x faster on CPU


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
class AffinityConfig:
    """Affinity labels and the inter-pixel relation (boundary) network (IRN Sec. 3.2, train_irn.py)."""

    enabled: bool = False  # run the affinity + random-walk stages in `wsss pipeline`
    label_source: str = "confident"  # confident (IRN cam_to_ir_label) | pseudo (wsss option: the refine stage's CRF pseudo masks)
    label_band: int = 0  # label_source pseudo: pixels within this many px of a mask edge are unsure (255)
    fg_threshold: float | None = None  # confident fg of the affinity labels (IRN conf_fg_thres 0.30); null = chosen on val (see sweep_*)
    bg_threshold: float | None = None  # confident bg (IRN conf_bg_thres 0.05); null = chosen on val
    sweep_fg: list[float] = field(default_factory=lambda: [0.3, 0.4, 0.5, 0.6, 0.7, 0.8])  # grid searched on val
    sweep_bg: list[float] = field(default_factory=lambda: [0.05, 0.1, 0.2])
    sweep_split: str = "val"  # the best pair on this split (by `criterion`) is used
    criterion: str = "pair_f1"  # pair_f1 (mean F1 of positive / negative pairs vs the true pairs) | label_miou
    radius: int = 10  # pair radius for training (IRN path_index radius 10)
    backbone: str | None = None  # null = model.backbone (IRN: ImageNet ResNet-50, not the CAM network)
    pretrained: str | None = None  # null = model.pretrained
    epochs: int = 3  # IRN irn_num_epoches
    batch_size: int | None = None  # null = data.batch_size (IRN: 32)
    lr: float = 0.1  # IRN irn_learning_rate (head)
    momentum: float = 1.0e-4  # IRN PolyOptimizer passes weight_decay as SGD's momentum (the SGD quirk)
    weight_decay: float = 1.0e-4  # IRN irn_weight_decay
    poly_power: float = 0.9


@dataclass
class RandomWalkConfig:
    """Random walk over the boundary network's affinities (IRN make_sem_seg_labels.py)."""

    radius: int = 5  # IRN: 5 for the walk
    beta: float = 10.0  # IRN beta
    steps: int = 256  # IRN exp_times 8 -> 2^8 transitions
    threshold: float = 0.25  # IRN sem_seg_bg_thres; used when threshold_from is null
    threshold_from: str | None = "val"  # background threshold swept on this split, applied unchanged
    sweep: list[float] = field(default_factory=lambda: [0.0, 0.95, 0.01])  # start, stop (inclusive), step
    splits: list[str] = field(default_factory=lambda: ["train", "val"])
    # dense CRF on the walk's masks: null = none (IRN make_sem_seg_labels.py); a CRFParams mapping writes
    # pseudo_rw_crf/ from the walk's scores at the chosen threshold (P-NOC runners/3-rw.sh: {iterations: 1, gt_prob: 0.9});
    # run by the rw_crf stage (its own fingerprint: changing it re-runs the CRF, not the walk)
    crf: dict | None = None


@dataclass
class ReportConfig:
    num_samples: int = 8


@dataclass
class Config:
    """A whole run. ``method`` is free-form: ``name`` plus the method's own hyperparameters,
    validated by the method itself; ``trainer`` is passed to ``lightning.Trainer``.

    ``requires`` maps a dependency name to the config path of a run this recipe needs
    (e.g. ``{"oc": "configs/msrc/cam.yaml"}``, resolved as described in the module docstring);
    ``overwrite`` lets stages recompute outputs whose run fingerprint changed instead of
    stopping (CLI ``--overwrite``). ``source`` (the top YAML file) and ``overrides`` (the dotted
    command-line overrides applied, ``{"data.limit": 24, ...}``) are set by :func:`load_config`;
    ``overrides`` is not a YAML key and is left out of :meth:`to_dict`.
    """

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
    affinity: AffinityConfig = field(default_factory=AffinityConfig)
    random_walk: RandomWalkConfig = field(default_factory=RandomWalkConfig)
    segmentation: dict = field(default_factory=dict)  # wsss.segmentation.SegParams (validated by the segment stage)
    output_dir: str = "runs/default"
    seed: int = 0
    requires: dict = field(default_factory=dict)  # dependency name -> config path (see module docstring)
    overwrite: bool = False  # recompute outputs whose fingerprint changed instead of stopping
    source: str | None = None  # path of the YAML file this came from (set by load_config; ignored in a file)
    overrides: dict = field(default_factory=dict)  # dotted command-line overrides applied (set by load_config)

    def to_dict(self) -> dict:
        """Plain nested dict of every YAML key plus ``source`` (for saving next to a run, for
        ``protocol`` blocks and fingerprints); ``overrides`` is left out."""
        d = dataclasses.asdict(self)
        d.pop("overrides", None)
        return d

    @property
    def method_name(self) -> str:
        return str(self.method.get("name", "cam"))


#: top-level keys a YAML file may not set (``base`` is consumed by the loader)
_NOT_YAML = ("overrides",)


# ----------------------------------------------------------------------------- merging


def _merge(base: dict, update: dict) -> dict:
    """Deep merge: mappings merge key by key, every other value (lists too) is replaced."""
    out = copy.deepcopy(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _paths(d: dict, label: str, prefix: str = "") -> dict[str, str]:
    """``{dotted key: label}`` for every key (inner and leaf) of a nested dict."""
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out[key] = label
        if isinstance(v, dict):
            out.update(_paths(v, label, key + "."))
    return out


def _origin(prov: dict[str, str], key: str, default: str) -> str:
    """The file (or ``command line``) that last set ``key`` or its closest parent."""
    parts = key.split(".")
    for n in range(len(parts), 0, -1):
        hit = prov.get(".".join(parts[:n]))
        if hit is not None:
            return hit
    return default


def _display(path: Path) -> str:
    return os.path.normpath(str(path))


def _store_path(path: Path) -> str:
    """``path`` relative to the working directory when below it, else absolute."""
    path = path.resolve()
    try:
        return str(path.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _resolve_requires(value: Any, declared_in: Path | None, where: str) -> dict[str, str | None]:
    """Validate a ``requires`` mapping and resolve its paths (absolute strings; None kept)."""
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: requires must be a mapping name -> config path, got {value!r}")
    out: dict[str, str | None] = {}
    base_dir = declared_in.parent if declared_in is not None else Path.cwd()
    for name, p in value.items():
        if p is None:
            out[str(name)] = None
            continue
        if not isinstance(p, str) or not p:
            raise ConfigError(f"{where}: requires.{name} must be a config path (string), got {p!r}")
        full = Path(p) if Path(p).is_absolute() else base_dir / p
        if not full.is_file():
            raise ConfigError(f"{where}: requires.{name}: config {p!r} not found ({_display(full)})")
        out[str(name)] = str(full.resolve())
    return out


def _read_yaml(path: Path, shown: str) -> dict:
    if not path.is_file():
        raise ConfigError(f"{shown}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{shown}: invalid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{shown}: top level must be a mapping")
    return raw


def _load_layers(path: Path, shown: str, stack: tuple[tuple[str, str], ...]) -> tuple[dict, dict[str, str]]:
    """Read ``path`` and its bases, merged; returns (raw dict, provenance of every key)."""
    real = str(path.resolve())
    seen = [r for r, _ in stack]
    if real in seen:
        chain = " -> ".join([s for _, s in stack[seen.index(real):]] + [shown])
        raise ConfigError(f"{shown}: base cycle: {chain}")
    raw = _read_yaml(path, shown)
    for k in _NOT_YAML:
        if k in raw:
            raise ConfigError(f"{shown}: '{k}' is not a config key (it is set by load_config)")
    bases = raw.pop("base", None)
    if bases is None:
        bases = []
    elif isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) and b for b in bases):
        raise ConfigError(f"{shown}: base must be a config path or a list of config paths, got {bases!r}")
    merged: dict = {}
    prov: dict[str, str] = {}
    for b in bases:
        bp = Path(b) if Path(b).is_absolute() else path.parent / b
        b_shown = _display(bp)
        if not bp.is_file():
            raise ConfigError(f"{shown}: base {b!r} not found ({b_shown})")
        m, p = _load_layers(bp, b_shown, (*stack, (real, shown)))
        merged = _merge(merged, m)
        prov.update(p)
    if "requires" in raw and raw["requires"] is not None:
        raw["requires"] = _resolve_requires(raw["requires"], path, shown)
    merged = _merge(merged, raw)
    prov.update(_paths(raw, shown))
    return merged, prov


# ----------------------------------------------------------------------------- type checking

_NONE = type(None)


def _type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        names = [_type_name(a) for a in args if a is not _NONE]
        return " or ".join(names) + (" or null" if _NONE in args else "")
    if origin is list:
        inner = {int: "ints", float: "numbers", str: "strings", bool: "bools"}.get(args[0], _type_name(args[0])) if args else "values"
        return f"a list of {inner}"
    return {int: "an int", float: "a number", str: "a string", bool: "a bool (true/false)", dict: "a mapping",
            list: "a list"}.get(tp, getattr(tp, "__name__", str(tp)))


class _Mismatch(Exception):
    pass


def _coerce(value: Any, tp: Any) -> Any:
    """``value`` checked against annotation ``tp`` (ints become floats for float fields).

    Raises:
        _Mismatch: wrong type.
    """
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and _NONE in args:
            return None
        for a in args:
            if a is _NONE:
                continue
            try:
                return _coerce(value, a)
            except _Mismatch:
                pass
        raise _Mismatch
    if origin is list:
        if not isinstance(value, list):
            raise _Mismatch
        return [_coerce(v, args[0]) for v in value] if args else list(value)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise _Mismatch
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise _Mismatch
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Mismatch
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _Mismatch
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise _Mismatch
        return value
    if isinstance(tp, type):
        if not isinstance(value, tp):
            raise _Mismatch
        return value
    return value


def _checked(value: Any, tp: Any, key: str, where: str) -> Any:
    try:
        return _coerce(value, tp)
    except _Mismatch:
        raise ConfigError(f"{where}: {key} must be {_type_name(tp)}, got {value!r}") from None


# ----------------------------------------------------------------------------- building


def _build(raw: dict, prov: dict[str, str], top: str) -> Config:
    """Validate ``raw`` (merged file layers + overrides) against the dataclasses and build a Config."""
    allowed = [f.name for f in dataclasses.fields(Config) if f.name not in _NOT_YAML]
    unknown = [k for k in raw if k not in allowed]
    if unknown:
        where = _origin(prov, unknown[0], top)
        raise ConfigError(f"{where}: unknown top-level key(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    hints = typing.get_type_hints(Config)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(Config):
        if f.name in _NOT_YAML:
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default  # type: ignore[misc]
        if f.name not in raw:
            kwargs[f.name] = default
            continue
        value = raw[f.name]
        where = _origin(prov, f.name, top)
        if dataclasses.is_dataclass(default):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: section '{f.name}' must be a mapping, got {value!r}")
            sub_hints = typing.get_type_hints(type(default))
            names = [g.name for g in dataclasses.fields(default)]
            bad = [k for k in value if k not in names]
            if bad:
                where = _origin(prov, f"{f.name}.{bad[0]}", top)
                raise ConfigError(f"{where}: unknown key(s) {sorted(f'{f.name}.{b}' for b in bad)}; allowed: {sorted(names)}")
            sub = {k: _checked(v, sub_hints[k], f"{f.name}.{k}", _origin(prov, f"{f.name}.{k}", top)) for k, v in value.items()}
            kwargs[f.name] = type(default)(**sub)
        elif f.name in ("method", "trainer"):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: section '{f.name}' must be a mapping, got {value!r}")
            merged = _merge(default, value)
            if f.name == "method" and not isinstance(merged.get("name", "cam"), str):
                raise ConfigError(f"{_origin(prov, 'method.name', top)}: method.name must be a string, got {merged.get('name')!r}")
            kwargs[f.name] = merged
        elif f.name == "requires":
            if value is None:
                value = {}
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: requires must be a mapping name -> config path, got {value!r}")
            kwargs[f.name] = {str(k): _store_path(Path(v)) for k, v in value.items() if v is not None}
        else:
            kwargs[f.name] = _checked(value, hints[f.name], f.name, where)
    cfg = Config(**kwargs)
    if cfg.data.limit is not None and cfg.data.limit < 1:
        raise ConfigError(f"{_origin(prov, 'data.limit', top)}: data.limit must be a positive integer or null, got {cfg.data.limit!r}")
    if cfg.model.output_stride not in (8, 16, 32):
        raise ConfigError(f"{_origin(prov, 'model.output_stride', top)}: model.output_stride must be 8, 16 or 32, got {cfg.model.output_stride}")
    return cfg


def parse_override_args(args: list[str]) -> dict[str, Any]:
    """Turn ``["--data.root", "DIR", "--trainer.max_epochs=1"]`` into ``{"data.root": "DIR", ...}``.

    Values are parsed as YAML (``"24"`` -> 24, ``"[1.0, 0.5]"`` -> list, ``"null"`` -> None);
    text that is not valid YAML stays a string.

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
    """Set dotted keys in a nested dict (creating mappings where a key is absent or null); returns a copy.

    Raises:
        ConfigError: a dotted key goes through a value that is not a mapping.
    """
    out = copy.deepcopy(raw)
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        node = out
        for p in parts[:-1]:
            if node.get(p) is None:  # absent or null (e.g. color_jitter: null): start a mapping
                node[p] = {}
            if not isinstance(node[p], dict):
                raise ConfigError(f"command line: --{dotted}: '{p}' is not a section")
            node = node[p]
        node[parts[-1]] = copy.deepcopy(value)
    return out


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Load a YAML config (or the defaults when ``path`` is None), its bases, and dotted overrides.

    Args:
        path: the YAML file; ``base:`` files are resolved relative to the file naming them.
        overrides: ``{"data.limit": 24, ...}`` (see :func:`parse_override_args`), applied last;
            a copy is kept in ``cfg.overrides``.

    Returns:
        The typed :class:`Config`; ``cfg.source = str(path)`` (the top file, None for defaults),
        ``cfg.requires`` paths relative to the working directory when below it, else absolute.

    Raises:
        ConfigError (a ValueError), one line naming the file (or ``command line``): missing or
        unparsable file, missing base, base cycle, unknown key, wrong value type
        (``<file>: data.batch_size must be an int, got 'eight'``), missing ``requires`` config.
    """
    raw: dict = {}
    prov: dict[str, str] = {}
    top = "defaults"
    if path is not None:
        path = Path(path)
        top = str(path)
        raw, prov = _load_layers(path, top, ())
    if overrides:
        over = dict(overrides)
        for k in list(over):
            if k in _NOT_YAML or k.split(".", 1)[0] in _NOT_YAML or k == "base":
                raise ConfigError(f"command line: --{k} is not a config key")
            if k == "requires":
                over[k] = _resolve_requires(over[k], None, "command line")
            elif k.startswith("requires."):
                over[k] = _resolve_requires({k.split(".", 1)[1]: over[k]}, None, "command line")[k.split(".", 1)[1]]
        raw = apply_overrides(raw, over)
        for k in over:
            prov[k] = "command line"
            prov.update(_paths({k: over[k]}, "command line") if isinstance(over[k], dict) else {})
    cfg = _build(raw, prov, top)
    cfg.source = str(path) if path is not None else None
    cfg.overrides = copy.deepcopy(dict(overrides or {}))
    return cfg


class _Dumper(yaml.SafeDumper):
    """Block-style mappings, flow-style lists of scalars (``scales: [1.0, 0.5]``)."""


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    flat = all(not isinstance(v, (list, dict)) for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flat)


_Dumper.add_representer(list, _represent_list)


def _quote(value: Any) -> str:
    """A value as it would be typed after ``--key`` (YAML flow text, shell-quoted)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    return shlex.quote(text.removesuffix("...").strip())


def dump_config(cfg: Config) -> str:
    """The resolved config as YAML text that :func:`load_config` reads back to the same
    :meth:`Config.to_dict` (``source`` aside): every key, bases merged, overrides applied,
    ``requires`` paths absolute (so the text can be saved anywhere). A leading comment names
    the source file and the command-line overrides."""
    d = cfg.to_dict()
    d.pop("source", None)
    d["requires"] = {k: str(Path(v).resolve()) for k, v in d["requires"].items()}
    head = [f"# resolved by `wsss config` from {cfg.source or 'the defaults'}"]
    if cfg.overrides:
        args = [f"--{k}" if k == "overwrite" and v is True else f"--{k} {_quote(v)}" for k, v in cfg.overrides.items()]
        head.append("# command-line overrides: " + " ".join(args))
    body = yaml.dump(d, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)
    return "\n".join(head) + "\n" + body
