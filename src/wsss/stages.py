"""The shared stages of a run, each with its own files in ``cfg.output_dir``.

    train -> model.safetensors, model.json, checkpoints/       (fingerprints/train.json)
    infer -> cams/<id>.npz                                        (fingerprints/infer.json)
    evaluate -> metrics/seeds.json, metrics/<split>_seeds.json    (fingerprints/evaluate.json)
    refine -> pseudo/, confident/, metrics/pseudo.json, ...        (fingerprints/refine.json)
    [affinity -> affinity/ (boundary network, labels)              (fingerprints/affinity.json)
     rw -> rw/<id>.npz, pseudo_rw/, metrics/pseudo_rw.json         (fingerprints/rw.json)
     rw_crf -> pseudo_rw_crf/, metrics/pseudo_rw_crf.json          (fingerprints/rw_crf.json)
     segment -> segmentation/, metrics/segmentation.json]          (fingerprints/segment.json)
    report -> report/index.html                                   (fingerprints/report.json)

**Fingerprints** (see :mod:`wsss.fingerprint`). Before working, a stage writes
``fingerprints/<stage>.started.json``; when done, ``fingerprints/<stage>.json``. On a re-run:

- recorded final fingerprint equal to the config's (and the stage's main files present):
  the outputs are reused, nothing is computed;
- only a ``started`` fingerprint, equal: the stage was interrupted (e.g. training killed) and
  resumes (training from ``checkpoints/last.ckpt``, inference from the CAMs already written);
- a different fingerprint, or outputs without any fingerprint (older runs): with
  ``cfg.overwrite`` the outputs of this stage and of every later stage are deleted and
  recomputed; without it the stage stops with one line, e.g. ``ValueError("<run>: outputs of
  stage 'train' were made with optim.lr=0.1, the config says 0.01; re-run with --overwrite or
  choose another --output_dir")`` (a :class:`~wsss.config.ConfigError`, so the CLI prints it as
  one ``wsss: error:`` line). A fingerprint that differs while the stage has no output
  on disk is simply recomputed (nothing can be lost).

A stage also checks the recorded final fingerprints of the stages before it against the
config (so ``wsss evaluate`` after changing ``optim.lr`` stops instead of evaluating the old
CAMs under the new name).

**Distributed runs** (Lightning DDP, e.g. ``--trainer.devices 2 --trainer.strategy ddp``:
Lightning re-launches the whole command once per extra device). Fingerprint decisions and
deletions are made by rank 0 and broadcast; training runs on every rank; inference splits the
ids of each split across ranks (rank r writes ``ids[r::world]``), then a barrier; evaluation,
refinement and reports run on rank 0 only (they return ``None``/``{}`` on other ranks).
"""

from __future__ import annotations

import functools
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

import wsss
from wsss.config import Config, ConfigError
from wsss.data.voc import VOCLayout
from wsss.fingerprint import (
    STAGES,
    Fingerprint,
    changed_keys,
    matches,
    describe_change,
    file_digest,
    key_family,
    read_fingerprint,
    remove_fingerprint,
    stage_fingerprint,
    stage_keys,
    write_fingerprint,
)
from wsss.io import read_json, write_json

__all__ = [
    "layout_for",
    "protocol",
    "fixed_threshold",
    "stage_train",
    "stage_infer",
    "stage_evaluate",
    "stage_refine",
    "stage_report",
    "stage_affinity",
    "stage_random_walk",
    "stage_rw_crf",
    "stages_after_refine",
    "crf_masks",
    "stage_segment",
    "affinity_thresholds",
    "load_boundary_net",
    "stage_outputs",
    "run_fingerprint",
    "requires_inputs",
    "is_worker_rank",
    "dist_info",
    "barrier",
]


# ---------------------------------------------------------------------------------------
# distributed helpers
# ---------------------------------------------------------------------------------------


def dist_info() -> tuple[int, int]:
    """``(rank, world_size)`` of the initialised ``torch.distributed`` process group, else ``(0, 1)``."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _env_worker() -> bool:
    """True when the launcher's environment says this process is not rank 0 (Lightning's
    subprocess launcher sets ``LOCAL_RANK``/``NODE_RANK`` for the processes it starts,
    torchrun sets ``RANK``), whether or not a process group exists yet."""
    for var in ("RANK", "LOCAL_RANK", "NODE_RANK"):
        try:
            if int(os.environ.get(var, "0") or 0) != 0:
                return True
        except ValueError:
            continue
    return False


def is_worker_rank() -> bool:
    """True in a non-zero DDP rank (process group initialised and rank != 0, or, before / without
    a process group, a launcher environment naming a non-zero rank). Such ranks train and infer
    their share; only rank 0 evaluates, refines and reports."""
    rank, world = dist_info()
    if world > 1:
        return rank != 0
    return _env_worker()


def barrier() -> None:
    """``torch.distributed.barrier()`` when a process group with more than one rank exists."""
    import torch.distributed as dist

    if dist_info()[1] > 1:
        dist.barrier()


def _rank0(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on rank 0 and give every rank its result (or raise its error on every rank).
    Without a process group: run ``fn`` here."""
    import torch.distributed as dist

    rank, world = dist_info()
    if world == 1:
        return fn()
    box: list[Any] = [None]
    error: BaseException | None = None
    if rank == 0:
        try:
            box[0] = ("ok", fn())
        except Exception as exc:  # every rank must leave the broadcast, then fail alike
            error = exc
            kind = "ValueError" if isinstance(exc, ValueError) else type(exc).__name__
            box[0] = ("error", kind, str(exc))
    dist.broadcast_object_list(box, src=0)
    if error is not None:
        raise error
    if box[0][0] == "error":
        raise {"FileNotFoundError": FileNotFoundError, "ValueError": ConfigError}.get(box[0][1], RuntimeError)(box[0][2])
    return box[0][1]


# ---------------------------------------------------------------------------------------
# run layout helpers
# ---------------------------------------------------------------------------------------


def layout_for(cfg: Config, split: str) -> VOCLayout:
    """A split of the configured dataset, limited by ``data.limit``.

    Raises:
        DatasetError: missing folder / split file, bad ids (see :class:`VOCLayout`).
    """
    d = cfg.data
    return VOCLayout(d.root, split, limit=d.limit, mask_dir=d.mask_dir, check_files=d.check_files)


def _device(cfg: Config) -> torch.device:
    acc = str(cfg.trainer.get("accelerator", "auto"))
    if acc in ("gpu", "cuda") or (acc == "auto" and torch.cuda.is_available()):
        if dist_info()[1] > 1:
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0") or 0))
        return torch.device("cuda")
    return torch.device("cpu")


def _timing(cfg: Config, stage: str, seconds: float) -> None:
    path = Path(cfg.output_dir) / "metrics" / "timing.json"
    data = read_json(path) if path.is_file() else {}
    data[stage] = round(seconds, 1)
    write_json(path, data)


def _final_fingerprints(run: Path) -> dict[str, str]:
    folder = run / "fingerprints"
    out = {}
    if folder.is_dir():
        for p in sorted(folder.glob("*.json")):
            if p.name.endswith(".started.json") or p.name == "requires.json":
                continue
            try:
                out[p.stem] = read_json(p)["hash"]
            except (OSError, ValueError, KeyError, TypeError):
                continue
    return out


def protocol(cfg: Config) -> dict:
    """What a reader needs to compare two runs: backbone, crop, epochs, TTA, CRF, machine, the
    wsss version, the stages' fingerprints and the dependency runs (``requires``) used."""
    run = Path(cfg.output_dir)
    meta_path = run / "model.json"
    meta = read_json(meta_path) if meta_path.is_file() else {}
    timing_path = run / "metrics" / "timing.json"
    req_path = run / "fingerprints" / "requires.json"
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
        "wsss_version": wsss.__version__,
        "fingerprints": _final_fingerprints(run),
        "requires": read_json(req_path) if req_path.is_file() else {},
    }


def _sweep(cfg: Config) -> np.ndarray:
    start, stop, step = cfg.evaluation.sweep
    return np.round(np.arange(start, stop + step / 2, step), 4)


# ---------------------------------------------------------------------------------------
# fingerprint decisions
# ---------------------------------------------------------------------------------------

#: files/folders (relative to the run dir, glob patterns allowed) each stage owns
_OUTPUTS: dict[str, tuple[str, ...]] = {
    "train": ("model.safetensors", "model.json", "checkpoints", "logs"),
    "infer": ("cams",),
    "evaluate": ("metrics/seeds.json", "metrics/*_seeds.json"),
    "refine": ("pseudo", "confident", "metrics/pseudo.json", "metrics/confident.json"),
    "affinity": ("affinity", "metrics/affinity_labels.json", "metrics/*_affinity_labels.json"),
    "rw": ("rw", "pseudo_rw", "metrics/pseudo_rw.json", "metrics/*_pseudo_rw.json"),
    "rw_crf": ("pseudo_rw_crf", "*_pseudo_rw_crf", "metrics/pseudo_rw_crf.json", "metrics/*_pseudo_rw_crf.json"),
    "segment": ("segmentation", "metrics/segmentation.json", "metrics/*_segmentation.json"),
    "report": ("report",),
}
#: the subset whose presence means "this stage has produced something" (logs alone do not count)
_EVIDENCE: dict[str, tuple[str, ...]] = {
    "train": ("model.safetensors", "model.json", "checkpoints/*.ckpt"),
    "infer": ("cams/*.npz",),
    "evaluate": ("metrics/seeds.json", "metrics/*_seeds.json"),
    "refine": ("pseudo/*.png", "confident/*.png", "metrics/pseudo.json", "metrics/confident.json"),
    "affinity": ("affinity/model.safetensors", "affinity/checkpoints/*.ckpt", "affinity/labels/*.png"),
    "rw": ("rw/*.npz", "pseudo_rw/*.png", "metrics/pseudo_rw.json"),
    "rw_crf": ("pseudo_rw_crf/*.png", "*_pseudo_rw_crf/*.png", "metrics/pseudo_rw_crf.json"),
    "segment": ("segmentation/model.safetensors", "segmentation/checkpoints/*.ckpt", "metrics/segmentation.json"),
    "report": ("report/index.html",),
}


def _kind(name: str) -> str:
    return "evaluate" if name.startswith("evaluate_") else name


def _variant_metric(name: str) -> str:
    return f"metrics/{name[len('evaluate_'):]}.json"


def stage_outputs(run_dir: str | Path, name: str) -> list[Path]:
    """The existing files/folders of stage ``name`` (``train`` .. ``report``, or ``evaluate_<n>``
    for ``stage_evaluate(name=n)``) in ``run_dir``."""
    run = Path(run_dir)
    pats = (_variant_metric(name),) if name.startswith("evaluate_") else _OUTPUTS[name]
    return sorted({p for pat in pats for p in run.glob(pat)})


def _has_outputs(run: Path, name: str) -> bool:
    pats = (_variant_metric(name),) if name.startswith("evaluate_") else _EVIDENCE[name]
    return any(True for pat in pats for _ in run.glob(pat))


def _delete_from(run: Path, name: str) -> list[str]:
    """Delete the outputs + fingerprints of ``name`` and of every later stage; returns what went."""
    kind = _kind(name)
    names = [name] if name.startswith("evaluate_") else list(STAGES[STAGES.index(kind):])
    if not name.startswith("evaluate_") and STAGES.index(kind) <= STAGES.index("evaluate"):
        names += [p.name[: -len(".json")] for p in (run / "fingerprints").glob("evaluate_*.json")
                  if not p.name.endswith(".started.json")]
    gone = []
    for n in dict.fromkeys(names):
        for p in stage_outputs(run, n):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink(missing_ok=True)
            gone.append(str(p.relative_to(run)))
        remove_fingerprint(run, n)
    return gone


def _overwrite(cfg: Config) -> bool:
    return bool(getattr(cfg, "overwrite", False))


def _previous_name(kind: str) -> str | None:
    i = STAGES.index(kind)
    return STAGES[i - 1] if i > 0 else None


def _check_upstream(cfg: Config, run: Path, kind: str) -> None:
    """The recorded final fingerprints of the earlier stages must match the config's keys."""
    for s in STAGES[: STAGES.index(kind)]:
        rec = read_fingerprint(run, s)
        if rec is None:
            continue
        cur = stage_fingerprint(cfg, s)
        if changed_keys(rec, cur, include_inputs=False):
            why = describe_change(rec, cur, include_inputs=False)
            raise ConfigError(f"{run}: outputs of stage '{s}' {why}; re-run the pipeline with --overwrite or choose another --output_dir")


def _decide(cfg: Config, run: Path, fp: Fingerprint, required: list[Path], upstream: bool) -> str:
    """'skip' | 'resume' | 'run' (rank 0 / single process). May delete (overwrite) and writes
    the started fingerprint. Raises ValueError on a mismatch without overwrite."""
    name = fp.name
    if upstream:
        _check_upstream(cfg, run, fp.stage)
    final = read_fingerprint(run, name)
    started = read_fingerprint(run, name, started=True)
    if matches(final, fp):
        missing = [p for p in required if not p.exists()]
        if not missing:
            return "skip"
        print(f"[{name}] fingerprint matches but {missing[0]} is missing; computing the missing outputs")
        write_fingerprint(run, fp, "started")
        return "resume"
    if final is None and matches(started, fp):
        return "resume"
    recorded = final if final is not None else started
    has_out = _has_outputs(run, name)
    if recorded is None and not has_out:
        write_fingerprint(run, fp, "started")
        return "run"
    why = describe_change(recorded, fp) if recorded is not None else (
        "have no fingerprint (made by an older wsss or put there by hand)")
    if has_out and not _overwrite(cfg):
        raise ConfigError(f"{run}: outputs of stage '{name}' {why}; re-run with --overwrite or choose another --output_dir")
    if has_out:
        gone = _delete_from(run, name)
        print(f"[{name}] {run}: outputs {why}; --overwrite: deleted {len(gone)} output(s) of this and later stages")
    else:  # nothing of this stage on disk: recompute; later stages see the new hash as their 'previous'
        remove_fingerprint(run, name)
    write_fingerprint(run, fp, "started")
    return "run"


def _open_stage(cfg: Config, kind: str, *, name: str | None = None, inputs: Mapping[str, Any] | None = None,
                required: list[Path] = (), upstream: bool = True, collective: bool = True) -> tuple[bool, Fingerprint]:
    """Fingerprint of stage ``kind`` for ``cfg`` and whether its outputs can be reused.

    ``collective``: every DDP rank calls this (train, infer): rank 0 decides and broadcasts;
    False for the rank-0-only stages (evaluate, refine, report): decided here, no communication.

    Returns:
        ``(skip, fingerprint)``; ``skip`` True: reuse the outputs, compute nothing.

    Raises:
        ValueError: ``<run>: outputs of stage '<name>' were made with <key>=<old>, the config says
            <new>; re-run with --overwrite or choose another --output_dir`` (or an earlier
            stage's recorded keys differ from the config).
    """
    run = Path(cfg.output_dir)
    name = name or kind
    prev = _previous_name(kind)
    prev_rec = read_fingerprint(run, prev) if prev else None
    fp = stage_fingerprint(cfg, kind, inputs=inputs, previous=prev_rec["hash"] if prev_rec else None, name=name)
    required = list(required)
    if dist_info()[1] == 1 and _env_worker():
        # a re-launched DDP process before the process group exists: never decide or delete
        final = read_fingerprint(run, name)
        return (matches(final, fp) and all(p.exists() for p in required)), fp
    decide = lambda: _decide(cfg, run, fp, required, upstream)  # noqa: E731
    decision = _rank0(decide) if collective else decide()
    if decision == "resume":
        print(f"[{name}] resuming: {run} holds an unfinished '{name}' stage with the same fingerprint")
    return decision == "skip", fp


def _close_stage(cfg: Config, fp: Fingerprint) -> None:
    """Record the final fingerprint (rank 0) once the stage's outputs are complete."""
    if not is_worker_rank():
        write_fingerprint(Path(cfg.output_dir), fp, "done")


def _callable_id(fn: Callable) -> str:
    fid = getattr(fn, "fingerprint", None)
    if callable(fid):
        return str(fid())
    if isinstance(fn, functools.partial):
        args = ", ".join([*(repr(a) for a in fn.args), *(f"{k}={v!r}" for k, v in sorted(fn.keywords.items()))])
        return f"{_callable_id(fn.func)}({args})"
    mod = getattr(fn, "__module__", type(fn).__module__)
    qual = getattr(fn, "__qualname__", type(fn).__qualname__)
    return f"{mod}.{qual}"


# ---------------------------------------------------------------------------------------
# the stages
# ---------------------------------------------------------------------------------------


def run_fingerprint(run_dir: str | Path, file: str = "") -> str | None:
    """The fingerprint hash that identifies a finished run (or the part of it a file comes from).

    ``model.safetensors`` / ``model.json`` -> the ``train`` stage's; anything else (``""`` = the
    whole run) -> the last finished stage's (report, else refine, evaluate, infer, train).

    Returns:
        64 hex characters, or None when the run has no final fingerprint.
    """
    run = Path(run_dir)
    order = ("train",) if file in ("model.safetensors", "model.json") else tuple(reversed(STAGES))
    for stage in order:
        rec = read_fingerprint(run, stage)
        if rec is not None:
            return str(rec["hash"])
    return None


def requires_inputs(cfg: Config) -> dict[str, Any]:
    """``{"requires.<name>": fingerprint of the dependency run}`` for every ``cfg.requires`` entry
    whose method parameter (``requires_map``) has been pointed at the dependency (by
    :func:`wsss.pipeline.resolve_requires`); ``{}`` without dependencies."""
    from wsss.methods import get_method

    requires = dict(getattr(cfg, "requires", None) or {})
    if not requires:
        return {}
    rmap = dict(getattr(get_method(cfg.method_name), "requires_map", {}) or {})
    out: dict[str, Any] = {}
    for name in sorted(requires):
        if name not in rmap or not cfg.method.get(rmap[name][0]):
            continue
        param, file = rmap[name]
        target = Path(str(cfg.method[param]))
        run_dir = target
        if file:  # <run_dir>/<file> -> <run_dir>
            n = len(Path(file).parts)
            run_dir = Path(*target.parts[:-n]) if target.parts[-n:] == Path(file).parts else target.parent
        out[f"requires.{name}"] = run_fingerprint(run_dir, file)
    return out


def _train_inputs(cfg: Config, extras: Mapping[str, Any] | None, init_weights: str | Path | None,
                  inputs: Mapping[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = requires_inputs(cfg)
    for name, src in sorted((extras or {}).items()):
        out[f"extras.{name}"] = str(src.fingerprint())
    if init_weights is not None:
        out["init_weights"] = f"sha256:{file_digest(init_weights)}"
    out.update(inputs or {})
    return out


def method_extras(cfg: Config, extras: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The recipe's ``extras`` plus the extra inputs the method makes for itself from the images.

    A method class may define ``extra_sources(cfg, layout, run_dir) -> {name: ExtraSource}``
    (a classmethod building sources of :mod:`wsss.data`, e.g. CPN's cached SLIC superpixels);
    the frame calls it on rank 0 first (so that a source can prepare a cache once) and then on
    the other ranks. Names the recipe passes win over the method's own. Methods without the hook
    get ``extras`` unchanged.
    """
    from wsss.methods import get_method

    hook = getattr(get_method(cfg.method_name), "extra_sources", None)
    if hook is None:
        return extras
    layout = layout_for(cfg, cfg.data.train_split)
    own: dict[str, Any] = {}
    if not is_worker_rank():
        own = dict(hook(cfg, layout, Path(cfg.output_dir)))
    barrier()
    if is_worker_rank():
        own = dict(hook(cfg, layout, Path(cfg.output_dir)))
    return {**own, **dict(extras or {})}


def stage_train(cfg: Config, *, extras: Mapping[str, Any] | None = None, init_weights: str | Path | None = None,
                inputs: Mapping[str, Any] | None = None) -> Path:
    """Train the configured method into ``cfg.output_dir`` (see :func:`wsss.training.train`),
    unless the recorded ``train`` fingerprint says the existing model was made from this config.

    Args:
        cfg: the run config (``overwrite`` attribute honoured, see the module docstring).
        extras: per-image extra training inputs (``name -> wsss.data.extras.ExtraSource``); their
            ``fingerprint()`` enters the stage fingerprint.
        init_weights: ``.safetensors`` loaded (strict) into the CAM generator before the first
            step; its SHA-256 enters the fingerprint.
        inputs: further ``name -> JSON value`` entries for the fingerprint. The dependency runs'
            fingerprints enter by themselves as ``requires.<name>`` (:func:`requires_inputs`).

    Returns:
        Path of ``model.safetensors``.

    Raises:
        ValueError: fingerprint mismatch without overwrite (one line naming the changed keys);
            a method that needs extra inputs not given; weights that do not fit.
        FileNotFoundError: ``init_weights`` missing.
    """
    from wsss.training import model_paths, train

    run = Path(cfg.output_dir)
    weights, meta = model_paths(run)
    extras = method_extras(cfg, extras)
    skip, fp = _open_stage(cfg, "train", inputs=_train_inputs(cfg, extras, init_weights, inputs), required=[weights, meta])
    if skip:
        print(f"[train] {weights}: the train fingerprint matches the config; skipping training")
        return weights
    t = time.time()
    out = train(cfg, extras=extras, init_weights=init_weights, fingerprint=fp.hash)
    if not is_worker_rank():
        _timing(cfg, "train", time.time() - t)
    _close_stage(cfg, fp)
    barrier()
    return out


def _infer_splits(cfg: Config) -> list[str]:
    splits = list(dict.fromkeys([cfg.data.eval_split, *cfg.inference.splits]))
    if cfg.evaluation.threshold_from and cfg.evaluation.threshold_from not in splits:
        splits.append(cfg.evaluation.threshold_from)
    return splits


def stage_infer(cfg: Config, splits: list[str] | None = None, *,
                net_wrapper: Callable[[torch.nn.Module], torch.nn.Module] | None = None) -> None:
    """TTA CAMs (:func:`wsss.inference.tta.infer_split`) of ``splits`` (default
    ``inference.splits`` + the eval split + ``evaluation.threshold_from``) into ``<run>/cams/``.

    Under DDP, rank r writes the CAMs of ``ids[r::world]`` of every split, then all ranks meet at a
    barrier. Reused when the ``infer`` fingerprint matches and every CAM file exists.

    Args:
        cfg: the run config.
        splits: split names to infer.
        net_wrapper: callable ``nn.Module -> nn.Module`` applied to the loaded CAM generator (e.g.
            GSLM's ReLU-k bound); its identity (``fingerprint()`` if it has one, else its
            qualified name / partial arguments) enters the fingerprint.

    Raises:
        FileNotFoundError: no trained model; ValueError: model classes differ from the dataset's,
            fingerprint mismatch without overwrite.
    """
    from wsss.data.transforms import normalization_stats
    from wsss.inference.store import cam_path
    from wsss.inference.tta import infer_split
    from wsss.training import load_generator

    t = time.time()
    splits = list(splits or _infer_splits(cfg))
    cam_dir = Path(cfg.output_dir) / "cams"
    layouts = [layout_for(cfg, s) for s in splits]
    inputs: dict[str, Any] = {"splits": splits}
    if net_wrapper is not None:
        inputs["net_wrapper"] = _callable_id(net_wrapper)
    required = [cam_path(cam_dir, i) for lay in layouts for i in lay.ids]
    skip, fp = _open_stage(cfg, "infer", inputs=inputs, required=required)
    if skip:
        print(f"[infer] {cam_dir}: the infer fingerprint matches the config; reusing {len(required)} CAM files")
        return
    rank, world = dist_info()
    net = load_generator(cfg, layout=layouts[0])
    if net_wrapper is not None:
        net = net_wrapper(net).eval()
    inf = cfg.inference
    mean, std = normalization_stats(cfg.model.normalization)
    for layout in layouts:
        infer_split(net, layout, cam_dir, scales=inf.scales, flip=inf.flip, device=_device(cfg),
                    channels_last=inf.channels_last, bf16=inf.bf16, mean=mean, std=std, rank=rank, world_size=world)
    barrier()
    if rank == 0:
        _timing(cfg, "infer", time.time() - t)
    _close_stage(cfg, fp)


def fixed_threshold(cfg: Config, cam_dir: Path | None = None) -> tuple[float, str]:
    """The fixed background threshold and where it came from.

    With ``evaluation.threshold_from: val`` the threshold is the best of a sweep on the val
    split (written to ``metrics/<split>_seeds.json``, an output of the evaluate stage), applied
    unchanged to the eval split; otherwise ``evaluation.threshold`` from the config.

    Returns:
        ``(threshold in [0, 1], "config" | "best of the sweep on <split>")``.
    """
    from wsss.evaluation.seeds import best_threshold, evaluate_seeds, sweep_edge_warning

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
        warning = sweep_edge_warning(res, f"the {src} sweep")
        if warning:
            print(f"[evaluate] warning: {warning}")
    return float(best_threshold(res)), f"best of the sweep on {src}"


def stage_evaluate(cfg: Config, cam_dir: Path | None = None, name: str = "seeds") -> dict:
    """Seed mIoU on the eval split at the fixed threshold, plus the sweep; ``metrics/<name>.json``.

    The fingerprint file is ``fingerprints/evaluate.json`` for ``name="seeds"``, else
    ``fingerprints/evaluate_<name>.json``; a ``cam_dir`` other than ``<run>/cams`` enters it (and
    the earlier stages of this run are then not checked).

    Returns:
        the metrics dict (see :func:`wsss.evaluation.seeds.evaluate_seeds`, plus
        ``threshold_source`` and ``protocol``); ``{}`` on a non-zero DDP rank.

    Raises:
        ValueError: fingerprint mismatch without overwrite; FileNotFoundError: missing CAMs.
    """
    from wsss.evaluation.seeds import evaluate_seeds, sweep_edge_warning

    if is_worker_rank():
        return {}
    t = time.time()
    run = Path(cfg.output_dir)
    own = run / "cams"
    cam_dir = Path(cam_dir) if cam_dir is not None else own
    default = cam_dir.resolve() == own.resolve()
    stage_name = "evaluate" if name == "seeds" else f"evaluate_{name}"
    out = run / "metrics" / f"{name}.json"
    skip, fp = _open_stage(cfg, "evaluate", name=stage_name, inputs={} if default else {"cam_dir": str(cam_dir.resolve())},
                           required=[out], upstream=default, collective=False)
    if skip:
        res = read_json(out)
        print(f"[evaluate] {out}: the evaluate fingerprint matches the config; reusing it")
        _print_summary(name, res)
        return res
    thr, source = fixed_threshold(cfg, cam_dir)
    res = evaluate_seeds(layout_for(cfg, cfg.data.eval_split), cam_dir, thr, sweep=_sweep(cfg))
    res["threshold_source"] = source
    warning = sweep_edge_warning(res, f"the {cfg.data.eval_split} sweep (swept column)")
    if warning:
        print(f"[evaluate] warning: {warning}")
    _timing(cfg, "evaluate", time.time() - t)
    res["protocol"] = protocol(cfg)
    write_json(out, res)
    _close_stage(cfg, fp)
    _print_summary(name, res)
    return res


def stage_refine(cfg: Config) -> dict | None:
    """Dense-CRF pseudo masks (``pseudo/``) and confident labels (``confident/``), evaluated into
    ``metrics/pseudo.json`` / ``metrics/confident.json``.

    Returns:
        the pseudo-mask metrics, or None when ``refine.enabled`` is false or on a non-zero rank.

    Raises:
        ValueError: fingerprint mismatch without overwrite.
    """
    from wsss.evaluation.seeds import evaluate_masks
    from wsss.refine.crf import CRFParams
    from wsss.refine.pseudo import make_pseudo_masks

    if is_worker_rank():
        return None
    run = Path(cfg.output_dir)
    r = cfg.refine
    required = [run / "metrics" / "pseudo.json"] if r.enabled else []
    if r.enabled and r.confident:
        required.append(run / "metrics" / "confident.json")
    skip, fp = _open_stage(cfg, "refine", required=required, collective=False)
    if not r.enabled:
        if not skip:
            _close_stage(cfg, fp)
        print("[refine] disabled (refine.enabled: false)")
        return None
    if skip:
        res = read_json(run / "metrics" / "pseudo.json")
        print("[refine] the refine fingerprint matches the config; reusing pseudo/ and metrics/pseudo.json")
        _print_summary("pseudo", res)
        return res
    t = time.time()
    layout = layout_for(cfg, cfg.data.eval_split)
    seeds_path = run / "metrics" / "seeds.json"
    thr = read_json(seeds_path)["threshold"] if seeds_path.is_file() else fixed_threshold(cfg)[0]
    params = CRFParams.from_dict(cfg.refine.crf)
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
    _close_stage(cfg, fp)
    return results["pseudo"]


def stage_report(cfg: Config) -> Path | None:
    """``<run>/report/index.html``: metrics tables, sweep plot, CAM and mask overlays.

    Returns:
        the report path (None on a non-zero DDP rank).

    Raises:
        ValueError: fingerprint mismatch without overwrite.
    """
    from wsss.report.html import build_report

    if is_worker_rank():
        return None
    path = Path(cfg.output_dir) / "report" / "index.html"
    skip, fp = _open_stage(cfg, "report", required=[path], collective=False)
    if skip:
        print(f"[report] {path} (fingerprint matches; reused)")
        return path
    layout = layout_for(cfg, cfg.data.eval_split)
    path = build_report(cfg.output_dir, layout, num_samples=cfg.report.num_samples, title=f"wsss run: {cfg.method_name}")
    _close_stage(cfg, fp)
    print(f"[report] {path}")
    return path


# ---------------------------------------------------------------------------------------
# affinity labels + boundary network, random walk (IRN), segmentation network
# ---------------------------------------------------------------------------------------


def _post_ddp_overrides() -> dict:
    """Trainer overrides for a training that runs after the pipeline's DDP part (rank 0 only):
    one device in this process (``wsss segment`` / ``wsss affinity`` alone can use several)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return {"devices": 1, "strategy": "auto"}
    return {}


def affinity_thresholds(cfg: Config) -> tuple[float, float, str]:
    """(confident fg, confident bg, source) for the affinity labels.

    ``affinity.fg_threshold`` / ``bg_threshold`` when both are set (IRN: 0.30 / 0.05). Otherwise
    the pair of the grid ``affinity.sweep_fg`` x ``sweep_bg`` (bg < fg) that is best on
    ``affinity.sweep_split`` (val) by ``affinity.criterion``:

    - ``label_miou``: mIoU of the confident labels on the pixels they label (ties: coverage).
      It prefers tiny coverage: on MSRC it picked 0.7 / 0.05 (31 % of val's pixels), whose
      labels hold few negative pairs, and the boundary network trained on them was weak.
    - ``pair_f1``: mean F1 of the positive and the negative *pairs* the labels give at the
      training radius on the stride-4 grid, against the true pairs
      (:func:`wsss.affinity.model.pair_counts`): what the boundary network actually learns
      from, so it weighs correctness and coverage of both kinds of pairs.

    Every pair's label mIoU, coverage and pair scores are written to
    ``metrics/<split>_affinity_labels.json`` and reused. IRN's constants suit a CAM whose best
    seed threshold is ~0.15: with one at 0.47 they label 68 % of val's pixels at 48.6 mIoU, while
    0.7 / 0.2 labels 48 % at 75.9 (MSRC, 2026-11-23).

    Raises:
        ConfigError: empty grid or unknown criterion.
    """
    from wsss.affinity.model import pair_counts, pair_f1
    from wsss.evaluation.seeds import evaluate_masks
    from wsss.io import read_index_png
    from wsss.refine.crf import CRFParams
    from wsss.refine.pseudo import make_pseudo_masks

    a = cfg.affinity
    if a.fg_threshold is not None and a.bg_threshold is not None:
        return float(a.fg_threshold), float(a.bg_threshold), "config"
    criteria = ("label_miou", "pair_f1")
    if a.criterion not in criteria:
        raise ConfigError(f"{cfg.source or 'config'}: affinity.criterion must be one of {list(criteria)}, got {a.criterion!r}")
    run = Path(cfg.output_dir)
    path = run / "metrics" / f"{a.sweep_split}_affinity_labels.json"
    grid = [(float(f), float(b)) for f in (a.sweep_fg if a.fg_threshold is None else [a.fg_threshold])
            for b in (a.sweep_bg if a.bg_threshold is None else [a.bg_threshold]) if b < f]
    if not grid:
        raise ConfigError(f"{cfg.source or 'config'}: affinity: no (fg, bg) pair with bg < fg in the sweep grid")
    rec = read_json(path) if path.is_file() else None
    if (rec is None or [tuple(r["pair"]) for r in rec["sweep"]] != grid or rec.get("radius") != a.radius
            or any("pair_f1" not in r for r in rec["sweep"])):
        layout = layout_for(cfg, a.sweep_split)
        params = CRFParams.from_dict(cfg.refine.crf)
        rows = []
        tmp = run / "affinity" / "sweep_tmp"
        gts = {i: torch.from_numpy(layout.mask(i)[::4, ::4].astype(np.int64))[None] for i in layout.ids}
        for fg, bg in grid:
            shutil.rmtree(tmp, ignore_errors=True)
            make_pseudo_masks(layout, run / "cams", tmp, kind="confident", fg_threshold=fg, bg_threshold=bg,
                              params=params, workers=cfg.refine.workers, progress=False)
            r = evaluate_masks(layout, tmp, progress=False)
            counts: dict[str, int] = {}
            for i, gt in gts.items():
                lab = torch.from_numpy(read_index_png(tmp / f"{i}.png")[::4, ::4].astype(np.int64))[None]
                for k, v in pair_counts(lab, gt, a.radius).items():
                    counts[k] = counts.get(k, 0) + v
            pf = pair_f1(counts)
            rows.append({"pair": [fg, bg], "miou": r["miou"], "coverage": r["coverage"], "precision": r["precision"],
                         "recall": r["recall"], "pair_f1": pf["f1"], "pair_scores": pf, "pair_counts": counts})
            print(f"[affinity] {a.sweep_split} confident labels fg >= {fg:.2f}, bg < {bg:.2f}: mIoU {r['miou']:.1f} "
                  f"on {r['coverage']:.1f}% of pixels; pair F1 pos {pf['f1_pos']:.1f} / neg {pf['f1_neg']:.1f}")
        shutil.rmtree(tmp, ignore_errors=True)
        rec = {"split": a.sweep_split, "radius": a.radius,
               "criteria": {"label_miou": "confident-label mIoU on labelled pixels",
                            "pair_f1": "mean F1 of positive and negative pairs vs the true pairs (stride 4, training radius)"},
               "sweep": rows}
        write_json(path, rec)
    if a.criterion == "pair_f1":
        best = max(rec["sweep"], key=lambda r: (r["pair_f1"], r["coverage"]))
        what = f"best pair F1 on {a.sweep_split} ({best['pair_f1']:.1f}; labels {best['miou']:.1f} mIoU on {best['coverage']:.1f}% of pixels)"
    else:
        best = max(rec["sweep"], key=lambda r: (r["miou"], r["coverage"]))
        what = f"best confident-label mIoU on {a.sweep_split} ({best['miou']:.1f} on {best['coverage']:.1f}% of pixels)"
    fg, bg = best["pair"]
    return fg, bg, what


def _band_labels_from_pseudo(pseudo_dir: Path, labels_dir: Path, ids: list[str], band: int) -> None:
    """``affinity.label_source: pseudo``: the affinity labels are the refine stage's CRF pseudo
    masks (``pseudo/<id>.png``) with :func:`wsss.affinity.model.unsure_band` of ``band`` px.

    Raises:
        FileNotFoundError: a pseudo mask is missing (the refine stage has not run).
    """
    from wsss.affinity.model import unsure_band
    from wsss.io import read_index_png, save_palette_png

    missing = [i for i in ids if not (pseudo_dir / f"{i}.png").is_file()]
    if missing:
        raise FileNotFoundError(f"{pseudo_dir}: no CRF pseudo mask for {len(missing)} training images (first: {missing[0]}); "
                                "affinity.label_source pseudo needs the refine stage on the training split")
    labels_dir.mkdir(parents=True, exist_ok=True)
    for i in ids:
        mask = torch.from_numpy(read_index_png(pseudo_dir / f"{i}.png").astype(np.int64))
        save_palette_png(labels_dir / f"{i}.png", unsure_band(mask, band).numpy().astype(np.uint8))


def _train_split_layout(cfg: Config, mask_dir: Path) -> VOCLayout:
    d = cfg.data
    return VOCLayout(d.root, d.train_split, limit=d.limit, mask_dir=str(mask_dir.resolve()), check_files=False)


def stage_affinity(cfg: Config) -> dict | None:
    """Affinity labels of the training split and the boundary network trained on them (IRN).

    Writes ``affinity/labels/<id>.png`` (``affinity.label_source: confident``, IRN
    ``cam_to_ir_label``: two CRF'd argmax passes at the confident fg / bg thresholds of
    :func:`affinity_thresholds`, disagreement 255; ``pseudo``, a wsss option: the refine stage's
    CRF pseudo masks with an unsure band of ``affinity.label_band`` px at their edges), ``metrics/affinity_labels.json`` (their mIoU and coverage when the
    split has masks), and ``affinity/model.safetensors`` + ``affinity/model.json`` (the head of
    :class:`wsss.affinity.model.BoundaryNet`, trained by :class:`wsss.affinity.module.BoundaryModule`
    with the labels delivered through the same joint augmentation as the image).

    Returns:
        ``affinity/model.json`` contents; None when ``affinity.enabled`` is false or on a worker rank
        after training.

    Raises:
        ValueError: fingerprint mismatch without overwrite; FileNotFoundError: no CAMs.
    """
    import lightning as L
    from safetensors.torch import save

    from wsss.affinity.model import LABEL_SOURCES
    from wsss.affinity.module import BoundaryModule
    from wsss.data.datasets import ClassificationDataset, worker_init_fn
    from wsss.data.extras import LabelDirSource
    from wsss.data.transforms import TrainTransform, normalization_stats
    from wsss.evaluation.seeds import evaluate_masks
    from wsss.io import atomic_write_bytes
    from wsss.refine.crf import CRFParams
    from wsss.refine.pseudo import make_pseudo_masks
    from wsss.training import make_trainer

    a = cfg.affinity
    if not a.enabled:
        return None
    run = Path(cfg.output_dir)
    out = run / "affinity"
    meta_path = out / "model.json"
    skip, fp = _open_stage(cfg, "affinity", required=[out / "model.safetensors", meta_path])
    if skip:
        print(f"[affinity] {out}: the affinity fingerprint matches the config; reusing the boundary network")
        return read_json(meta_path)
    t0 = time.time()
    if a.label_source not in LABEL_SOURCES:
        raise ConfigError(f"{cfg.source or 'config'}: affinity.label_source must be one of {list(LABEL_SOURCES)}, got {a.label_source!r}")
    if isinstance(a.label_band, bool) or int(a.label_band) != a.label_band or a.label_band < 0:
        raise ConfigError(f"{cfg.source or 'config'}: affinity.label_band must be an integer >= 0, got {a.label_band!r}")
    if a.label_source == "pseudo":
        fg, bg, source = None, None, f"CRF pseudo masks (pseudo/), unsure band {int(a.label_band)} px"
    else:
        fg, bg, source = affinity_thresholds(cfg) if not is_worker_rank() else (0.0, 0.0, "")
    labels_dir = out / "labels"
    if not is_worker_rank():
        train_layout = layout_for(cfg, cfg.data.train_split)
        if a.label_source == "pseudo":
            _band_labels_from_pseudo(run / "pseudo", labels_dir, train_layout.ids, int(a.label_band))
        else:
            params = CRFParams.from_dict(cfg.refine.crf)
            make_pseudo_masks(train_layout, run / "cams", labels_dir, kind="confident", fg_threshold=fg, bg_threshold=bg,
                              params=params, workers=cfg.refine.workers)
        if train_layout.has_masks:
            res = evaluate_masks(train_layout, labels_dir, stage="affinity_labels")
            res.update(fg_threshold=fg, bg_threshold=bg, threshold_source=source, protocol=protocol(cfg))
            write_json(run / "metrics" / "affinity_labels.json", res)
            _print_summary("affinity_labels", res)
    barrier()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    d = cfg.data
    mean, std = normalization_stats(cfg.model.normalization)
    transform = TrainTransform(crop_size=d.crop_size, resize_long=tuple(d.resize_long), hflip=d.hflip, color_jitter=None,
                               mean=mean, std=std)
    ds = ClassificationDataset(layout_for(cfg, d.train_split), transform,
                               extras={"affinity_label": LabelDirSource(labels_dir)})
    bs = int(a.batch_size or d.batch_size)
    loader = torch.utils.data.DataLoader(ds, batch_size=bs, shuffle=True, num_workers=d.num_workers,
                                         drop_last=len(ds) >= 2 * bs, persistent_workers=d.num_workers > 0,
                                         worker_init_fn=worker_init_fn, generator=torch.Generator().manual_seed(cfg.seed))
    module = BoundaryModule(backbone=a.backbone or cfg.model.backbone, output_stride=cfg.model.output_stride,
                            pretrained=a.pretrained or cfg.model.pretrained, radius=a.radius, lr=a.lr,
                            momentum=a.momentum, weight_decay=a.weight_decay, poly_power=a.poly_power)
    trainer = make_trainer(cfg, out, max_epochs=int(a.epochs), **_post_ddp_overrides())
    last = out / "checkpoints" / "last.ckpt"
    start = time.time()
    trainer.fit(module, loader, ckpt_path=str(last) if last.is_file() else None, weights_only=True)
    seconds = time.time() - start
    if trainer.global_rank != 0:
        return None
    head = {k: v.detach().cpu().contiguous() for k, v in module.net.state_dict().items() if not k.startswith("backbone.")}
    atomic_write_bytes(out / "model.safetensors", save(head))
    meta = {"backbone": module.hparams.backbone, "output_stride": cfg.model.output_stride, "pretrained": module.hparams.pretrained,
            "radius": a.radius, "epochs": int(a.epochs), "fg_threshold": fg, "bg_threshold": bg, "threshold_source": source,
            "train_images": len(ds), "train_seconds": round(seconds, 1), "fingerprint": fp.hash}
    write_json(meta_path, meta)
    _timing(cfg, "affinity", time.time() - t0)
    _close_stage(cfg, fp)
    return meta


def load_boundary_net(cfg: Config):
    """The trained boundary network of a run (backbone weights from ``affinity``/``model``
    ``pretrained``, head from ``affinity/model.safetensors``), in eval mode.

    Raises:
        FileNotFoundError: the run has no trained boundary network.
    """
    from safetensors.torch import load_file

    from wsss.affinity.model import BoundaryNet
    from wsss.backbones import Backbone

    path = Path(cfg.output_dir) / "affinity" / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no trained boundary network (run the affinity stage first)")
    meta = read_json(path.with_name("model.json"))
    net = BoundaryNet(Backbone(meta["backbone"], int(meta["output_stride"]), meta["pretrained"], True, True))
    missing, unexpected = net.load_state_dict(load_file(str(path)), strict=False)
    if unexpected or [k for k in missing if not k.startswith("backbone.")]:
        raise ValueError(f"{path}: weights do not fit the boundary network (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return net.eval()


def stage_random_walk(cfg: Config) -> dict | None:
    """Random-walk pseudo masks (IRN): ``rw/<id>.npz`` scores for ``random_walk.splits``, the
    background threshold swept on ``random_walk.threshold_from`` (``metrics/<split>_pseudo_rw.json``)
    and applied unchanged to the eval split: ``pseudo_rw/<id>.png`` and ``metrics/pseudo_rw.json``
    (same keys as seeds: fixed + swept). Runs when ``affinity.enabled``. The dense CRF after the walk
    (``random_walk.crf``) is the next stage, :func:`stage_rw_crf`.

    Raises:
        ValueError: fingerprint mismatch without overwrite; FileNotFoundError: no boundary network/CAMs.
    """
    from wsss.data.transforms import normalization_stats
    from wsss.evaluation.seeds import best_threshold, cam_to_seed, evaluate_seeds
    from wsss.inference.store import cam_path, load_cam
    from wsss.io import save_palette_png
    from wsss.refine.rw import rw_split

    if not cfg.affinity.enabled:
        return None
    w = cfg.random_walk
    _rw_crf_params(cfg)  # a bad random_walk.crf fails before the walk, not after it
    run = Path(cfg.output_dir)
    out = run / "metrics" / "pseudo_rw.json"
    splits = list(dict.fromkeys([cfg.data.eval_split, *w.splits, *( [w.threshold_from] if w.threshold_from else [])]))
    skip, fp = _open_stage(cfg, "rw", inputs={"splits": splits}, required=[out])
    if skip:
        res = read_json(out)
        print("[random walk] the rw fingerprint matches the config; reusing pseudo_rw/")
        _print_summary("pseudo_rw", res)
        return res
    t0 = time.time()
    rank, world = dist_info()
    net = load_boundary_net(cfg)
    mean, std = normalization_stats(cfg.model.normalization)
    rw_dir = run / "rw"
    for s in splits:
        rw_split(net, layout_for(cfg, s), run / "cams", rw_dir, radius=w.radius, beta=w.beta, steps=w.steps,
                 mean=mean, std=std, device=_device(cfg), rank=rank, world_size=world)
    barrier()
    if is_worker_rank():
        return None
    start, stop, step = w.sweep
    sweep = np.round(np.arange(start, stop + step / 2, step), 4)
    if w.threshold_from:
        vres = evaluate_seeds(layout_for(cfg, w.threshold_from), rw_dir, w.threshold, sweep=sweep)
        vres.update(stage="pseudo_rw", protocol=protocol(cfg))
        write_json(run / "metrics" / f"{w.threshold_from}_pseudo_rw.json", vres)
        thr, source = float(best_threshold(vres)), f"best of the sweep on {w.threshold_from}"
    else:
        thr, source = float(w.threshold), "config"
    layout = layout_for(cfg, cfg.data.eval_split)
    masks = run / "pseudo_rw"
    masks.mkdir(parents=True, exist_ok=True)
    for image_id in layout.ids:
        save_palette_png(masks / f"{image_id}.png", cam_to_seed(load_cam(cam_path(rw_dir, image_id)), thr))
    res = (evaluate_seeds(layout, rw_dir, thr, sweep=sweep) if layout.has_masks
           else {"split": layout.split, "miou": None, "threshold": thr})
    res.update(stage="pseudo_rw", threshold_source=source, radius=w.radius, beta=w.beta, steps=w.steps,
               boundary=read_json(run / "affinity" / "model.json"), protocol=protocol(cfg))
    _timing(cfg, "rw", time.time() - t0)
    write_json(out, res)
    _close_stage(cfg, fp)
    if res.get("miou") is not None:
        _print_summary("pseudo_rw", res)
    return res


def _rw_crf_params(cfg: Config):
    """``random_walk.crf`` as :class:`~wsss.refine.crf.CRFParams` (None when unset).

    Raises:
        ConfigError: not a mapping, an unknown key or an invalid value.
    """
    from wsss.refine.crf import CRFParams

    c = cfg.random_walk.crf
    if c is None:
        return None
    if not isinstance(c, dict):
        raise ConfigError(f"{cfg.source or 'config'}: random_walk.crf must be null or a mapping of CRF parameters, got {c!r}")
    try:
        return CRFParams.from_dict(c)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{cfg.source or 'config'}: random_walk.crf: {exc}") from None


def crf_masks(layout: VOCLayout, score_dir: Path, out_dir: Path, *, threshold: float, params, workers: int = 1,
              stage: str = "pseudo_rw_crf", progress: bool = True) -> dict | None:
    """Dense-CRF masks of one split from stored scores, scored against the ground truth.

    Args:
        layout: the split (its ids; its masks, when it has them, for the score).
        score_dir: ``<id>.npz`` score maps (CAMs or random-walk scores, :mod:`wsss.inference.store`).
        out_dir: where ``<id>.png`` (VOC palette, 0 = background, 255 never) go; created.
        threshold: background threshold in [0, 1] applied to the scores before the CRF.
        params: :class:`~wsss.refine.crf.CRFParams`.
        workers: CRF processes.
        stage: name recorded in the result.

    Returns:
        the :func:`~wsss.evaluation.seeds.evaluate_masks` dict (mIoU in %), or None when the split
        has no masks.

    Raises:
        FileNotFoundError: a score file is missing; ImportError: pydensecrf2 not installed.
    """
    from wsss.evaluation.seeds import evaluate_masks
    from wsss.refine.pseudo import make_pseudo_masks

    make_pseudo_masks(layout, score_dir, out_dir, kind="dense", threshold=threshold, params=params, workers=workers)
    if not layout.has_masks:
        return None
    return evaluate_masks(layout, out_dir, threshold=threshold, stage=stage, progress=progress)


def _adopt_legacy_rw_crf(cfg: Config, run: Path) -> None:
    """Runs made before the rw_crf stage existed keyed ``random_walk.crf`` in ``rw`` and wrote the
    CRF masks there: when those masks exist without an ``rw_crf`` fingerprint and the recorded ``rw``
    fingerprint holds the config's ``random_walk.crf``, record them as this stage's outputs."""
    if read_fingerprint(run, "rw_crf") is not None or read_fingerprint(run, "rw_crf", started=True) is not None:
        return
    rw = read_fingerprint(run, "rw")
    if rw is None or not _has_outputs(run, "rw_crf"):
        return
    old = key_family("random_walk.crf", rw.get("keys") or {})
    cur = key_family("random_walk.crf", stage_keys(cfg, "rw_crf"))
    same = not changed_keys({"keys": old, "wsss_version": wsss.__version__}, Fingerprint(stage="rw_crf", keys=cur),
                            include_inputs=False)
    if not old or not same:
        return
    write_fingerprint(run, stage_fingerprint(cfg, "rw_crf", previous=rw["hash"]), "done")
    print(f"[rw_crf] {run}: CRF masks made by the rw stage of an older wsss with the same random_walk.crf; adopted")


def stage_rw_crf(cfg: Config) -> dict | None:
    """Dense CRF after the random walk (``random_walk.crf``; P-NOC runners/3-rw.sh: the walk's masks
    at its background threshold, then dense CRF with the unary from labels; IRN runs none, the
    default ``null``): ``pseudo_rw_crf/<id>.png`` + ``metrics/pseudo_rw_crf.json`` for the eval split
    and ``<split>_pseudo_rw_crf/`` + ``metrics/<split>_pseudo_rw_crf.json`` for
    ``random_walk.threshold_from``, at the threshold the walk chose (``metrics/pseudo_rw.json``), so
    the choice between the walk's masks and these can be made on val.

    A stage of its own (fingerprint ``rw_crf``: the rw keys + ``random_walk.crf``), so changing the
    CRF re-runs only the CRF. With ``random_walk.crf: null`` it records its fingerprint and writes
    nothing. Runs when ``affinity.enabled``.

    Returns:
        the eval split's metrics dict; ``{}`` without a CRF (or masks); None when affinity is off
        or on a worker rank.

    Raises:
        ConfigError: bad ``random_walk.crf``; ValueError: fingerprint mismatch without overwrite;
        FileNotFoundError: no random-walk scores (run the rw stage first).
    """
    if not cfg.affinity.enabled or is_worker_rank():
        return None
    crf = _rw_crf_params(cfg)  # a bad random_walk.crf fails here, before any output is replaced
    run = Path(cfg.output_dir)
    rw_metrics = run / "metrics" / "pseudo_rw.json"
    if not rw_metrics.is_file():
        raise FileNotFoundError(f"{rw_metrics}: no random-walk results (run the rw stage first)")
    _adopt_legacy_rw_crf(cfg, run)
    out = run / "metrics" / "pseudo_rw_crf.json"
    w = cfg.random_walk
    layouts = {s: layout_for(cfg, s) for s in dict.fromkeys([s for s in (w.threshold_from, cfg.data.eval_split) if s])}
    required = [run / "pseudo_rw_crf"] + ([out] if layouts[cfg.data.eval_split].has_masks else [])
    skip, fp = _open_stage(cfg, "rw_crf", required=required if crf is not None else [], collective=False)
    if skip:
        if crf is None or not out.is_file():
            return {}
        res = read_json(out)
        print("[rw_crf] the rw_crf fingerprint matches the config; reusing pseudo_rw_crf/")
        _print_summary("pseudo_rw_crf", res)
        return res
    if crf is None:
        _close_stage(cfg, fp)
        return {}
    t0 = time.time()
    walk = read_json(rw_metrics)
    thr, source = float(walk["threshold"]), str(walk.get("threshold_source", "config"))
    head: dict = {}
    for split, layout in layouts.items():
        own = split == cfg.data.eval_split
        name = "pseudo_rw_crf" if own else f"{split}_pseudo_rw_crf"
        res = crf_masks(layout, run / "rw", run / name, threshold=thr, params=crf,
                        workers=cfg.refine.workers)
        if res is None:
            continue
        res.update(threshold_source=source, crf=crf.to_dict(), protocol=protocol(cfg))
        write_json(run / "metrics" / f"{name}.json", res)
        _print_summary("pseudo_rw_crf", res)
        if own:
            head = res
    _timing(cfg, "rw_crf", time.time() - t0)
    _close_stage(cfg, fp)
    return head


def stages_after_refine(cfg: Config) -> dict:
    """The stages after refine, each when its config asks: affinity -> rw -> rw_crf
    (``affinity.enabled``), then segment (``segmentation.enabled``). Shared by the plain pipeline
    and the multi-round recipes, so the random walk and the segmentation network run on any
    method's CAMs.

    Returns:
        ``{"pseudo_rw": <metrics/pseudo_rw.json> or None, "pseudo_rw_crf": dict or None,
        "segmentation": <metrics/segmentation.json> or None}``.

    Raises:
        as the stages.
    """
    rw = stage_random_walk(cfg) if stage_affinity(cfg) is not None else None
    rw_crf = stage_rw_crf(cfg) if rw is not None else None
    return {"pseudo_rw": rw, "pseudo_rw_crf": rw_crf, "segmentation": stage_segment(cfg)}


def stage_segment(cfg: Config) -> dict | None:
    """DeepLabV3+ trained on the run's pseudo masks (``segmentation.source``: pseudo | pseudo_rw |
    gt for the fully supervised upper bound), evaluated on ``segmentation.eval_splits``
    (single-scale, multi-scale + flip, + DeepLab CRF): ``segmentation/model.safetensors`` (a
    shippable model for ``wsss predict``), ``metrics/segmentation.json`` (val) and
    ``metrics/<split>_segmentation.json``. Runs when ``segmentation.enabled``.

    Raises:
        ConfigError: bad ``segmentation`` section, pseudo masks of a split other than the eval
            split; ValueError: fingerprint mismatch without overwrite.
    """
    import lightning as L

    from wsss.data.datasets import ClassificationDataset, worker_init_fn
    from wsss.data.transforms import TrainTransform, normalization_stats
    from wsss.segmentation import (
        SegmentationModule,
        SegParams,
        evaluate_segmentation_variants,
        load_segmentation_model,
        save_segmentation_model,
    )
    from wsss.training import make_trainer

    try:
        p = SegParams.from_dict(cfg.segmentation)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{cfg.source or 'config'}: segmentation: {exc}") from None
    if not p.enabled:
        return None
    run = Path(cfg.output_dir)
    out = run / "metrics" / "segmentation.json"
    skip, fp = _open_stage(cfg, "segment", required=[run / "segmentation" / "model.safetensors"])
    if skip:
        print("[segment] the segment fingerprint matches the config; reusing segmentation/")
        return read_json(out) if out.is_file() else {}
    t0 = time.time()
    d = cfg.data
    if p.source != "gt" and d.train_split != d.eval_split:
        raise ConfigError(f"{cfg.source or 'config'}: segmentation.source {p.source!r} needs pseudo masks of the training "
                          f"split, but they are made for data.eval_split {d.eval_split!r}")
    mask_dir = None if p.source == "gt" else run / p.mask_folder
    if mask_dir is not None and not mask_dir.is_dir():
        raise FileNotFoundError(f"{mask_dir}: no pseudo masks (run the refine / random-walk stage first)")
    mean, std = normalization_stats(p.normalization or cfg.model.normalization)
    layout = (VOCLayout(d.root, d.train_split, limit=d.limit, mask_dir=d.mask_dir, check_files=False) if mask_dir is None
              else _train_split_layout(cfg, mask_dir))
    tf = TrainTransform(crop_size=p.crop_size, resize_long=tuple(p.resize_long), hflip=p.hflip, color_jitter=p.color_jitter,
                        mean=mean, std=std)
    ds = ClassificationDataset(layout, tf, with_mask=True)
    if len(ds) < p.batch_size:
        raise ConfigError(f"{cfg.source or 'config'}: segmentation.batch_size {p.batch_size} > {len(ds)} training images")
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    loader = torch.utils.data.DataLoader(ds, batch_size=p.batch_size, shuffle=True, drop_last=True,
                                         num_workers=d.num_workers, persistent_workers=d.num_workers > 0,
                                         worker_init_fn=worker_init_fn, generator=torch.Generator().manual_seed(cfg.seed))
    module = SegmentationModule(layout.num_classes + 1, p, target_key="mask")
    trainer = make_trainer(cfg, run / "segmentation", max_epochs=int(p.epochs), **_post_ddp_overrides())
    last = run / "segmentation" / "checkpoints" / "last.ckpt"
    start = time.time()
    trainer.fit(module, loader, ckpt_path=str(last) if last.is_file() else None, weights_only=True)
    seconds = time.time() - start
    if trainer.global_rank == 0:
        save_segmentation_model(module.net, run, {
            "class_names": list(layout.class_names), "mean": list(mean), "std": list(std), "source": p.source,
            "epochs": int(p.epochs), "params": p.to_dict(), "train_images": len(ds), "train_seconds": round(seconds, 1),
            "fingerprint": fp.hash})
    barrier()
    if is_worker_rank():
        return None
    net, _ = load_segmentation_model(run, _device(cfg))
    head: dict = {}
    ms = {"scales": list(p.eval_scales), "flip": True}
    for split in p.eval_splits:
        lay = layout_for(cfg, split)
        if not lay.has_masks:
            continue
        variants = {"single": {}, "multiscale": dict(ms, save_dir=run / "segmentation" / "pred" / split)}
        if p.crf:
            variants["multiscale_crf"] = dict(ms, crf=True)
        res = evaluate_segmentation_variants(net, lay, variants, mean, std)
        best = res["multiscale_crf" if p.crf else "multiscale"]
        rec = dict(best, stage="segmentation", variants=res, train_seconds=round(seconds, 1), source=p.source, protocol=protocol(cfg))
        write_json(run / "metrics" / ("segmentation.json" if split == "val" else f"{split}_segmentation.json"), rec)
        print(f"[segmentation] {split}: mIoU single-scale {res['single']['miou']:.2f}, multi-scale+flip "
              f"{res['multiscale']['miou']:.2f}" + (f", +CRF {res['multiscale_crf']['miou']:.2f}" if p.crf else ""))
        if split == "val" or not head:
            head = rec
    _timing(cfg, "segment", time.time() - t0)
    _close_stage(cfg, fp)
    return head


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
