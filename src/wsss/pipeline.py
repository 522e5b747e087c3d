"""A whole run from its config: dependencies, then the method's recipe over the shared stages.

    requires (other runs, found by fingerprint or run first)
      -> train -> infer (cams/<id>.npz) -> evaluate (metrics/seeds.json)
      -> refine (pseudo/<id>.png, confident/<id>.png, metrics/pseudo.json)
      [-> affinity -> rw (pseudo_rw/) -> rw_crf (pseudo_rw_crf/) -> segment]  (affinity.enabled)
      -> report

The stages live in :mod:`wsss.stages` (re-exported here for compatibility); each records a
fingerprint of the config keys it depends on and reuses, resumes, recomputes (``overwrite``)
or refuses (one line naming the changed key) accordingly. A method whose LightningModule class
sets ``recipe = "rounds"`` is run by ``wsss.recipes.rounds.run_rounds`` instead of the plain
sequence (table :data:`RECIPES`, imported lazily).

**Dependencies.** A config may name other runs it needs: ``requires: {oc: configs/msrc/cam.yaml}``.
Each one is loaded with the parent's command-line overrides (minus ``output_dir``, ``method.*``,
``requires.*`` and the sections of the stages after refine, ``affinity.*``, ``random_walk.*``,
``segmentation.*``, which belong to the parent), written to its own ``output_dir`` - or to
``<parent output_dir>/requires/<name>`` when the parent's ``output_dir`` was given on the command
line - and run (every stage whose fingerprint matches is reused, so a finished dependency costs
nothing). The method class's ``requires_map`` then says which method parameter receives the
dependency's run dir or a file in it; the dependencies' fingerprints enter the parent's train
fingerprint (``requires.<name>``) and protocol (``fingerprints/requires.json``). The single-stage
commands can point at the dependencies without running them: ``resolve_requires(cfg, run=False)``.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from wsss.config import Config, ConfigError
from wsss.io import write_json
from wsss.stages import (
    barrier,
    stage_affinity,
    stage_random_walk,
    stage_rw_crf,
    stage_segment,
    stages_after_refine,
    dist_info,
    fixed_threshold,
    is_worker_rank,
    layout_for,
    protocol,
    run_fingerprint,
    stage_evaluate,
    stage_infer,
    stage_refine,
    stage_report,
    stage_train,
)

__all__ = [
    "RECIPES",
    "run_pipeline",
    "resolve_requires",
    "run_fingerprint",
    "is_worker_rank",
    "stage_train",
    "stage_infer",
    "stage_evaluate",
    "stage_refine",
    "stage_report",
    "stage_affinity",
    "stage_random_walk",
    "stage_rw_crf",
    "stage_segment",
    "layout_for",
    "protocol",
    "fixed_threshold",
    "barrier",
    "dist_info",
]

#: recipe name (a method class's ``recipe``) -> ``"module:function"`` taking the config, returning a dict
RECIPES: dict[str, str] = {"rounds": "wsss.recipes.rounds:run_rounds"}

#: command-line overrides that are the parent's own and never passed to a dependency: besides where
#: and what the parent is, the stages after refine (a parent uses a dependency's weights, CAMs or CRF
#: pseudo masks, never its walk or segmentation network; ``--affinity.enabled true`` on GSLM would
#: otherwise train a boundary network and run the walk on the CAM run it starts from as well)
_PARENT_ONLY = ("output_dir", "method", "requires", "overwrite", "affinity", "random_walk", "segmentation")


def _resolve_config_path(path: str, parent: Config) -> Path:
    """``cfg.requires`` values are already resolved by :func:`wsss.config.load_config` (relative
    to the declaring file, stored relative to the working directory or absolute)."""
    p = Path(path)
    if p.is_file():
        return p.resolve()
    where = parent.source or "config"
    raise ConfigError(f"{where}: requires: config {path!r} not found")


def _dependency_overrides(cfg: Config) -> dict[str, Any]:
    over = dict(getattr(cfg, "overrides", None) or {})
    return {k: v for k, v in over.items() if k.split(".", 1)[0] not in _PARENT_ONLY}


def resolve_requires(cfg: Config, *, run: bool = True, _stack: tuple[str, ...] = ()) -> dict[str, dict]:
    """Run (or reuse) every dependency of ``cfg`` and point the method's parameters at them.

    For each ``name, config_path`` in ``cfg.requires``: load it with the parent's command-line
    overrides (see the module docstring), choose its output dir, run :func:`run_pipeline` on it
    (finished stages are reused by fingerprint; ``run=False``: do not run it, only point at it,
    for the single-stage commands), then set ``cfg.method[param] = str(run_dir / file)`` from
    the method class's ``requires_map[name] = (param, file)``. Mutates ``cfg.method``. The
    dependency's fingerprint enters the parent's train fingerprint as ``requires.<name>`` (see
    :func:`wsss.stages.stage_train`).

    Returns:
        ``{name: {"config", "run_dir", "fingerprint", "param"}}`` (also written, on rank 0, to
        ``<run>/fingerprints/requires.json``); ``{}`` without dependencies.

    Raises:
        ConfigError: dependency config not found; a dependency cycle; a dependency the method
            does not take (not in its ``requires_map``).
    """
    from wsss.config import load_config
    from wsss.methods import get_method

    requires = dict(getattr(cfg, "requires", None) or {})
    if not requires:
        return {}
    method_cls = get_method(cfg.method_name)
    rmap = dict(getattr(method_cls, "requires_map", {}) or {})
    where = cfg.source or "config"
    unknown = sorted(set(requires) - set(rmap))
    if unknown:
        raise ConfigError(f"{where}: requires {unknown} not used by method '{cfg.method_name}' "
                          f"(it takes: {sorted(rmap) or 'none'})")
    over = _dependency_overrides(cfg)
    parent_out_overridden = "output_dir" in (getattr(cfg, "overrides", None) or {})
    me = str(Path(cfg.source).resolve()) if cfg.source else "<config>"
    stack = (*_stack, me)
    records: dict[str, dict] = {}
    for name, path in sorted(requires.items()):
        dep_path = _resolve_config_path(str(path), cfg)
        if str(dep_path) in stack:
            chain = " -> ".join([*stack[stack.index(str(dep_path)):], str(dep_path)])
            raise ConfigError(f"{where}: dependency cycle: {chain}")
        dep = load_config(dep_path, over)
        dep.overrides = dict(over)
        if parent_out_overridden:  # and its own dependencies nest below it in turn
            dep.output_dir = str(Path(cfg.output_dir) / "requires" / name)
            dep.overrides["output_dir"] = dep.output_dir
        if getattr(cfg, "overwrite", False):
            dep.overwrite = True
        print(f"[requires] {name}: {dep_path} -> {dep.output_dir}")
        if run:
            run_pipeline(dep, _stack=stack)
        else:  # still walk its own dependencies for cycles
            resolve_requires(dep, run=False, _stack=stack)
        param, file = rmap[name]
        run_dir = Path(dep.output_dir)
        target = run_dir / file if file else run_dir
        cfg.method = {**cfg.method, param: str(target)}
        records[name] = {"config": str(dep_path), "run_dir": str(run_dir), "param": param,
                         "fingerprint": run_fingerprint(run_dir, file)}
    if not is_worker_rank():
        write_json(Path(cfg.output_dir) / "fingerprints" / "requires.json", records)
    return records


def _load_recipe(name: str):
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; known recipes: {sorted(RECIPES)}")
    mod, fn = RECIPES[name].split(":")
    return getattr(importlib.import_module(mod), fn)


def run_pipeline(cfg: Config, *, _stack: tuple[str, ...] = ()) -> dict:
    """Dependencies first, then all stages in order (or the method's recipe).

    Returns:
        ``{"seeds": <metrics/seeds.json>, "pseudo": <metrics/pseudo.json or None>}`` for the plain
        sequence, the recipe's dict otherwise; ``{}`` on a non-zero DDP rank.

    Raises:
        ValueError / ConfigError / FileNotFoundError: as the stages (one line each).
    """
    from wsss.methods import get_method

    method_cls = get_method(cfg.method_name)
    resolve_requires(cfg, _stack=_stack)
    recipe = getattr(method_cls, "recipe", "single")
    if recipe != "single":
        return _load_recipe(recipe)(cfg)
    run = Path(cfg.output_dir)
    if not is_worker_rank():
        run.mkdir(parents=True, exist_ok=True)
        write_json(run / "config.json", cfg.to_dict())
    stage_train(cfg)
    if is_worker_rank() and dist_info()[1] == 1:
        return {}  # a worker rank without a process group after training cannot share inference
    stage_infer(cfg)
    if is_worker_rank():
        return {}
    seeds = stage_evaluate(cfg)
    pseudo = stage_refine(cfg)
    after = stages_after_refine(cfg)
    stage_report(cfg)
    return {"seeds": seeds, "pseudo": pseudo, "pseudo_rw": after["pseudo_rw"], "segmentation": after["segmentation"]}
