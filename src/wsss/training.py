"""The training stage shared by every method: data, Lightning trainer, checkpoints, resume.

Outputs in the run directory:

- ``checkpoints/last.ckpt``: Lightning checkpoint after every epoch (resume point; loaded
  with ``weights_only=True``);
- ``model.safetensors``: the trained CAM generator's weights (what inference loads);
- ``model.json``: method, backbone, class names, epochs and wall time of the training.

A run whose ``model.json`` records the configured number of epochs (and, when given, the same
stage fingerprint) is not trained again; a run with a ``last.ckpt`` resumes from it. Whether
existing outputs may be reused at all is decided before, by the run fingerprints of
:func:`wsss.stages.stage_train`; :func:`train` itself is the low-level step (recipes and tests
call it directly, e.g. to extend a run by more epochs).

Under Lightning DDP (``trainer.strategy: ddp``, ``trainer.devices: N``) every rank runs
:func:`train`; rank 0 writes the weights and all ranks meet at a barrier before returning.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Mapping

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger
from safetensors.torch import load_file, save

from wsss.config import Config, ConfigError
from wsss.data.datasets import ClassificationDataset, worker_init_fn
from wsss.data.transforms import TrainTransform, normalization_stats
from wsss.data.voc import DatasetError, VOCLayout
from wsss.io import atomic_write_bytes, read_json, write_json
from wsss.methods import get_method

__all__ = ["train", "load_generator", "build_module", "train_loader", "model_paths", "check_extra_inputs", "load_init_weights"]


def model_paths(run_dir: str | Path) -> tuple[Path, Path]:
    """(weights, metadata) paths of the trained CAM generator in ``run_dir``."""
    run_dir = Path(run_dir)
    return run_dir / "model.safetensors", run_dir / "model.json"


def train_layout(cfg: Config) -> VOCLayout:
    """The training split of the configured dataset (validated when ``data.check_files``)."""
    d = cfg.data
    return VOCLayout(d.root, d.train_split, limit=d.limit, mask_dir=d.mask_dir, check_files=d.check_files)


def train_loader(cfg: Config, layout: VOCLayout, shuffle: bool = True, *,
                 extras: Mapping[str, Any] | None = None) -> torch.utils.data.DataLoader:
    """DataLoader of augmented training crops (IRN recipe, see :class:`TrainTransform`).

    Args:
        extras: per-image extra inputs (``name -> wsss.data.extras.ExtraSource``) delivered by the
            dataset through the same augmentation as the image; batches then carry
            ``batch[name]`` int64 (B, S, S).
    """
    d = cfg.data
    mean, std = normalization_stats(cfg.model.normalization)
    transform = TrainTransform(crop_size=d.crop_size, resize_long=tuple(d.resize_long), hflip=d.hflip,
                               color_jitter=d.color_jitter, mean=mean, std=std)
    kw = {"extras": dict(extras)} if extras else {}
    ds = ClassificationDataset(layout, transform, skip_unlabelled=not d.train_unlabelled, **kw)
    drop_last = len(ds) >= 2 * d.batch_size
    return torch.utils.data.DataLoader(
        ds,
        batch_size=d.batch_size,
        shuffle=shuffle,
        num_workers=d.num_workers,
        drop_last=drop_last,
        persistent_workers=d.num_workers > 0,
        worker_init_fn=worker_init_fn,
        generator=torch.Generator().manual_seed(cfg.seed),
    )


def build_module(cfg: Config, num_classes: int) -> L.LightningModule:
    """The configured method's LightningModule."""
    return get_method(cfg.method_name)(cfg, num_classes)


class _StartStep(L.Callback):
    """Remembers the optimisation step a fit started at (> 0 after a resume)."""

    start_step = 0

    def on_train_start(self, trainer, pl_module) -> None:
        self.start_step = int(trainer.global_step)


class ChannelsLast(L.Callback):
    """Train in NHWC memory format (``model.channels_last``): the module is converted at fit start
    and every floating-point 4-D tensor of a dict batch (the images) before each training step.

    The arithmetic is the same up to float rounding (different convolution kernels), so a run
    is not bit-identical to an NCHW run; on 2 CPU cores a training step is 1.3x (CAM network,
    EfficientNet-Lite0 at 320) to 1.6x (DeepLabV3+ at 256) faster. The key is not part of any
    run fingerprint. Batches that are not dicts are left alone.
    """

    def on_fit_start(self, trainer, pl_module) -> None:
        pl_module.to(memory_format=torch.channels_last)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if isinstance(batch, dict):
            for k, v in list(batch.items()):
                if torch.is_tensor(v) and v.dim() == 4 and v.is_floating_point():
                    batch[k] = v.contiguous(memory_format=torch.channels_last)


def make_trainer(cfg: Config, run_dir: Path, **overrides) -> L.Trainer:
    """A Lightning trainer with per-epoch checkpoints and a CSV log in ``run_dir`` (and the
    :class:`ChannelsLast` callback when ``model.channels_last``)."""
    kwargs = dict(cfg.trainer)
    extra = overrides.pop("callbacks_extra", [])
    if getattr(cfg.model, "channels_last", False):
        extra = [*extra, ChannelsLast()]
    kwargs.update(overrides)
    kwargs.setdefault("log_every_n_steps", 5)
    # save_top_k=1 without a monitor keeps the newest epoch; Lightning only writes last.ckpt
    # when a top-k checkpoint was saved in that step, so save_top_k=0 would never resume.
    ckpt = ModelCheckpoint(dirpath=run_dir / "checkpoints", save_last=True, save_top_k=1, every_n_epochs=1, save_on_train_epoch_end=True)
    return L.Trainer(
        default_root_dir=str(run_dir),
        callbacks=[ckpt, TQDMProgressBar(refresh_rate=5), *extra],
        logger=CSVLogger(str(run_dir), name="logs", version=""),
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **kwargs,
    )


def check_extra_inputs(cfg: Config, extras: Mapping[str, Any] | None) -> None:
    """The method's declared extra inputs must all be in ``extras``.

    The names come from the classmethod ``required_extras(cfg)`` when the method defines one (the
    need depends on the config, e.g. CPN's superpixels only for ``method.patches: superpixels``),
    else from the class attribute ``extra_inputs``.

    Raises:
        ConfigError (a ValueError): ``method '<name>' (<Class>) needs extra training input(s) [...] ...``.
    """
    cls = get_method(cfg.method_name)
    hook = getattr(cls, "required_extras", None)
    needed = tuple(hook(cfg)) if callable(hook) else tuple(getattr(cls, "extra_inputs", ()))
    missing = [n for n in needed if n not in (extras or {})]
    if missing:
        raise ConfigError(
            f"method '{cfg.method_name}' ({cls.__name__}) needs extra training input(s) {missing} that were not "
            f"supplied; it is trained by its recipe ('wsss pipeline'), which passes them as train(extras=...)"
        )


def load_init_weights(net: torch.nn.Module, path: str | Path) -> None:
    """Load a ``.safetensors`` state dict into ``net`` (strict).

    Raises:
        FileNotFoundError: ``<path>: initial weights not found``.
        ConfigError (a ValueError): ``<path>: weights do not fit the configured CAM network (...)``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: initial weights not found")
    try:
        net.load_state_dict(load_file(str(path)), strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise ConfigError(f"{path}: weights do not fit the configured CAM network ({first})") from None


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def train(cfg: Config, run_dir: str | Path | None = None, *, extras: Mapping[str, Any] | None = None,
          init_weights: str | Path | None = None, fingerprint: str | None = None) -> Path:
    """Train the configured method on ``data.train_split`` and save its CAM generator.

    Args:
        cfg: the run config.
        run_dir: output folder (default ``cfg.output_dir``).
        extras: ``name -> wsss.data.extras.ExtraSource`` passed to the training dataset (e.g.
            GSLM's ``confidence`` label maps); must cover the method class's ``extra_inputs``.
        init_weights: ``.safetensors`` file loaded (strict) into ``module.cam_generator()``
            before the first step; not applied when resuming from ``last.ckpt`` (the checkpoint
            holds the trained state).
        fingerprint: the train-stage fingerprint hash (:mod:`wsss.fingerprint`), recorded in
            ``model.json``; a finished model is only reused when it records the same one.

    Returns:
        Path of ``model.safetensors``.

    Raises:
        ValueError: missing extra inputs; initial weights that do not fit.
        FileNotFoundError: ``init_weights`` missing.
        RuntimeError: training stopped before ``trainer.max_epochs``.
    """
    check_extra_inputs(cfg, extras)
    run_dir = Path(run_dir or cfg.output_dir)
    weights, meta = model_paths(run_dir)
    epochs = int(cfg.trainer.get("max_epochs", 1))
    if weights.is_file() and meta.is_file():
        info = read_json(meta)
        if (info.get("epochs") == epochs and info.get("method") == cfg.method_name and info.get("limit") == cfg.data.limit
                and (fingerprint is None or info.get("fingerprint") == fingerprint)):
            print(f"[train] {weights} exists ({epochs} epochs of {cfg.method_name}); skipping training")
            return weights
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    layout = train_layout(cfg)
    module = build_module(cfg, layout.num_classes)
    loader = train_loader(cfg, layout, extras=extras)
    start_cb = _StartStep()
    trainer = make_trainer(cfg, run_dir, callbacks_extra=[start_cb])
    last = run_dir / "checkpoints" / "last.ckpt"
    ckpt_path = str(last) if last.is_file() else None
    if ckpt_path:
        print(f"[train] resuming from {last}")
    elif init_weights is not None:
        load_init_weights(module.cam_generator(), init_weights)
        print(f"[train] CAM generator initialised from {init_weights}")
    start = time.time()
    trainer.fit(module, loader, ckpt_path=ckpt_path, weights_only=True)
    seconds = time.time() - start
    if trainer.global_rank == 0:
        if trainer.current_epoch < epochs:
            raise RuntimeError(f"{run_dir}: training stopped at epoch {trainer.current_epoch} of {epochs}")
        buf = save({k: v.detach().cpu().contiguous() for k, v in module.cam_generator().state_dict().items()})
        atomic_write_bytes(weights, buf)
        write_json(
            meta,
            {
                "method": cfg.method_name,
                "backbone": cfg.model.backbone,
                "output_stride": cfg.model.output_stride,
                "class_names": layout.class_names,
                "num_classes": layout.num_classes,
                "epochs": epochs,
                "limit": cfg.data.limit,
                "train_images": len(layout),
                "train_seconds": round(seconds, 1),
                "resumed": ckpt_path is not None,
                "resumed_from_step": start_cb.start_step,
                "init_weights": str(init_weights) if init_weights is not None and ckpt_path is None else None,
                "world_size": int(trainer.world_size),
                "fingerprint": fingerprint,
            },
        )
    _barrier()  # other ranks may load model.safetensors next (inference)
    return weights


def load_generator(cfg: Config, run_dir: str | Path | None = None, num_classes: int | None = None, *,
                   layout: Any = None) -> torch.nn.Module:
    """Rebuild the configured method's CAM generator and load ``model.safetensors`` into it.

    Args:
        cfg: the run config (``model`` section; the backbone is built without pretrained weights).
        run_dir: run folder (default ``cfg.output_dir``).
        num_classes: foreground classes C (default: ``layout.num_classes``, else ``model.json``).
        layout: the dataset split the CAMs are for; its ``class_names`` (background first) must
            equal the ones recorded in ``model.json``.

    Returns:
        the generator in eval mode: ``forward(x (B, 3, H, W)) -> (logits (B, C), cams (B, C, h, w))``.

    Raises:
        FileNotFoundError: the run has no trained model (run ``wsss train`` first).
        DatasetError (a ValueError): ``<run>/model.json: model classes [...] differ from dataset <root>
            classes [...]``.
    """
    run_dir = Path(run_dir or cfg.output_dir)
    weights, meta = model_paths(run_dir)
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: no trained model in this run (run 'wsss train' first)")
    info = read_json(meta) if meta.is_file() else {}
    if layout is not None:
        recorded = info.get("class_names")
        if recorded is not None and list(recorded) != list(layout.class_names):
            raise DatasetError(f"{meta}: model classes {list(recorded)} differ from dataset {layout.root} classes "
                             f"{list(layout.class_names)}")
        if num_classes is None:
            num_classes = int(layout.num_classes)
    if num_classes is None:
        if "num_classes" not in info:
            raise FileNotFoundError(f"{meta}: model metadata not found or without num_classes (run 'wsss train' first)")
        num_classes = int(info["num_classes"])
    cfg_no_weights = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, pretrained="none"))
    module = build_module(cfg_no_weights, num_classes)
    net = module.cam_generator()
    net.load_state_dict(load_file(str(weights)), strict=True)
    return net.eval()
