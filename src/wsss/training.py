"""The training stage shared by every method: data, Lightning trainer, checkpoints, resume.

Outputs in the run directory:

- ``checkpoints/last.ckpt``: Lightning checkpoint after every epoch (resume point; loaded
  with ``weights_only=True``);
- ``model.safetensors``: the trained CAM generator's weights (what inference loads);
- ``model.json``: method, backbone, class names, epochs and wall time of the training.

A run whose ``model.json`` records the configured number of epochs is not trained again;
a run with a ``last.ckpt`` resumes from it.
"""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger
from safetensors.torch import load_file, save

from wsss.config import Config
from wsss.data.datasets import ClassificationDataset, worker_init_fn
from wsss.data.transforms import TrainTransform, normalization_stats
from wsss.data.voc import VOCLayout
from wsss.io import atomic_write_bytes, read_json, write_json
from wsss.methods import get_method

__all__ = ["train", "load_generator", "build_module", "train_loader", "model_paths"]


def model_paths(run_dir: str | Path) -> tuple[Path, Path]:
    """(weights, metadata) paths of the trained CAM generator in ``run_dir``."""
    run_dir = Path(run_dir)
    return run_dir / "model.safetensors", run_dir / "model.json"


def train_layout(cfg: Config) -> VOCLayout:
    """The training split of the configured dataset (validated when ``data.check_files``)."""
    d = cfg.data
    return VOCLayout(d.root, d.train_split, limit=d.limit, mask_dir=d.mask_dir, check_files=d.check_files)


def train_loader(cfg: Config, layout: VOCLayout, shuffle: bool = True) -> torch.utils.data.DataLoader:
    """DataLoader of augmented training crops (IRN recipe, see :class:`TrainTransform`)."""
    d = cfg.data
    mean, std = normalization_stats(cfg.model.normalization)
    transform = TrainTransform(crop_size=d.crop_size, resize_long=tuple(d.resize_long), hflip=d.hflip,
                               color_jitter=d.color_jitter, mean=mean, std=std)
    ds = ClassificationDataset(layout, transform, skip_unlabelled=not d.train_unlabelled)
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


def make_trainer(cfg: Config, run_dir: Path, **overrides) -> L.Trainer:
    """A Lightning trainer with per-epoch checkpoints and a CSV log in ``run_dir``."""
    kwargs = dict(cfg.trainer)
    extra = overrides.pop("callbacks_extra", [])
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


def train(cfg: Config, run_dir: str | Path | None = None) -> Path:
    """Train the configured method on ``data.train_split`` and save its CAM generator.

    Returns:
        Path of ``model.safetensors``.
    """
    run_dir = Path(run_dir or cfg.output_dir)
    weights, meta = model_paths(run_dir)
    epochs = int(cfg.trainer.get("max_epochs", 1))
    if weights.is_file() and meta.is_file():
        info = read_json(meta)
        if info.get("epochs") == epochs and info.get("method") == cfg.method_name and info.get("limit") == cfg.data.limit:
            print(f"[train] {weights} exists ({epochs} epochs of {cfg.method_name}); skipping training")
            return weights
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    layout = train_layout(cfg)
    module = build_module(cfg, layout.num_classes)
    loader = train_loader(cfg, layout)
    start_cb = _StartStep()
    trainer = make_trainer(cfg, run_dir, callbacks_extra=[start_cb])
    last = run_dir / "checkpoints" / "last.ckpt"
    ckpt_path = str(last) if last.is_file() else None
    if ckpt_path:
        print(f"[train] resuming from {last}")
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
            },
        )
    return weights


def load_generator(cfg: Config, run_dir: str | Path | None = None, num_classes: int | None = None) -> torch.nn.Module:
    """Rebuild the configured method's CAM generator and load ``model.safetensors`` into it.

    Raises:
        FileNotFoundError: the run has no trained model (run ``wsss train`` first).
    """
    run_dir = Path(run_dir or cfg.output_dir)
    weights, meta = model_paths(run_dir)
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: no trained model in this run (run 'wsss train' first)")
    if num_classes is None:
        num_classes = int(read_json(meta)["num_classes"])
    cfg_no_weights = Config(**{**cfg.__dict__})
    cfg_no_weights.model = type(cfg.model)(**{**cfg.model.__dict__, "pretrained": "none"})
    module = build_module(cfg_no_weights, num_classes)
    net = module.cam_generator()
    net.load_state_dict(load_file(str(weights)), strict=True)
    return net.eval()
