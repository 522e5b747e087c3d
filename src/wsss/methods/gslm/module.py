"""GSLM (Mai et al.): General Learning Module + rounds of Specific Learning, on any CAM generator.

Run layout (``<output_dir>`` = ``cfg.output_dir``)::

    round_0/                 the GLM: a plain CAM network trained here (``seed_source: null``),
                             or only the evaluation of another run's seeds (GSLM+)
      cams/ model.safetensors metrics/seeds.json ...
    round_<r>/  r = 1..R     one SLM round
      confidence/<id>.png    the confidence CAM it is trained on (Eq. 3, from round r-1)
      model.safetensors      SLM weights (started from round r-1's)
      cams/ metrics/seeds.json metrics/confidence.json
    cams/ model.safetensors  the last round's (hard links), so the run looks like any other
    metrics/seeds.json metrics/pseudo.json   evaluation + CRF pseudo masks of the last round
    metrics/rounds.json      per-round seed mIoU (fixed / swept), m_under, m_over, confidence
    figures/rounds.png       the curves of the paper's Fig. 5 / Fig. 8(c) for this run

Every step reuses the shared stages (``wsss.training.train``, ``pipeline.stage_infer``,
``pipeline.stage_evaluate``, ``pipeline.stage_refine``, ``refine.pseudo.make_pseudo_masks``)
and skips work whose output exists, so an interrupted run resumes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from wsss.config import Config, ConfigError
from wsss.io import atomic_write_bytes, read_json, write_json
from wsss.methods.base import WSSSModule, method_params, multilabel_loss
from wsss.methods.gslm.model import GSLMParams, activation_loss

__all__ = [
    "GSLMModule",
    "BoundedCAMGenerator",
    "gslm_params",
    "confidence_cam",
    "build_confidence",
    "confidence_training",
    "run_gslm",
    "rounds_figure",
]

#: keys of ``cfg.method`` that the round driver sets for the module (not user parameters)
_INTERNAL = ("_round", "_init_weights")


def gslm_params(cfg: Config) -> GSLMParams:
    """:class:`GSLMParams` from ``cfg.method`` (internal ``_*`` keys set by the driver left out).

    Raises:
        ConfigError: unknown key; ValueError: invalid value.
    """
    public = {k: v for k, v in cfg.method.items() if k not in _INTERNAL}
    return method_params(dataclasses.replace(cfg, method=public), GSLMParams, "gslm")


class GSLMModule(WSSSModule):
    """The SLM training step (GSLM Eq. 6): ``L = L_cls + alpha * L_act``.

    ``net`` is the shared :class:`~wsss.methods.base.CAMNet` (the topology is unchanged, Sec.
    4.1). Batches must carry ``"mask"``: the confidence CAM as a label map (B, S, S) int64 with
    0 background, 1..C confident class, 255 ignored (confusion region or crop padding), passed
    through the same augmentation as the image (see :func:`confidence_training`). When
    ``cfg.method["_init_weights"]`` names a ``.safetensors`` file (set by :func:`run_gslm` to
    the previous round's / the GLM's weights), the network starts from it.

    Raises (at construction):
        ValueError: ``<file>: ...`` when the initial weights do not fit the network.
    """

    def __init__(self, cfg: Config, num_classes: int) -> None:
        super().__init__(cfg, num_classes)
        self.params = gslm_params(cfg)
        init = cfg.method.get("_init_weights")
        if init:
            _load_weights(self.net, Path(init))

    def compute_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if "mask" not in batch:
            raise RuntimeError(
                "gslm: the SLM batch has no confidence CAM ('mask'); GSLM trains in rounds - run "
                "'wsss pipeline' with method.name gslm, not 'wsss train'"
            )
        p = self.params
        logits, cams = self.net(batch["image"])
        cls = multilabel_loss(logits, batch["label"])
        act = activation_loss(cams, batch["mask"], batch["label"], k=p.k, reduction=p.reduction)
        loss = cls + p.alpha * act
        return loss, {"cls": cls.detach(), "act": act.detach()}

    # the whole multi-round procedure replaces the stage order of wsss.pipeline
    @staticmethod
    def run_pipeline(cfg: Config) -> dict:
        """See :func:`run_gslm`."""
        return run_gslm(cfg)


class BoundedCAMGenerator(nn.Module):
    """A CAM generator whose CAMs are bounded by ``k`` (``min(cams, k)``; the inference's ReLU
    then gives ``psi_k``). Used at inference only when ``relu_k_inference`` is set.

    ``forward(x) -> (logits (B, C) unchanged, cams (B, C, h, w) <= k)``.
    """

    def __init__(self, net: nn.Module, k: float) -> None:
        super().__init__()
        self.net = net
        self.k = float(k)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, cams = self.net(x)
        return logits, cams.clamp(max=self.k)


def _load_weights(net: nn.Module, path: Path) -> None:
    from safetensors.torch import load_file

    if not path.is_file():
        raise FileNotFoundError(f"{path}: initial weights for GSLM not found")
    try:
        net.load_state_dict(load_file(str(path)), strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise ValueError(
            f"{path}: weights do not fit the configured CAM network ({first}); set model.* to the "
            "source run's backbone or method.init_from to 'imagenet' or another run"
        ) from None


# ---------------------------------------------------------------------------------------
# Coarse Generation (Eq. 3): confidence CAMs
# ---------------------------------------------------------------------------------------


def confidence_cam(image: np.ndarray, record, params: GSLMParams) -> np.ndarray:
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
    """
    from wsss.refine.pseudo import confident_labels

    return confident_labels(
        image, record, params.theta_fg, params.theta_bg, params.crf_params(), conflict=params.conflict
    )


def build_confidence(layout, cam_dir: str | os.PathLike, out_dir: str | os.PathLike, params: GSLMParams,
                     workers: int | None = None) -> list[str]:
    """Write ``<out_dir>/<id>.png`` (:func:`confidence_cam`) for every image of ``layout``, in
    parallel and resumably (``make_pseudo_masks(kind="confident")``). Returns the ids written."""
    from wsss.refine.pseudo import make_pseudo_masks

    return make_pseudo_masks(
        layout, cam_dir, out_dir, kind="confident", fg_threshold=params.theta_fg, bg_threshold=params.theta_bg,
        params=params.crf_params(), conflict=params.conflict, workers=workers,
    )


@contextlib.contextmanager
def confidence_training() -> Iterator[None]:
    """While active, :func:`wsss.training.train` feeds ``data.mask_dir`` masks to the module.

    The shared ``train_loader`` builds ``ClassificationDataset(layout, transform)`` without
    masks; this swaps in ``with_mask=True`` so that the layout's masks - the confidence CAMs,
    because the round's config points ``data.mask_dir`` (absolute path) at them - go through
    the very same ``TrainTransform`` as the image (padding -> 255). Workaround until
    ``train_loader`` takes a ``with_mask`` option (requested from the lead); nothing is copied.
    """
    from unittest import mock

    import wsss.training as training
    from wsss.data.datasets import ClassificationDataset

    def with_masks(layout, transform=None, **kw):
        kw["with_mask"] = True
        return ClassificationDataset(layout, transform, **kw)

    with mock.patch.object(training, "ClassificationDataset", with_masks):
        yield


# ---------------------------------------------------------------------------------------
# The multi-round driver
# ---------------------------------------------------------------------------------------


def _link_files(src_dir: Path, dst_dir: Path, names: list[str]) -> None:
    """Hard-link (or copy, atomically) ``src_dir/<name>`` to ``dst_dir/<name>``; existing kept."""
    dst_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        src, dst = src_dir / name, dst_dir / name
        if dst.exists():
            continue
        if not src.is_file():
            raise FileNotFoundError(f"{src}: file not found")
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
    s = [cfg.data.train_split] if with_train else []
    s += [cfg.data.eval_split, *cfg.inference.splits]
    if cfg.evaluation.threshold_from:
        s.append(cfg.evaluation.threshold_from)
    return list(dict.fromkeys(s))


def _resolve_init(p: GSLMParams, out: Path) -> tuple[Path | None, str]:
    """(weights file the first SLM round starts from, description)."""
    if p.init_from == "imagenet":
        return None, "imagenet (model.pretrained backbone, new classifier)"
    if p.init_from:
        path = Path(p.init_from)
        path = path / "model.safetensors" if path.is_dir() else path
        if not path.is_file():
            raise FileNotFoundError(f"{path}: method.init_from weights not found")
        return path, str(path)
    if p.seed_source is None:
        return _round_dir(out, 0) / "model.safetensors", "GLM trained in this run (round_0)"
    path = Path(p.seed_source) / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the seed source has no CAM generator to start from; set method.init_from")
    return path, f"seed source {p.seed_source}"


def _check_source_model(cfg: Config, src: Path) -> None:
    meta = src.parent / "model.json"
    if not meta.is_file():
        return
    info = read_json(meta)
    for key, want in (("backbone", cfg.model.backbone), ("output_stride", cfg.model.output_stride)):
        if key in info and info[key] != want:
            raise ConfigError(f"{meta}: {key} {info[key]!r} differs from model.{key} {want!r} of the GSLM config")


def _round_scores(res: dict, prefix: str = "") -> dict:
    out = {
        "miou": res.get("miou"),
        "best_miou": (res.get("best") or {}).get("miou"),
        "threshold": res.get("threshold"),
        "best_threshold": (res.get("best") or {}).get("threshold"),
        "m_under": res.get("m_under"),
        "m_over": res.get("m_over"),
        "best_m_under": (res.get("best") or {}).get("m_under"),
        "best_m_over": (res.get("best") or {}).get("m_over"),
        "precision": res.get("precision"),
        "recall": res.get("recall"),
    }
    return {f"{prefix}{k}": v for k, v in out.items()}


def _infer(cfg_r: Config, splits: list[str], p: GSLMParams, slm: bool) -> None:
    from wsss import pipeline

    if not (slm and p.relu_k_inference):
        pipeline.stage_infer(cfg_r, splits)
        return
    from wsss.inference.tta import infer_split
    from wsss.training import load_generator

    layouts = [pipeline.layout_for(cfg_r, s) for s in splits]
    net = BoundedCAMGenerator(load_generator(cfg_r, num_classes=layouts[0].num_classes), p.k).eval()
    device = torch.device("cuda" if torch.cuda.is_available() and str(cfg_r.trainer.get("accelerator", "auto")) in ("auto", "gpu", "cuda") else "cpu")
    inf = cfg_r.inference
    for layout in layouts:
        infer_split(net, layout, Path(cfg_r.output_dir) / "cams", scales=inf.scales, flip=inf.flip, device=device,
                    channels_last=inf.channels_last, bf16=inf.bf16)


def _evaluate_round0_source(cfg0: Config, src: Path, p: GSLMParams) -> dict:
    """Round-0 scores of another run's seeds (its CAMs, or its PNG masks)."""
    from wsss import pipeline
    from wsss.evaluation.seeds import evaluate_masks

    if p.seed_kind == "cams":
        src_cams = src / "cams"
        thr_split = cfg0.evaluation.threshold_from
        if thr_split:
            ids = pipeline.layout_for(cfg0, thr_split).ids
            if not all((src_cams / f"{i}.npz").is_file() for i in ids):
                print(f"[gslm] {src_cams}: no CAMs of split {thr_split}; round 0 uses evaluation.threshold")
                cfg0 = dataclasses.replace(cfg0, evaluation=dataclasses.replace(cfg0.evaluation, threshold_from=None))
        return pipeline.stage_evaluate(cfg0, cam_dir=src_cams)
    folder = src / ("confident" if p.seed_kind == "confident" else "pseudo")
    res = evaluate_masks(pipeline.layout_for(cfg0, cfg0.data.eval_split), folder, stage=p.seed_kind)
    write_json(Path(cfg0.output_dir) / "metrics" / "seeds.json", res)
    return res


def _confidence_scores(cfg: Config, layout, conf_dir: Path, r_dir: Path) -> dict:
    from wsss.evaluation.seeds import evaluate_masks

    if not layout.has_masks:
        return {}
    res = evaluate_masks(layout, conf_dir, stage="confidence")
    write_json(r_dir / "metrics" / "confidence.json", res)
    return {"confidence_miou": res["miou"], "confidence_coverage": res.get("coverage")}


def run_gslm(cfg: Config) -> dict:
    """GSLM / GSLM+ end to end (paper Sec. 4.1, Fig. 3).

    1. Round 0 (GLM): with ``seed_source: null`` train the plain CAM network (the shared
       trainer, method ``cam``) in ``round_0``, infer its CAMs (shared TTA) and evaluate; else
       evaluate the seed source's CAMs / masks (GSLM+, Table 4).
    2. For r = 1..rounds: the confidence CAM of round r-1 (Eq. 3, CRF or not; from the seed
       source for r = 1 when given) -> ``round_r/confidence``; train the SLM (Eq. 4-6) from the
       previous weights with the shared trainer in ``round_r`` (``epochs_per_round`` epochs,
       ``slm_lr``); TTA inference; seeds evaluated at the fixed threshold and swept.
    3. The last round's CAMs and weights become the run's ``cams/`` and ``model.safetensors``;
       the usual evaluation, CRF pseudo masks and report follow; ``metrics/rounds.json`` and
       ``figures/rounds.png`` hold the per-round curves.

    Returns:
        ``{"rounds": [...], "seeds": <final seeds metrics>, "pseudo": <final pseudo metrics>}``.

    Raises:
        ConfigError / ValueError: bad ``method`` parameters; FileNotFoundError: a missing seed
        source, CAM or weights file (named in the message).
    """
    from wsss import pipeline
    from wsss.training import train

    p = gslm_params(cfg)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", cfg.to_dict())
    t_start = time.time()
    timing: dict[str, float] = {"glm_train": 0.0, "train": 0.0, "infer": 0.0, "evaluate": 0.0, "confidence": 0.0}
    rounds: list[dict] = []
    train_layout = pipeline.layout_for(cfg, cfg.data.train_split)

    def timed(key: str, fn, *a, **kw):
        t = time.time()
        res = fn(*a, **kw)
        timing[key] = timing.get(key, 0.0) + time.time() - t
        return res

    # ---- round 0: the GLM --------------------------------------------------------------
    r0 = _round_dir(out, 0)
    cfg0 = dataclasses.replace(cfg, output_dir=str(r0))
    src = Path(p.seed_source) if p.seed_source else None
    resumed = src is None and ((r0 / "model.json").is_file() or (r0 / "checkpoints" / "last.ckpt").is_file())
    if src is None:
        cfg0 = dataclasses.replace(cfg0, method={"name": "cam"})
        print(f"[gslm] round 0: training the GLM (CAM baseline, {cfg.trainer.get('max_epochs')} epochs) in {r0}")
        timed("glm_train", pipeline.stage_train, cfg0)
        timed("infer", _infer, cfg0, _splits(cfg0, with_train=p.rounds >= 1), p, False)
        res0 = timed("evaluate", pipeline.stage_evaluate, cfg0)
        glm_meta = read_json(r0 / "model.json")
        source_desc = "GLM trained in this run"
    else:
        if not src.is_dir():
            raise FileNotFoundError(f"{src}: method.seed_source run directory not found")
        print(f"[gslm] round 0: seeds of {src} ({p.seed_kind})")
        res0 = timed("evaluate", _evaluate_round0_source, cfg0, src, p)
        glm_meta = read_json(src / "model.json") if (src / "model.json").is_file() else {}
        source_desc = f"{src} ({p.seed_kind})"
    rounds.append({"round": 0, "stage": "GLM", "source": source_desc, **_round_scores(res0),
                   "train_seconds": glm_meta.get("train_seconds")})

    init_path, init_desc = _resolve_init(p, out)
    if init_path is not None and src is not None and p.init_from is None:
        _check_source_model(cfg, init_path)

    # ---- SLM rounds --------------------------------------------------------------------
    slm_optim = dataclasses.replace(
        cfg.optim, lr=float(p.slm_lr),
        weight_decay=float(cfg.optim.weight_decay if p.slm_weight_decay is None else p.slm_weight_decay),
    )
    public = {k: v for k, v in cfg.method.items() if k not in _INTERNAL}
    prev_weights = init_path
    for r in range(1, p.rounds + 1):
        t_round = time.time()
        rd = _round_dir(out, r)
        conf_dir = rd / "confidence"
        # Coarse Generation from the previous round (or the seed source for round 1)
        if r == 1 and src is not None and p.seed_kind != "cams":
            folder = src / ("confident" if p.seed_kind == "confident" else "pseudo")
            timed("confidence", _link_files, folder, conf_dir, [f"{i}.png" for i in train_layout.ids])
        else:
            cam_dir = (src / "cams") if (r == 1 and src is not None) else _round_dir(out, r - 1) / "cams"
            print(f"[gslm] round {r}: confidence CAMs from {cam_dir} (boundary constraint: {p.boundary_constraint})")
            timed("confidence", build_confidence, train_layout, cam_dir, conf_dir, p, cfg.refine.workers)
        conf_scores = _confidence_scores(cfg, train_layout, conf_dir, rd)

        method_r = {**public, "_round": r}
        if prev_weights is not None:
            method_r["_init_weights"] = str(Path(prev_weights).resolve())
        cfg_r = dataclasses.replace(
            cfg, output_dir=str(rd), method=method_r, optim=slm_optim,
            trainer={**cfg.trainer, "max_epochs": int(p.epochs_per_round)},
        )
        cfg_train = dataclasses.replace(cfg_r, data=dataclasses.replace(cfg.data, mask_dir=str(conf_dir.resolve())))
        write_json(rd / "config.json", cfg_r.to_dict())
        print(f"[gslm] round {r}: SLM training ({p.epochs_per_round} epochs, lr {p.slm_lr}) from {prev_weights or init_desc}")
        t = time.time()
        resumed |= (rd / "model.json").is_file() or (rd / "checkpoints" / "last.ckpt").is_file()
        with confidence_training():
            weights = train(cfg_train, rd)
        timing["train"] += time.time() - t
        timed("infer", _infer, cfg_r, _splits(cfg_r, with_train=r < p.rounds), p, True)
        res = timed("evaluate", pipeline.stage_evaluate, cfg_r)
        meta = read_json(rd / "model.json")
        rounds.append({"round": r, "stage": "SLM", **_round_scores(res), **conf_scores,
                       "epochs": meta.get("epochs"), "train_seconds": meta.get("train_seconds"),
                       "round_seconds": round(time.time() - t_round, 1)})
        prev_weights = weights
        _write_rounds(out, cfg, p, rounds, init_desc)

    # ---- the last round is the run's result ----------------------------------------------
    last = _round_dir(out, p.rounds)
    cam_names = sorted(f.name for f in (last / "cams").glob("*.npz"))
    _link_files(last / "cams", out / "cams", cam_names)
    _link_files(last, out, ["model.safetensors"])
    slm_train = sum(float(r.get("train_seconds") or 0) for r in rounds[1:])
    write_json(out / "model.json", {
        **read_json(last / "model.json"),
        "method": cfg.method_name,
        "epochs": int(cfg.trainer.get("max_epochs", 1)),
        "rounds": p.rounds,
        "epochs_per_round": p.epochs_per_round,
        "train_seconds": round(slm_train + (float(glm_meta.get("train_seconds") or 0) if src is None else 0.0), 1),
        "slm_train_seconds": round(slm_train, 1),
        "glm": source_desc,
        "glm_train_seconds": glm_meta.get("train_seconds"),
        "init_from": init_desc,
    })
    seeds = timed("evaluate", pipeline.stage_evaluate, cfg)
    t = time.time()
    pseudo = pipeline.stage_refine(cfg)
    timing["refine"] = time.time() - t
    stage_times = {k: round(v, 1) for k, v in timing.items()}
    stage_times["total"] = round(time.time() - t_start, 1)
    stage_times["resumed"] = bool(resumed)  # True: some training was done by an earlier call (times partial)
    tpath = out / "metrics" / "timing.json"
    write_json(tpath, {**(read_json(tpath) if tpath.is_file() else {}), **stage_times})
    _write_rounds(out, cfg, p, rounds, init_desc, pseudo=pseudo, timing=stage_times)
    atomic_write_bytes(out / "figures" / "rounds.png", rounds_figure(rounds, title=f"GSLM on {source_desc}"))
    pipeline.stage_report(cfg)
    return {"rounds": rounds, "seeds": seeds, "pseudo": pseudo}


def _write_rounds(out: Path, cfg: Config, p: GSLMParams, rounds: list[dict], init_desc: str, *,
                  pseudo: dict | None = None, timing: dict | None = None) -> None:
    from wsss import pipeline

    data = {
        "method": "gslm",
        "split": cfg.data.eval_split,
        "threshold_from": cfg.evaluation.threshold_from or "config",
        "params": p.to_dict(),
        "crf": p.crf_params().to_dict(),
        "init_from": init_desc,
        "rounds": rounds,
    }
    if pseudo is not None:
        data["pseudo_miou"] = pseudo.get("miou")
    if timing is not None:
        data["timing"] = timing
    data["protocol"] = pipeline.protocol(cfg)
    write_json(out / "metrics" / "rounds.json", data)


def rounds_figure(rounds: list[dict], title: str = "GSLM") -> bytes:
    """PNG (bytes) of the per-round curves, as the paper's Fig. 5 (a)-(c) / Fig. 8(c).

    Panels: (a) seed mIoU at the fixed threshold, swept best, and the confidence CAM's mIoU
    on its labelled pixels; (b) m_under; (c) m_over (fixed threshold, Eq. 7-8). ``round`` on x.
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
