"""GSLM's rounds (Mai et al., Sec. 4-5, Fig. 3) composed from the shared stages.

    round 0 (GLM)   seed_source null: train the plain CAM network (method cam) in round_0 ->
                    stage_train, stage_infer, stage_evaluate; else evaluate the seed source's
                    CAMs / masks (GSLM+, Table 4)
    round r = 1..R  Coarse Generation (Eq. 3): confidence CAMs from round r-1 (round 1: the seed
                    source) -> round_r/confidence/<id>.png (wsss.refine.pseudo, CRF or not);
                    SLM training (Eq. 4-6): stage_train(extras={"confidence": LabelDirSource},
                    init_weights=<round r-1's weights>); stage_infer (net_wrapper = ReLU-k bound
                    when relu_k_inference); stage_evaluate
    the run         the last round's cams/ + model.safetensors (hard links), then stage_evaluate,
                    stage_refine, stages_after_refine (affinity, random walk, segmentation when
                    enabled), metrics/rounds.json, figures/rounds.png, stage_report

Run layout (``<out>`` = ``cfg.output_dir``)::

    round_0/                 the GLM (cams/ model.safetensors metrics/seeds.json ...), or only
                             metrics/seeds.json of the seed source (GSLM+)
    round_<r>/  r = 1..R     one SLM round: confidence/<id>.png (+ fingerprints/confidence.json),
                             model.safetensors, cams/, metrics/seeds.json, metrics/confidence.json
    cams/ model.safetensors  the last round's (hard links), so the run looks like any other
    model.json               the last round's metadata + GLM / SLM training seconds
    metrics/seeds.json metrics/pseudo.json   evaluation + CRF pseudo masks of the last round
    metrics/rounds.json      per-round seed mIoU (fixed / swept), m_under, m_over, confidence
    figures/rounds.png       the curves of the paper's Fig. 5 / Fig. 8(c) for this run

**Fingerprints and resume.** Every round directory is an ordinary run directory for the stages:
its train / infer / evaluate outputs are reused, resumed (training from ``last.ckpt``),
recomputed (``--overwrite``) or refused (one line naming the changed key) exactly as for any
run. A round's training fingerprint holds its config (``method.*`` minus ``rounds`` and
``threshold_increment_per_round``, the SLM ``optim`` and ``trainer.max_epochs``), the SHA-256 of
its initial weights and of its confidence maps, so a changed earlier round propagates. The
confidence maps have their own fingerprint (``round_<r>/fingerprints/confidence.json``: the
Coarse Generation keys and the fingerprint of the CAMs they come from). The run's top level
records ``train`` / ``infer`` fingerprints that name the rounds' own, so its evaluation,
pseudo masks and report are redone (``--overwrite``) when the last round changed. Raising
``rounds`` later needs ``--overwrite`` (the fingerprints record ``method.rounds``); finished
rounds are reused.

**Distributed runs.** The stages split training and inference across DDP ranks; everything
the recipe writes itself (confidence maps, links, rounds.json) is done by rank 0, with a
barrier before the next round's training.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wsss.config import Config, ConfigError
from wsss.data.extras import LabelDirSource
from wsss.fingerprint import Fingerprint, describe_change, matches, read_fingerprint, stage_fingerprint, write_fingerprint
from wsss.io import atomic_write_bytes, read_json, write_json
from wsss.methods import get_method
from wsss.methods.gslm.model import BoundedCAMGenerator
from wsss.stages import (
    barrier,
    is_worker_rank,
    layout_for,
    protocol,
    stage_evaluate,
    stage_infer,
    stage_refine,
    stage_report,
    stage_train,
    stages_after_refine,
)

__all__ = [
    "RoundsParams",
    "SEED_KINDS",
    "rounds_params",
    "round_threshold",
    "confidence_cam",
    "build_confidence",
    "run_rounds",
    "rounds_figure",
]

#: What the first confidence CAM is built from when ``seed_source`` names another run.
SEED_KINDS = ("cams", "confident", "pseudo")
#: ``method`` keys of the recipe that do not change what a single round computes (left out of
#: the rounds' configs, hence of their fingerprints)
_RUN_ONLY_KEYS = ("rounds", "threshold_increment_per_round")


def _number(value: Any, key: str, *, integer: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and int(value) != value):
        kind = "an integer" if integer else "a number"
        raise ValueError(f"method.{key} must be {kind}, got {value!r}")
    return value


@dataclass
class RoundsParams:
    """The round procedure's ``method:`` keys (GSLM paper Sec. 4-5; authors' code noted).

    Attributes:
        theta_fg: confident-foreground threshold of Coarse Generation (paper Eq. 3, Sec. 5.1: 0.30).
        theta_bg: confident-background threshold (paper Eq. 3, Sec. 5.1: 0.05).
        rounds: number of SLM rounds (paper Sec. 5.1: 3; Fig. 8(c): stable after 3; GSLM+ uses 1).
        epochs_per_round: SLM epochs per round (paper Sec. 5.1: 5; authors' code: 10).
        slm_lr: backbone learning rate of the SLM rounds; new layers get ``optim.new_lr_mult`` x
            (paper Sec. 5.1: "0.01 for SLM ... decreased by 1/10 at the backbone" -> 0.001 / 0.01;
            authors' code: 1e-3 backbone / 1e-2 classifier, the same).
        slm_weight_decay: SLM weight decay; null = ``optim.weight_decay`` (paper Sec. 5.1: 0.001).
        boundary_constraint: refine the confidence CAM with a dense CRF (paper Eq. 3 R(.), Fig. 5:
            with/without BC); false = plain thresholding.
        crf: CRFParams overrides for the boundary constraint; the GSLM default is IRN's CRF with
            Gaussian compat 10 (reference-notes, authors' code).
        conflict: how pixels labelled a class by the fg pass but background by the bg pass are
            resolved (``wsss.refine.pseudo.CONFLICT_RULES``); "keep_fg" is the IRN / GSLM authors'
            procedure.
        relu_k_inference: bound the raw CAMs by ``k`` at inference of SLM rounds
            (``BoundedCAMGenerator``). Off by default: the paper's SLM wrapper "does not change the
            topology ... but affects gradient propagation" (Sec. 4.1) and the authors infer with
            the usual max normalisation; not allowed with ``loss_form: authors``.
        seed_source: null = train the GLM (a plain CAM network) inside this run (round 0); or
            another run directory whose outputs give the first confidence CAM (GSLM+, paper Sec.
            5.1 and Table 4; set by ``requires: {seed: <config>}``).
        seed_kind: with ``seed_source``: "cams" (Coarse Generation on its ``cams/``), "confident"
            (its ``confident/`` PNGs used as they are) or "pseudo" (its ``pseudo/`` PNGs).
        init_from: weights the first SLM round starts from: null = the GLM (round 0's model,
            or the seed source's ``model.safetensors``); "imagenet" = ``model.pretrained``
            backbone with a new classifier; or a run directory / ``.safetensors`` file.
        threshold_increment_per_round: added to ``evaluation.threshold`` for each SLM round after
            the first: round r is evaluated at ``threshold + increment * (r - 1)`` (authors'
            ``step/train_fuse_cam.py``: ``cam_eval_thres + fuse_cam_eval_thres_inc * it``, it =
            0 for the first SLM round); 0.0 = off (paper). Needs ``evaluation.threshold_from:
            null`` (a threshold chosen on val leaves nothing to increment).
    """

    theta_fg: float = 0.30
    theta_bg: float = 0.05
    rounds: int = 3
    epochs_per_round: int = 5
    slm_lr: float = 0.001
    slm_weight_decay: float | None = None
    boundary_constraint: bool = True
    crf: dict | None = None
    conflict: str = "keep_fg"
    relu_k_inference: bool = False
    seed_source: str | None = None
    seed_kind: str = "cams"
    init_from: str | None = None
    threshold_increment_per_round: float = 0.0

    def __post_init__(self) -> None:
        from wsss.refine.pseudo import CONFLICT_RULES

        for key in ("theta_fg", "theta_bg", "slm_lr", "threshold_increment_per_round"):
            _number(getattr(self, key), key)
        for key in ("rounds", "epochs_per_round"):
            if _number(getattr(self, key), key, integer=True) < 1:
                raise ValueError(f"method.{key} must be a positive integer, got {getattr(self, key)!r}")
            setattr(self, key, int(getattr(self, key)))
        if not 0.0 <= self.theta_bg <= self.theta_fg <= 1.0:
            raise ValueError(f"method: need 0 <= theta_bg <= theta_fg <= 1, got {self.theta_bg}, {self.theta_fg}")
        if not self.slm_lr > 0:
            raise ValueError(f"method.slm_lr must be > 0, got {self.slm_lr}")
        if self.slm_weight_decay is not None and _number(self.slm_weight_decay, "slm_weight_decay") < 0:
            raise ValueError(f"method.slm_weight_decay must be >= 0 or null, got {self.slm_weight_decay}")
        for key in ("boundary_constraint", "relu_k_inference"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f"method.{key} must be true or false, got {getattr(self, key)!r}")
        if self.conflict not in CONFLICT_RULES:
            raise ValueError(f"method.conflict must be one of {CONFLICT_RULES}, got {self.conflict!r}")
        if self.seed_kind not in SEED_KINDS:
            raise ValueError(f"method.seed_kind must be one of {SEED_KINDS}, got {self.seed_kind!r}")
        for key in ("seed_source", "init_from"):
            v = getattr(self, key)
            if v is not None and (not isinstance(v, (str, os.PathLike)) or not str(v)):
                raise ValueError(f"method.{key} must be a path or null, got {v!r}")
        if self.seed_source is None and self.seed_kind != "cams":
            raise ValueError(f"method.seed_kind {self.seed_kind!r} needs method.seed_source (another run's outputs)")
        if self.crf is not None and not isinstance(self.crf, dict):
            raise ValueError(f"method.crf must be a mapping of CRF parameters, got {self.crf!r}")
        self.crf_params()  # unknown / invalid CRF keys

    def crf_params(self):
        """The CRF of the boundary constraint (:class:`wsss.refine.crf.CRFParams`): IRN's with
        Gaussian compat 10 plus ``crf`` overrides; 0 iterations when the constraint is off
        (the CRF then returns its input labels: plain thresholding)."""
        from wsss.refine.crf import CRFParams

        d = {"gaussian_compat": 10.0, **(self.crf or {})}
        if not self.boundary_constraint:
            d["iterations"] = 0
        return CRFParams.from_dict(d)

    def to_dict(self) -> dict:
        return asdict(self)


def rounds_params(cfg: Config) -> tuple[Any, RoundsParams]:
    """Validate the whole ``method`` section of a rounds config.

    The keys are split between the method class's ``params_cls`` (the training step's, e.g.
    :class:`wsss.methods.gslm.model.GSLMParams`: ``k``, ``alpha``, ``loss_form``, ``reduction``)
    and :class:`RoundsParams`. Cross-checks: ``relu_k_inference`` is not allowed with
    ``loss_form: authors`` (the authors infer with plain max normalisation);
    ``threshold_increment_per_round`` needs ``evaluation.threshold_from: null`` and keeps every
    round's threshold in [0, 1].

    Returns:
        ``(module params, RoundsParams)``.

    Raises:
        ConfigError: ``<config file>: method '<name>' has no parameter(s) [...]; known: [...]``, or
            ``<config file>: method.<key> ...`` for an invalid value or combination.
    """
    where = cfg.source or "config"
    method_cls = get_method(cfg.method_name)
    module_cls = getattr(method_cls, "params_cls", None)
    module_keys = {f.name for f in dataclasses.fields(module_cls)} if module_cls is not None else set()
    round_keys = {f.name for f in dataclasses.fields(RoundsParams)}
    raw = {k: v for k, v in cfg.method.items() if k != "name"}
    bad = sorted(set(raw) - module_keys - round_keys)
    if bad:
        raise ConfigError(f"{where}: method '{cfg.method_name}' has no parameter(s) {bad}; "
                          f"known: {sorted(module_keys | round_keys)}")
    try:
        mp = module_cls(**{k: v for k, v in raw.items() if k in module_keys}) if module_cls is not None else None
        rp = RoundsParams(**{k: v for k, v in raw.items() if k in round_keys})
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where}: {str(exc).splitlines()[0]}") from None
    if rp.relu_k_inference and getattr(mp, "loss_form", None) == "authors":
        raise ConfigError(f"{where}: method.relu_k_inference must be false with loss_form 'authors' "
                          "(the authors' code infers with the usual max normalisation)")
    inc = float(rp.threshold_increment_per_round)
    if inc:
        if cfg.evaluation.threshold_from:
            raise ConfigError(f"{where}: method.threshold_increment_per_round needs evaluation.threshold_from: null "
                              f"(the threshold is chosen on {cfg.evaluation.threshold_from!r} otherwise)")
        last = round_threshold(cfg, rp, rp.rounds)
        if not 0.0 <= last <= 1.0 or not 0.0 <= round_threshold(cfg, rp, 1) <= 1.0:
            raise ConfigError(f"{where}: method.threshold_increment_per_round {inc} takes the background threshold "
                              f"of round {rp.rounds} to {last}, outside [0, 1]")
    return mp, rp


def round_threshold(cfg: Config, rp: RoundsParams, r: int) -> float:
    """The fixed background threshold of round ``r`` when it comes from the config:
    ``evaluation.threshold + threshold_increment_per_round * (r - 1)`` for SLM rounds r >= 1
    (authors' iteration ``it = r - 1``), ``evaluation.threshold`` for round 0; rounded to 1e-6."""
    base = float(cfg.evaluation.threshold)
    return round(base + float(rp.threshold_increment_per_round) * max(0, r - 1), 6)


# ---------------------------------------------------------------------------------------
# Coarse Generation (Eq. 3): confidence CAMs
# ---------------------------------------------------------------------------------------


def confidence_cam(image: np.ndarray, record, params: RoundsParams) -> np.ndarray:
    """Confidence CAM of one image (GSLM Eq. 3) as a label map.

    ``>= theta_fg`` -> the class, ``< theta_bg`` -> background, else ignored, computed as in
    the authors' code (IRN ``cam_to_ir_label``): argmax with the background score padded at
    each threshold, each refined by a dense CRF with unary from labels (Gaussian compat 10)
    when ``params.boundary_constraint``; see :func:`wsss.refine.pseudo.confident_labels`. Ties
    at exactly a threshold go to background (measure zero for float CAMs).

    Args:
        image: (H, W, 3) uint8 RGB.
        record: :class:`wsss.inference.store.CamRecord` of the image (values in [0, 1]).
        params: thresholds, CRF and conflict rule.

    Returns:
        (H, W) uint8: 0 background, 1..C class, 255 ignored.

    Raises:
        ValueError: image and CAM sizes differ; ImportError: pydensecrf2 missing with the CRF on.
    """
    from wsss.refine.pseudo import confident_labels

    return confident_labels(image, record, params.theta_fg, params.theta_bg, params.crf_params(),
                            conflict=params.conflict)


def build_confidence(layout, cam_dir: str | os.PathLike, out_dir: str | os.PathLike, params: RoundsParams,
                     workers: int | None = None) -> list[str]:
    """Write ``<out_dir>/<id>.png`` (:func:`confidence_cam`) for every image of ``layout``, in
    parallel and resumably (``make_pseudo_masks(kind="confident")``). Returns the ids written.

    Raises:
        FileNotFoundError: naming the first missing CAM file.
    """
    from wsss.refine.pseudo import make_pseudo_masks

    return make_pseudo_masks(
        layout, cam_dir, out_dir, kind="confident", fg_threshold=params.theta_fg, bg_threshold=params.theta_bg,
        params=params.crf_params(), conflict=params.conflict, workers=workers,
    )


def _confidence_fingerprint(cfg: Config, rp: RoundsParams, source: dict) -> Fingerprint:
    keys = {
        "data.root": str(Path(str(cfg.data.root)).resolve()),
        "data.train_split": cfg.data.train_split,
        "data.limit": cfg.data.limit,
        "method.theta_fg": rp.theta_fg,
        "method.theta_bg": rp.theta_bg,
        "method.boundary_constraint": rp.boundary_constraint,
        "method.crf": rp.crf_params().to_dict(),
        "method.conflict": rp.conflict,
    }
    return Fingerprint(stage="refine", keys=keys, inputs=dict(source), name="confidence",
                       run_dir=os.path.abspath(str(cfg.output_dir)))


def _source_identity(kind: str, folder: Path, fp_hash: str | None) -> dict:
    """What the confidence maps are made from: the source stage's fingerprint hash (robust to a
    moved run directory), or, for a source without fingerprints, its resolved path."""
    if fp_hash:
        return {f"{kind}_fingerprint": fp_hash}
    return {kind: str(folder.resolve())}


def _confidence_stage(cfg: Config, rd: Path, fp: Fingerprint, ids: list[str], make) -> str:
    """Make ``rd/confidence/`` with ``make()`` unless its recorded fingerprint matches.

    Returns "skip" | "resume" | "run". Raises ConfigError when maps made with other settings
    (or without a fingerprint) exist and ``cfg.overwrite`` is off."""
    conf_dir = rd / "confidence"
    final = read_fingerprint(rd, "confidence")
    started = read_fingerprint(rd, "confidence", started=True)
    complete = all((conf_dir / f"{i}.png").is_file() for i in ids)
    if matches(final, fp) and complete:
        return "skip"
    if matches(final, fp) or (final is None and matches(started, fp)):
        decision = "resume"
    else:
        recorded = final if final is not None else started
        has_out = conf_dir.is_dir() and any(conf_dir.glob("*.png"))
        if has_out:
            why = describe_change(recorded, fp) if recorded is not None else "have no fingerprint (made by an older wsss)"
            if not getattr(cfg, "overwrite", False):
                raise ConfigError(f"{conf_dir}: confidence maps {why}; re-run with --overwrite or choose another --output_dir")
            print(f"[rounds] {conf_dir}: confidence maps {why}; --overwrite: recomputing them")
            shutil.rmtree(conf_dir)
            (rd / "metrics" / "confidence.json").unlink(missing_ok=True)
        decision = "run"
    write_fingerprint(rd, fp, "started")
    make()
    write_fingerprint(rd, fp, "done")
    return decision


# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------


def _same_file(a: Path, b: Path) -> bool:
    try:
        if os.path.samefile(a, b):
            return True
        return a.stat().st_size == b.stat().st_size and a.read_bytes() == b.read_bytes()
    except OSError:
        return False


def _link_files(src_dir: Path, dst_dir: Path, names: list[str]) -> None:
    """Hard-link (or copy, atomically) ``src_dir/<name>`` to ``dst_dir/<name>``; an existing
    destination is kept when it is the same file (or has the same bytes), replaced otherwise.

    Raises:
        FileNotFoundError: ``<src>: file not found``.
    """
    dst_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        src, dst = src_dir / name, dst_dir / name
        if not src.is_file():
            raise FileNotFoundError(f"{src}: file not found")
        if dst.exists() and _same_file(src, dst):
            continue
        tmp = dst_dir / f".{name}.link.tmp"
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        try:
            os.link(src, tmp)
            os.replace(tmp, dst)
        except OSError:
            atomic_write_bytes(dst, src.read_bytes())


def _round_dir(out: Path, r: int) -> Path:
    return out / f"round_{r}"


def _splits(cfg: Config, with_train: bool) -> list[str]:
    """Splits a round infers: the train split when a later round needs its confidence CAMs,
    then the eval split, ``inference.splits`` and ``evaluation.threshold_from``."""
    s = [cfg.data.train_split] if with_train else []
    s += [cfg.data.eval_split, *cfg.inference.splits]
    if cfg.evaluation.threshold_from:
        s.append(cfg.evaluation.threshold_from)
    return list(dict.fromkeys(s))


def _resolve_init(rp: RoundsParams, out: Path) -> tuple[Path | None, str]:
    """(weights file the first SLM round starts from, description)."""
    if rp.init_from == "imagenet":
        return None, "imagenet (model.pretrained backbone, new classifier)"
    if rp.init_from:
        path = Path(rp.init_from)
        path = path / "model.safetensors" if path.is_dir() else path
        if not path.is_file():
            raise FileNotFoundError(f"{path}: method.init_from weights not found")
        return path, str(path)
    if rp.seed_source is None:
        return _round_dir(out, 0) / "model.safetensors", "GLM trained in this run (round_0)"
    path = Path(rp.seed_source) / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the seed source has no CAM generator to start from; set method.init_from")
    return path, f"seed source {rp.seed_source}"


def _check_source_model(cfg: Config, src: Path) -> None:
    meta = src.parent / "model.json"
    if not meta.is_file():
        return
    info = read_json(meta)
    for key, want in (("backbone", cfg.model.backbone), ("output_stride", cfg.model.output_stride)):
        if key in info and info[key] != want:
            raise ConfigError(f"{meta}: {key} {info[key]!r} differs from model.{key} {want!r} of the GSLM config")


def _round_scores(res: dict) -> dict:
    best = res.get("best") or {}
    return {
        "miou": res.get("miou"),
        "best_miou": best.get("miou"),
        "threshold": res.get("threshold"),
        "best_threshold": best.get("threshold"),
        "m_under": res.get("m_under"),
        "m_over": res.get("m_over"),
        "best_m_under": best.get("m_under"),
        "best_m_over": best.get("m_over"),
        "precision": res.get("precision"),
        "recall": res.get("recall"),
    }


def _normalised_method(cfg: Config, mp: Any, rp: RoundsParams) -> dict:
    """``cfg.method`` with every default spelled out (so that a key left at its default and the
    same value written in the config give the same fingerprint): the module's parameters (the
    loss reduction resolved), then the recipe's (``crf`` null -> {})."""
    out: dict[str, Any] = {"name": cfg.method_name}
    if hasattr(mp, "to_dict"):
        out.update(mp.to_dict())
    if hasattr(mp, "resolved_reduction"):
        out["reduction"] = mp.resolved_reduction
    out.update(rp.to_dict())
    out["crf"] = dict(rp.crf or {})
    return out


def _fp_hash(run: Path, stage: str) -> str | None:
    rec = read_fingerprint(run, stage)
    return str(rec["hash"]) if rec is not None else None


def _evaluate_source(cfg0: Config, src: Path, seed_kind: str) -> dict:
    """Round-0 scores of another run's seeds (its CAMs, or its PNG masks)."""
    from wsss.evaluation.seeds import evaluate_masks

    if seed_kind == "cams":
        src_cams = src / "cams"
        thr_split = cfg0.evaluation.threshold_from
        if thr_split:
            ids = layout_for(cfg0, thr_split).ids
            if not all((src_cams / f"{i}.npz").is_file() for i in ids):
                print(f"[rounds] {src_cams}: no CAMs of split {thr_split}; round 0 uses evaluation.threshold")
                cfg0 = dataclasses.replace(cfg0, evaluation=dataclasses.replace(cfg0.evaluation, threshold_from=None))
        return stage_evaluate(cfg0, cam_dir=src_cams)
    if is_worker_rank():
        return {}
    folder = src / ("confident" if seed_kind == "confident" else "pseudo")
    res = evaluate_masks(layout_for(cfg0, cfg0.data.eval_split), folder, stage=seed_kind)
    write_json(Path(cfg0.output_dir) / "metrics" / "seeds.json", res)
    return res


def _confidence_scores(layout, conf_dir: Path, r_dir: Path, fp_hash: str) -> dict:
    """mIoU / coverage of the confidence maps against the gt (``metrics/confidence.json``, reused
    while it records the maps' fingerprint ``fp_hash``); {} for a split without masks."""
    from wsss.evaluation.seeds import evaluate_masks

    if not layout.has_masks:
        return {}
    path = r_dir / "metrics" / "confidence.json"
    res = read_json(path) if path.is_file() else None
    if not isinstance(res, dict) or res.get("confidence_fingerprint") != fp_hash:
        res = evaluate_masks(layout, conf_dir, stage="confidence")
        res["confidence_fingerprint"] = fp_hash
        write_json(path, res)
    return {"confidence_miou": res["miou"], "confidence_coverage": res.get("coverage")}


def _top_fingerprints(cfg: Config, out: Path, rp: RoundsParams, last: Path) -> None:
    """Record the run's own train / infer fingerprints from the rounds' (see the module docstring).

    Raises ConfigError when the recorded top-level ones differ, the run's evaluation exists and
    ``overwrite`` is off (before anything at the top level is touched)."""
    rounds_fp = {f"round_{r}": _fp_hash(_round_dir(out, r), "train") for r in range(0, rp.rounds + 1)}
    train = stage_fingerprint(cfg, "train", inputs={"rounds": rounds_fp})
    infer = stage_fingerprint(cfg, "infer", inputs={"last_round_infer": _fp_hash(last, "infer")}, previous=train.hash)
    rec = read_fingerprint(out, "infer")
    if (rec is not None and not matches(rec, infer) and not getattr(cfg, "overwrite", False)
            and (out / "metrics" / "seeds.json").is_file()):
        raise ConfigError(f"{out}: the run's CAMs {describe_change(rec, infer)}; re-run with --overwrite or choose "
                          "another --output_dir")
    write_fingerprint(out, train, "done")
    write_fingerprint(out, infer, "done")


# ---------------------------------------------------------------------------------------
# the recipe
# ---------------------------------------------------------------------------------------


def run_rounds(cfg: Config) -> dict:
    """GSLM / GSLM+ end to end (paper Sec. 4.1, Fig. 3), from the shared stages.

    1. Round 0 (GLM): with ``seed_source: null`` train the plain CAM network (method ``cam``,
       ``optim.*``, ``trainer.max_epochs``) in ``round_0``, infer its CAMs and evaluate them;
       else evaluate the seed source's CAMs / masks (GSLM+, Table 4).
    2. For r = 1..rounds: the confidence CAM of round r-1 (Eq. 3, CRF or not; from the seed
       source for r = 1 when given) -> ``round_r/confidence``; train the SLM (Eq. 4-6) from the
       previous weights (``init_weights``) with the confidence maps as the extra input
       ``confidence`` (``epochs_per_round`` epochs, ``slm_lr``, ``slm_weight_decay``); TTA
       inference; seeds evaluated at the fixed threshold (+ ``threshold_increment_per_round``
       per round) and swept.
    3. The last round's CAMs and weights become the run's ``cams/`` and ``model.safetensors``;
       evaluation, CRF pseudo masks and the report follow; ``metrics/rounds.json`` and
       ``figures/rounds.png`` hold the per-round curves.

    Args:
        cfg: a config whose method class declares ``recipe = "rounds"`` (GSLM); ``method.*``
            validated by :func:`rounds_params`.

    Returns:
        ``{"rounds": [...], "seeds": <final seeds metrics>, "pseudo": <final pseudo metrics>}``
        (``{}`` on a non-zero DDP rank).

    Raises:
        ConfigError / ValueError: bad ``method`` parameters, fingerprint mismatches without
        ``--overwrite`` (one line naming the changed key); FileNotFoundError: a missing seed
        source, CAM or weights file (named in the message).
    """
    mp, rp = rounds_params(cfg)
    main = not is_worker_rank()
    out = Path(cfg.output_dir)
    if main:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "config.json", cfg.to_dict())
    t_start = time.time()
    timing: dict[str, float] = {"glm_train": 0.0, "train": 0.0, "infer": 0.0, "evaluate": 0.0, "confidence": 0.0}
    rounds: list[dict] = []
    train_layout = layout_for(cfg, cfg.data.train_split)
    ids = list(train_layout.ids)

    def timed(key: str, fn, *a, **kw):
        t = time.time()
        res = fn(*a, **kw)
        timing[key] = timing.get(key, 0.0) + time.time() - t
        return res

    # ---- round 0: the GLM --------------------------------------------------------------
    r0 = _round_dir(out, 0)
    src = Path(rp.seed_source) if rp.seed_source else None
    resumed = src is None and ((r0 / "model.json").is_file() or (r0 / "checkpoints" / "last.ckpt").is_file())
    if src is None:
        cfg0 = dataclasses.replace(cfg, output_dir=str(r0), method={"name": "cam"}, requires={})
        print(f"[rounds] round 0: training the GLM (CAM baseline, {cfg.trainer.get('max_epochs')} epochs) in {r0}")
        timed("glm_train", stage_train, cfg0)
        timed("infer", stage_infer, cfg0, _splits(cfg0, with_train=True))
        res0 = timed("evaluate", stage_evaluate, cfg0)
        glm_meta = read_json(r0 / "model.json") if main else {}
        source_desc = "GLM trained in this run"
        source_cams_fp = _fp_hash(r0, "infer")
    else:
        if not src.is_dir():
            raise FileNotFoundError(f"{src}: method.seed_source run directory not found")
        source_stage = "infer" if rp.seed_kind == "cams" else "refine"
        source_cams_fp = _fp_hash(src, source_stage)
        # only what round 0 depends on enters its fingerprint: the source and its outputs' identity
        cfg0 = dataclasses.replace(cfg, output_dir=str(r0), method={
            "name": cfg.method_name, "seed_source": str(src), "seed_kind": rp.seed_kind,
            "seed_fingerprint": source_cams_fp})
        print(f"[rounds] round 0: seeds of {src} ({rp.seed_kind})")
        res0 = timed("evaluate", _evaluate_source, cfg0, src, rp.seed_kind)
        glm_meta = read_json(src / "model.json") if (src / "model.json").is_file() else {}
        source_desc = f"{src} ({rp.seed_kind})"
    rounds.append({"round": 0, "stage": "GLM", "source": source_desc, **_round_scores(res0),
                   "train_seconds": glm_meta.get("train_seconds")})

    init_path, init_desc = _resolve_init(rp, out)
    if init_path is not None and src is not None and rp.init_from is None:
        _check_source_model(cfg, init_path)

    # ---- SLM rounds --------------------------------------------------------------------
    slm_optim = dataclasses.replace(
        cfg.optim, lr=float(rp.slm_lr),
        weight_decay=float(cfg.optim.weight_decay if rp.slm_weight_decay is None else rp.slm_weight_decay),
    )
    method_full = _normalised_method(cfg, mp, rp)
    method_r = {k: v for k, v in method_full.items() if k not in _RUN_ONLY_KEYS}
    wrapper = functools.partial(BoundedCAMGenerator, k=float(mp.k)) if rp.relu_k_inference else None
    prev_weights = init_path
    for r in range(1, rp.rounds + 1):
        t_round = time.time()
        rd = _round_dir(out, r)
        conf_dir = rd / "confidence"
        conf_scores: dict = {}
        if main:
            # Coarse Generation from the previous round (or the seed source for round 1)
            if r == 1 and src is not None and rp.seed_kind != "cams":
                folder = src / ("confident" if rp.seed_kind == "confident" else "pseudo")
                fp = _confidence_fingerprint(cfg, rp, _source_identity("masks", folder, source_cams_fp))
                make = functools.partial(_link_files, folder, conf_dir, [f"{i}.png" for i in ids])
            else:
                prev = _round_dir(out, r - 1)
                cam_dir, cams_fp = (src / "cams", source_cams_fp) if (r == 1 and src is not None) else (prev / "cams", _fp_hash(prev, "infer"))
                fp = _confidence_fingerprint(cfg, rp, _source_identity("cams", cam_dir, cams_fp))
                print(f"[rounds] round {r}: confidence CAMs from {cam_dir} (boundary constraint: {rp.boundary_constraint})")
                make = functools.partial(build_confidence, train_layout, cam_dir, conf_dir, rp, cfg.refine.workers)
            timed("confidence", _confidence_stage, cfg, rd, fp, ids, make)
            conf_scores = _confidence_scores(train_layout, conf_dir, rd, fp.hash)
        barrier()  # every rank trains on the finished maps

        thr = round_threshold(cfg, rp, r)
        cfg_r = dataclasses.replace(
            cfg, output_dir=str(rd), method=dict(method_r), optim=slm_optim,
            trainer={**cfg.trainer, "max_epochs": int(rp.epochs_per_round)},
            evaluation=dataclasses.replace(cfg.evaluation, threshold=thr),
        )
        if main:
            write_json(rd / "config.json", cfg_r.to_dict())
        print(f"[rounds] round {r}: SLM training ({rp.epochs_per_round} epochs, lr {rp.slm_lr}) from {prev_weights or init_desc}")
        resumed |= (rd / "model.json").is_file() or (rd / "checkpoints" / "last.ckpt").is_file()
        extras = {"confidence": LabelDirSource(conf_dir, name="confidence")}
        weights = timed("train", stage_train, cfg_r, extras=extras, init_weights=prev_weights)
        last_round = r == rp.rounds
        timed("infer", stage_infer, cfg_r, _splits(cfg_r, with_train=not last_round), net_wrapper=wrapper)
        res = timed("evaluate", stage_evaluate, cfg_r)
        prev_weights = weights
        if not main:
            continue
        meta = read_json(rd / "model.json")
        rounds.append({"round": r, "stage": "SLM", **_round_scores(res), **conf_scores,
                       "epochs": meta.get("epochs"), "train_seconds": meta.get("train_seconds"),
                       "round_seconds": round(time.time() - t_round, 1)})
        _write_rounds(out, cfg, mp, rp, rounds, init_desc)
    if not main:
        return {}

    # ---- the last round is the run's result ----------------------------------------------
    last = _round_dir(out, rp.rounds)
    cfg_top = dataclasses.replace(cfg, method=method_full, evaluation=dataclasses.replace(
        cfg.evaluation, threshold=round_threshold(cfg, rp, rp.rounds)))
    _top_fingerprints(cfg_top, out, rp, last)
    cam_names = sorted(f.name for f in (last / "cams").glob("*.npz"))
    _link_files(last / "cams", out / "cams", cam_names)
    for stale in set(f.name for f in (out / "cams").glob("*.npz")) - set(cam_names):
        (out / "cams" / stale).unlink(missing_ok=True)
    _link_files(last, out, ["model.safetensors"])
    slm_train = sum(float(x.get("train_seconds") or 0) for x in rounds[1:])
    write_json(out / "model.json", {
        **read_json(last / "model.json"),
        "method": cfg.method_name,
        "epochs": int(cfg.trainer.get("max_epochs", 1)),
        "rounds": rp.rounds,
        "epochs_per_round": rp.epochs_per_round,
        "train_seconds": round(slm_train + (float(glm_meta.get("train_seconds") or 0) if src is None else 0.0), 1),
        "slm_train_seconds": round(slm_train, 1),
        "glm": source_desc,
        "glm_train_seconds": glm_meta.get("train_seconds"),
        "init_from": init_desc,
    })
    seeds = timed("evaluate", stage_evaluate, cfg_top)
    t = time.time()
    pseudo = stage_refine(cfg_top)
    timing["refine"] = time.time() - t
    t = time.time()
    after = stages_after_refine(cfg_top)  # affinity + random walk + segmentation, when the config asks
    if any(v is not None for v in after.values()):
        timing["after_refine"] = time.time() - t
    stage_times: dict[str, Any] = {k: round(v, 1) for k, v in timing.items()}
    stage_times["total"] = round(time.time() - t_start, 1)
    stage_times["resumed"] = bool(resumed)  # True: some training was done by an earlier call (times partial)
    tpath = out / "metrics" / "timing.json"
    write_json(tpath, {**(read_json(tpath) if tpath.is_file() else {}), **stage_times})
    _write_rounds(out, cfg_top, mp, rp, rounds, init_desc, pseudo=pseudo, timing=stage_times)
    atomic_write_bytes(out / "figures" / "rounds.png", rounds_figure(rounds, title=f"GSLM on {source_desc}"))
    stage_report(cfg_top)
    return {"rounds": rounds, "seeds": seeds, "pseudo": pseudo, **after}


def _write_rounds(out: Path, cfg: Config, mp: Any, rp: RoundsParams, rounds: list[dict], init_desc: str, *,
                  pseudo: dict | None = None, timing: dict | None = None) -> None:
    params = {**(mp.to_dict() if hasattr(mp, "to_dict") else {}), **rp.to_dict()}
    if hasattr(mp, "resolved_reduction"):
        params["reduction"] = mp.resolved_reduction
    data = {
        "method": cfg.method_name,
        "split": cfg.data.eval_split,
        "threshold_from": cfg.evaluation.threshold_from or "config",
        "params": params,
        "crf": rp.crf_params().to_dict(),
        "init_from": init_desc,
        "rounds": rounds,
    }
    if pseudo is not None:
        data["pseudo_miou"] = pseudo.get("miou")
    if timing is not None:
        data["timing"] = timing
    data["protocol"] = protocol(cfg)
    write_json(out / "metrics" / "rounds.json", data)


def rounds_figure(rounds: list[dict], title: str = "GSLM") -> bytes:
    """PNG (bytes) of the per-round curves, as the paper's Fig. 5 (a)-(c) / Fig. 8(c).

    Panels: (a) seed mIoU at the fixed threshold, swept best, and the confidence CAM's mIoU
    on its labelled pixels; (b) m_under; (c) m_over (fixed threshold, Eq. 7-8). ``round`` on x.
    Missing values are drawn as gaps.
    """
    from matplotlib.figure import Figure

    x = [r["round"] for r in rounds]

    def col(key):
        return [np.nan if r.get(key) is None else float(r[key]) for r in rounds]

    fig = Figure(figsize=(11, 3.4))
    axes = [fig.add_subplot(1, 3, i + 1) for i in range(3)]
    axes[0].plot(x, col("miou"), "o-", label="seed mIoU (fixed thr.)")
    axes[0].plot(x, col("best_miou"), "*--", label="seed mIoU (swept best)")
    if any(r.get("confidence_miou") is not None for r in rounds):
        axes[0].plot(x, col("confidence_miou"), "s:", label="confidence CAM mIoU (labelled px)")
    axes[0].set_ylabel("mIoU (%)")
    axes[0].set_title("(a) accuracy")
    axes[1].plot(x, col("m_under"), "v-", color="C3")
    axes[1].set_title("(b) under-activation m_under")
    axes[2].plot(x, col("m_over"), "^-", color="C4")
    axes[2].set_title("(c) over-activation m_over")
    for ax in axes:
        ax.set_xlabel("round (0 = GLM / seed source)")
        ax.set_xticks(x)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=7, loc="best")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()
