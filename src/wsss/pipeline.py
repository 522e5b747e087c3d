"""Stages of a run and their order.

    train -> infer (cams/<id>.npz) -> evaluate (metrics/seeds.json)
          -> refine (pseudo/<id>.png, confident/<id>.png, metrics/pseudo.json) -> report

Every stage reads and writes files in ``cfg.output_dir`` only, skips work whose output
already exists, and can be re-run alone (``wsss <stage>``). A method may replace the
whole order by defining ``run_pipeline(cfg)`` on its LightningModule class (GSLM does:
several training rounds).
"""

from __future__ import annotations

import platform
import time
from pathlib import Path

import numpy as np
import torch

from wsss.config import Config
from wsss.data.voc import VOCLayout
from wsss.io import read_json, write_json

__all__ = ["is_worker_rank", "stage_train", "stage_infer", "stage_evaluate", "stage_refine", "stage_report", "run_pipeline", "layout_for", "protocol"]


def layout_for(cfg: Config, split: str) -> VOCLayout:
    """A split of the configured dataset, limited by ``data.limit``."""
    d = cfg.data
    return VOCLayout(d.root, split, limit=d.limit, mask_dir=d.mask_dir, check_files=d.check_files)


def _device(cfg: Config) -> torch.device:
    acc = str(cfg.trainer.get("accelerator", "auto"))
    if acc in ("gpu", "cuda") or (acc == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def _timing(cfg: Config, stage: str, seconds: float) -> None:
    path = Path(cfg.output_dir) / "metrics" / "timing.json"
    data = read_json(path) if path.is_file() else {}
    data[stage] = round(seconds, 1)
    write_json(path, data)


def protocol(cfg: Config) -> dict:
    """What a reader needs to compare two runs: backbone, crop, epochs, TTA, CRF, machine."""
    meta_path = Path(cfg.output_dir) / "model.json"
    meta = read_json(meta_path) if meta_path.is_file() else {}
    timing_path = Path(cfg.output_dir) / "metrics" / "timing.json"
    return {
        "method": cfg.method,
        "config": cfg.source,
        "dataset": str(cfg.data.root),
        "train_split": cfg.data.train_split,
        "limit": cfg.data.limit,
        "backbone": cfg.model.backbone,
        "output_stride": cfg.model.output_stride,
        "pretrained": cfg.model.pretrained,
        "crop": cfg.data.crop_size,
        "resize_long": cfg.data.resize_long,
        "batch_size": cfg.data.batch_size,
        "epochs": cfg.trainer.get("max_epochs"),
        "lr": cfg.optim.lr,
        "tta_scales": cfg.inference.scales,
        "tta_flip": cfg.inference.flip,
        "bf16": cfg.inference.bf16,
        "crf": cfg.refine.enabled,
        "threshold_from": cfg.evaluation.threshold_from,
        "seed": cfg.seed,
        "train_seconds": meta.get("train_seconds"),
        "stage_seconds": read_json(timing_path) if timing_path.is_file() else {},
        "machine": f"{platform.machine()} {torch.get_num_threads()} threads, torch {torch.__version__}",
    }


def _sweep(cfg: Config) -> np.ndarray:
    start, stop, step = cfg.evaluation.sweep
    return np.round(np.arange(start, stop + step / 2, step), 4)


def stage_train(cfg: Config) -> Path:
    """Train the configured method (see :func:`wsss.training.train`)."""
    from wsss.training import train

    t = time.time()
    out = train(cfg)
    _timing(cfg, "train", time.time() - t)
    return out


def stage_infer(cfg: Config, splits: list[str] | None = None) -> None:
    """TTA CAMs for ``inference.splits`` (plus the eval split) into ``<run>/cams/``."""
    from wsss.data.transforms import normalization_stats
    from wsss.inference.tta import infer_split
    from wsss.training import load_generator

    t = time.time()
    device = _device(cfg)
    splits = splits or _infer_splits(cfg)
    layouts = [layout_for(cfg, s) for s in splits]
    net = load_generator(cfg, num_classes=layouts[0].num_classes)
    inf = cfg.inference
    mean, std = normalization_stats(cfg.model.normalization)
    for layout in layouts:
        infer_split(net, layout, Path(cfg.output_dir) / "cams", scales=inf.scales, flip=inf.flip, device=device,
                    channels_last=inf.channels_last, bf16=inf.bf16, mean=mean, std=std)
    _timing(cfg, "infer", time.time() - t)


def _infer_splits(cfg: Config) -> list[str]:
    splits = list(dict.fromkeys([cfg.data.eval_split, *cfg.inference.splits]))
    if cfg.evaluation.threshold_from and cfg.evaluation.threshold_from not in splits:
        splits.append(cfg.evaluation.threshold_from)
    return splits


def fixed_threshold(cfg: Config, cam_dir: Path | None = None) -> tuple[float, str]:
    """The fixed background threshold and where it came from.

    With ``evaluation.threshold_from: val`` the threshold is the best of a sweep on the val
    split (written to ``metrics/<split>_seeds.json``), applied unchanged to the eval split;
    otherwise ``evaluation.threshold`` from the config (the paper's value).
    """
    from wsss.evaluation.seeds import best_threshold, evaluate_seeds

    src = cfg.evaluation.threshold_from
    if not src:
        return float(cfg.evaluation.threshold), "config"
    path = Path(cfg.output_dir) / "metrics" / f"{src}_seeds.json"
    if path.is_file():
        res = read_json(path)
    else:
        cam_dir = cam_dir or Path(cfg.output_dir) / "cams"
        res = evaluate_seeds(layout_for(cfg, src), cam_dir, cfg.evaluation.threshold, sweep=_sweep(cfg))
        res["protocol"] = protocol(cfg)
        write_json(path, res)
    return float(best_threshold(res)), f"best of the sweep on {src}"


def stage_evaluate(cfg: Config, cam_dir: Path | None = None, name: str = "seeds") -> dict:
    """Seed mIoU on the eval split at the fixed threshold, plus the sweep; ``metrics/<name>.json``."""
    from wsss.evaluation.seeds import evaluate_seeds

    t = time.time()
    cam_dir = cam_dir or Path(cfg.output_dir) / "cams"
    thr, source = fixed_threshold(cfg, cam_dir)
    res = evaluate_seeds(layout_for(cfg, cfg.data.eval_split), cam_dir, thr, sweep=_sweep(cfg))
    res["threshold_source"] = source
    _timing(cfg, "evaluate", time.time() - t)
    res["protocol"] = protocol(cfg)
    write_json(Path(cfg.output_dir) / "metrics" / f"{name}.json", res)
    _print_summary(name, res)
    return res


def stage_refine(cfg: Config) -> dict | None:
    """Dense-CRF pseudo masks (``pseudo/``) and confident labels (``confident/``), evaluated."""
    from wsss.evaluation.seeds import evaluate_masks
    from wsss.refine.crf import CRFParams
    from wsss.refine.pseudo import make_pseudo_masks

    if not cfg.refine.enabled:
        print("[refine] disabled (refine.enabled: false)")
        return None
    t = time.time()
    run = Path(cfg.output_dir)
    layout = layout_for(cfg, cfg.data.eval_split)
    seeds_path = run / "metrics" / "seeds.json"
    thr = read_json(seeds_path)["threshold"] if seeds_path.is_file() else fixed_threshold(cfg)[0]
    params = CRFParams.from_dict(cfg.refine.crf)
    r = cfg.refine
    make_pseudo_masks(layout, run / "cams", run / "pseudo", kind="dense", threshold=thr, params=params, workers=r.workers)
    results = {}
    res = evaluate_masks(layout, run / "pseudo")
    res.update(stage="pseudo", threshold=thr, threshold_mode="fixed", crf=params.__dict__)
    results["pseudo"] = res
    if r.confident:
        make_pseudo_masks(layout, run / "cams", run / "confident", kind="confident", fg_threshold=r.fg_threshold,
                          bg_threshold=r.bg_threshold, params=params, workers=r.workers)
        conf = evaluate_masks(layout, run / "confident")
        conf.update(stage="confident", fg_threshold=r.fg_threshold, bg_threshold=r.bg_threshold, crf=params.__dict__)
        results["confident"] = conf
    _timing(cfg, "refine", time.time() - t)
    for name, res in results.items():
        res["protocol"] = protocol(cfg)
        write_json(run / "metrics" / f"{name}.json", res)
        _print_summary(name, res)
    return results["pseudo"]


def stage_report(cfg: Config) -> Path:
    """``<run>/report/index.html``: metrics tables, sweep plot, CAM and mask overlays."""
    from wsss.report.html import build_report

    layout = layout_for(cfg, cfg.data.eval_split)
    path = build_report(cfg.output_dir, layout, num_samples=cfg.report.num_samples, title=f"wsss run: {cfg.method_name}")
    print(f"[report] {path}")
    return path


def _print_summary(name: str, res: dict) -> None:
    line = f"[{name}] {res.get('split')} ({res.get('num_images')} images): mIoU {res['miou']:.2f}"
    if res.get("threshold") is not None and res.get("threshold_mode") == "fixed":
        line += f" at fixed background threshold {res['threshold']:.2f}"
        if res.get("threshold_source"):
            line += f" ({res['threshold_source']})"
    if "best" in res:
        line += f"; swept best {res['best']['miou']:.2f} at {res['best']['threshold']:.2f}"
    if res.get("fg_threshold") is not None:
        line += f" (confident labels, fg >= {res['fg_threshold']:.2f}, bg < {res['bg_threshold']:.2f})"
    if "coverage" in res:
        line += f"; coverage {res['coverage']:.1f}%"
    print(line)


def is_worker_rank() -> bool:
    """True in a non-zero DDP rank: Lightning relaunches the whole command once per device, and
    only rank 0 may go on to inference, evaluation and refinement after training."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_rank() != 0


def run_pipeline(cfg: Config) -> dict:
    """All stages in order; a method's own ``run_pipeline`` takes over when it has one."""
    from wsss.methods import get_method

    method_cls = get_method(cfg.method_name)
    custom = getattr(method_cls, "run_pipeline", None)
    if custom is not None:
        return custom(cfg)
    Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
    write_json(Path(cfg.output_dir) / "config.json", cfg.to_dict())
    stage_train(cfg)
    if is_worker_rank():
        return {}
    stage_infer(cfg)
    seeds = stage_evaluate(cfg)
    pseudo = stage_refine(cfg)
    stage_report(cfg)
    return {"seeds": seeds, "pseudo": pseudo}
