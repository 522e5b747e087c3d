"""LightningModules of the P-NOC family: Puzzle-CAM, OC-CSE, P-OC and P-NOC.

All four train a CAM generator ``net`` (a :class:`wsss.methods.base.CAMNet`) with the shared
SGD + poly schedule of :class:`wsss.methods.base.WSSSModule`; :meth:`cam_generator` is ``net``
alone, so inference and evaluation are those of every other method.

- :class:`PuzzleModule` (paper Eq. 3) and :class:`OCCSEModule` (Eq. 6) and :class:`POCModule`
  (Eq. 8) override :meth:`compute_loss` (automatic optimisation).
- :class:`PNOCModule` (Eq. 8-10, Algorithm 1) uses manual optimisation with two optimisers,
  generator and noc, each with its own poly schedule stepped once per batch;
  ``method.noc_objective`` chooses between the paper's noc update and the authors' code's.

Every loss that is back-propagated is the value of a tested function of
:mod:`wsss.methods.pnoc.model` (``puzzle_loss``, ``occse_loss``, ``poc_loss``, ``noc_loss``)
called on the batch's tensors; this file only schedules, samples and wires networks.

The ordinary classifier ``oc`` (OC-CSE, P-OC) is a frozen CAMNet whose weights are the CAM
baseline's ``model.safetensors`` (``method.oc_checkpoint``); it stays in eval mode and in no
optimiser. P-NOC's ``noc`` starts from the same weights and is trained.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from wsss.config import Config, ConfigError
from wsss.methods.base import CAMNet, WSSSModule, build_cam_net, method_params
from wsss.methods.pnoc.model import (
    OCCSEParams,
    PNOCParams,
    POCParams,
    PuzzleParams,
    erasure_map,
    hard_erase,
    linear_ramp,
    merge,
    noc_loss,
    noc_objective,
    occse_loss,
    poc_loss,
    puzzle_loss,
    remove_class,
    sample_present_class,
    smooth_labels,
    soft_erase,
    tile,
)

__all__ = ["PuzzleModule", "OCCSEModule", "POCModule", "PNOCModule", "load_cam_checkpoint"]

_CAM_RECIPE = "configs/msrc/cam.yaml"


def load_cam_checkpoint(net: CAMNet, path: str | Path | None) -> None:
    """Load a CAM network's ``model.safetensors`` (written by :func:`wsss.training.train`) into ``net``.

    Raises:
        FileNotFoundError: the file does not exist (the message says how to produce it).
        ValueError: the weights do not fit ``net`` (other backbone or number of classes).
    """
    from safetensors.torch import load_file

    if path is None:
        raise FileNotFoundError(
            "method.oc_checkpoint is not set: name the ordinary classifier's run with "
            f"`requires: {{oc: cam.yaml}}` in the config (see {_CAM_RECIPE}) or set method.oc_checkpoint"
        )
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: ordinary-classifier weights not found; train the CAM baseline first "
            f"with `wsss pipeline --config {_CAM_RECIPE}` (or set method.oc_checkpoint)"
        )
    try:
        net.load_state_dict(load_file(str(path)), strict=True)
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        detail = lines[1] if len(lines) > 1 else (lines[0] if lines else "mismatch")
        raise ValueError(f"{path}: weights do not fit the configured backbone/classes ({detail[:200]})") from None


def _params(cfg: Config, cls: type, name: str):
    """``method_params`` with value errors reported against the config file."""
    try:
        return method_params(cfg, cls, name)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{cfg.source or 'config'}: method '{name}': {exc}") from None


class _FamilyModule(WSSSModule):
    """What the four methods share: hyperparameters, label smoothing, class sampling, oc/noc nets."""

    method_key = "puzzle"
    params_cls: type = PuzzleParams
    uses_puzzle = False
    uses_cse = False

    def __init__(self, cfg: Config, num_classes: int) -> None:
        super().__init__(cfg, num_classes)
        self.hp = _params(cfg, self.params_cls, self.method_key)

    # -- helpers -------------------------------------------------------------------------
    def build_classifier(self, bn_mode: str = "frozen") -> CAMNet:
        """A CAMNet with the generator's architecture, randomly initialised (weights are
        loaded from ``oc_checkpoint`` when training starts, see :meth:`setup`).

        ``bn_mode`` (default ``"frozen"``): the classifier's BatchNorm, independent of the
        generator's ``model.bn_mode``. oc and noc classify with running statistics, as the
        authors' ``Classifier(mode="fix")`` (lucasdavid/PNOC ``train_pnoc.py``)."""
        return build_cam_net(self.cfg.model, self.num_classes, pretrained="none", bn_mode=bn_mode)

    def targets(self, labels: torch.Tensor) -> torch.Tensor:
        """Training targets: the labels, smoothed when ``method.label_smoothing`` > 0."""
        return smooth_labels(labels, float(self.hp.label_smoothing))

    def step_index(self) -> int:
        """Number of generator optimisation steps done so far."""
        return int(self.global_step)

    def sample_classes(self, labels: torch.Tensor) -> torch.Tensor:
        """r per image (-1 if none), reproducible from ``seed`` and the step index (so a resumed
        run draws the same classes as an uninterrupted one)."""
        g = torch.Generator().manual_seed(int(self.cfg.seed) * 1_000_003 + self.step_index())
        return sample_present_class(labels, g)

    def alpha_re(self, progress: float) -> float:
        hp = self.hp
        return linear_ramp(progress, 0.0, hp.alpha_re_ramp, hp.alpha_re_from, hp.alpha_re_to)

    def lambda_cse(self, progress: float) -> float:
        hp = self.hp
        return linear_ramp(progress, 0.0, hp.lambda_cse_ramp, hp.lambda_cse_from, hp.lambda_cse_to)

    def merged_tile_cams(self, images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """``A^re = merge(f(tile(x)))`` (B, C, h, w); resized bilinearly to ``size`` if the tile
        grid does not land exactly on the full image's CAM grid (crop not divisible by 2 x stride)."""
        n = int(self.hp.tiles_per_side)
        _, tile_cams = self.net(tile(images, n))
        cams_re = merge(tile_cams, images.shape[0], n)
        if tuple(cams_re.shape[-2:]) != tuple(size):
            cams_re = F.interpolate(cams_re, size=tuple(size), mode="bilinear", align_corners=False)
        return cams_re

    def cse_inputs(
        self, images: torch.Tensor, labels: torch.Tensor, cams: torch.Tensor, r: torch.Tensor, classifier: nn.Module
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """What the CSE term of Eq. 6/8/9 scores: the classifier's logits on the softly erased
        images ``x o (1 - psi(A^r))`` (Eq. 4-5) and their targets ``y \\ {r}`` (smoothed like every
        target), over the N images that have a class (``r >= 0``).

        Args:
            images: (B, 3, H, W) normalised images; labels: (B, C) multi-hot; cams: (B, C, h, w)
                raw generator CAMs (gradients flow back through the mask); r: (B,) class or -1;
            classifier: oc (frozen) or noc, ``forward(x) -> (logits, cams)``.

        Returns:
            ``(oc_logits (N, C), oc_targets (N, C))``; two (0, C) tensors without running the
            classifier when no image has a class (then :func:`cse_loss` is 0).
        """
        valid = r >= 0
        if not bool(valid.any()):
            empty = cams.new_zeros(0, cams.shape[1])
            return empty, empty
        mask = erasure_map(cams[valid], r[valid], tuple(images.shape[-2:]), self.hp.psi_norm, self.hp.psi_eps)
        oc_logits, _ = classifier(soft_erase(images[valid], mask))
        return oc_logits, self.targets(remove_class(labels[valid], r[valid]))

    def generator_objective(
        self, batch: dict[str, Any], r: torch.Tensor | None, classifier: nn.Module | None, progress: float
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """The generator loss of the configured method and the raw CAMs A (B, C, h, w).

        The loss is the value of the tested function of :mod:`wsss.methods.pnoc.model`, called
        on this batch's tensors: :func:`puzzle_loss` (Eq. 3), :func:`occse_loss` (Eq. 6) or
        :func:`poc_loss` (Eq. 8; P-NOC's generator, Eq. 9, with noc as the classifier). Logs
        hold its unweighted terms plus the weights ``alpha_re`` / ``lambda_cse`` of this step.
        """
        images, labels = batch["image"], batch["label"]
        t = self.targets(labels)
        logits, cams = self.net(images)
        weights: dict[str, float] = {}
        if self.uses_puzzle:
            cams_re = self.merged_tile_cams(images, tuple(cams.shape[-2:]))
            re_labels = labels if self.hp.re_mask == "labels" else None
            weights["alpha_re"] = self.alpha_re(progress)
        if self.uses_cse:
            if r is None or classifier is None:
                raise ValueError(f"{type(self).__name__}: the CSE term needs sampled classes r and a classifier")
            oc_logits, oc_targets = self.cse_inputs(images, labels, cams, r, classifier)
            weights["lambda_cse"] = self.lambda_cse(progress)
        if self.uses_puzzle and self.uses_cse:
            loss, logs = poc_loss(
                logits, cams, cams_re, t, oc_logits, oc_targets, weights["alpha_re"], weights["lambda_cse"], re_labels
            )
        elif self.uses_puzzle:
            loss, logs = puzzle_loss(logits, cams, cams_re, t, weights["alpha_re"], re_labels)
        elif self.uses_cse:
            loss, logs = occse_loss(logits, t, oc_logits, oc_targets, weights["lambda_cse"])
        else:  # pragma: no cover - every registered subclass sets one flag
            raise TypeError(f"{type(self).__name__} sets neither uses_puzzle nor uses_cse")
        logs.update({k: torch.tensor(v) for k, v in weights.items()})
        return loss, logs, cams

    def compute_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        r = self.sample_classes(batch["label"]) if self.uses_cse else None
        oc = getattr(self, "oc", None)
        loss, logs, _ = self.generator_objective(batch, r, oc, self.progress)
        return loss, logs


class PuzzleModule(_FamilyModule):
    """Puzzle-CAM (Jo & Yu 2021; P-NOC paper Eq. 3): whole-image and merged-tile classification
    plus the L1 reconstruction between their CAMs, lambda_re ramping 0 -> 4 over the first half."""

    method_key = "puzzle"
    params_cls = PuzzleParams
    uses_puzzle = True


class _WithFrozenOC(_FamilyModule):
    #: the dependency run ``requires: {oc: ...}`` gives oc's weights (see wsss.pipeline.resolve_requires)
    requires_map = {"oc": ("oc_checkpoint", "model.safetensors")}
    """Adds the frozen ordinary classifier ``oc`` (OC-CSE, P-OC)."""

    def __init__(self, cfg: Config, num_classes: int) -> None:
        super().__init__(cfg, num_classes)
        self.oc = self.build_classifier()
        self.oc.requires_grad_(False)
        self.oc.eval()

    def setup(self, stage: str) -> None:
        if stage == "fit":
            load_cam_checkpoint(self.oc, self.hp.oc_checkpoint)
            self.oc.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        self.oc.eval()  # oc is never trained; keep it in inference mode
        return self


class OCCSEModule(_WithFrozenOC):
    """OC-CSE (Kweon et al. 2021; paper Eq. 4-6): soft class-specific erasure of one sampled
    class scored by the frozen oc against y without that class; lambda_cse 0.3 -> 1."""

    method_key = "occse"
    params_cls = OCCSEParams
    uses_cse = True


class POCModule(_WithFrozenOC):
    """P-OC (paper Eq. 8): Puzzle-CAM + OC-CSE, label smoothing 0.1 by default (P-OC+LS)."""

    method_key = "poc"
    params_cls = POCParams
    uses_puzzle = True
    uses_cse = True


class PNOCModule(_FamilyModule):
    requires_map = {"oc": ("oc_checkpoint", "model.safetensors")}
    """P-NOC (paper Eq. 8-10, Algorithm 1).

    Every batch: (1) the generator f takes one SGD step on the P-OC loss (:func:`poc_loss`,
    Eq. 8) with noc as the classifier of the soft-erased image (Eq. 9); (2) every ``k_noc``
    batches noc takes one SGD step on ``L_noc = lambda_noc l_cls(noc(x o (psi(A^r) <= delta_noc)), y)``
    (:func:`noc_loss`, Eq. 10), A being the CAMs f produced in step (1) (before its update, as
    Algorithm 1 and the authors' code), f frozen.

    ``method.noc_objective`` (:func:`noc_objective`) decides what reaches noc in step (1):

    - ``"paper"`` (default): noc is frozen during f's step (its parameters do not require
      gradients: Algorithm 1 "fix noc and train f"), so noc descends ``L_noc`` alone.
    - ``"authors"`` (lucasdavid/PNOC ``train_pnoc.py``): f's backward also fills noc's ``.grad``
      with ``d L_gen / d theta_noc``; only f's gradients are zeroed; noc's backward adds
      ``d L_noc / d theta_noc`` and noc steps on the sum, then zeroes its gradients. With
      ``k_noc > 1`` the generator part accumulates over the generator steps since noc's last
      step (as the authors' code, which zeroes noc's gradients only after its step).

    noc starts from the CAM baseline (``noc_checkpoint`` or ``oc_checkpoint``); its state is
    part of the Lightning checkpoint, so resuming continues it (gradients accumulated between
    noc steps, ``"authors"`` with ``k_noc > 1`` only, are not checkpointed).

    Lightning counts both optimisers' steps in ``global_step``: with ``k_noc = 1`` a batch is
    2 steps, so give P-NOC runs ``trainer.max_epochs`` (``max_steps`` counts both networks).
    """

    method_key = "pnoc"
    params_cls = PNOCParams
    uses_puzzle = True
    uses_cse = True

    def __init__(self, cfg: Config, num_classes: int) -> None:
        super().__init__(cfg, num_classes)
        self.automatic_optimization = False
        self.noc = self.build_classifier(self.hp.noc_bn_mode)
        self.noc.eval()
        self._total_batches: int | None = None

    def setup(self, stage: str) -> None:
        if stage == "fit":
            load_cam_checkpoint(self.noc, self.hp.noc_checkpoint or self.hp.oc_checkpoint)

    # -- schedule ---------------------------------------------------------------------------
    def total_batches(self) -> int:
        """Generator steps in the whole run (the poly schedules and ramps run over these)."""
        if self._total_batches is None:
            t = self.trainer
            total = int(t.estimated_stepping_batches)
            if t.max_steps is not None and t.max_steps > 0:
                k = int(self.hp.k_noc)
                total = min(total, math.ceil(t.max_steps * k / (k + 1)))
            self._total_batches = max(1, total)
        return self._total_batches

    def step_index(self) -> int:
        if self._trainer is None or not self.trainer.lr_scheduler_configs:
            return 0
        return int(self.trainer.lr_scheduler_configs[0].scheduler.last_epoch)

    @property
    def progress(self) -> float:
        if self._trainer is None:
            return 0.0
        return min(1.0, self.step_index() / self.total_batches())

    def lambda_noc(self, progress: float) -> float:
        hp = self.hp
        return linear_ramp(progress, 0.0, hp.lambda_noc_ramp, hp.lambda_noc_from, hp.lambda_noc_to)

    def configure_optimizers(self):
        lr = float(self.cfg.optim.lr)
        noc_lr = float(self.hp.noc_lr) if self.hp.noc_lr is not None else lr
        opt_g, sched_g = self.make_optimizer(self.param_groups_for(self.net, lr))
        opt_n, sched_n = self.make_optimizer(self.param_groups_for(self.noc, noc_lr))
        total = self.total_batches()
        if total != int(self.trainer.estimated_stepping_batches):
            # max_steps counts both optimisers' steps: rebuild the poly factor over generator steps
            from wsss.methods.base import poly_lambda

            for opt, sched in ((opt_g, sched_g), (opt_n, sched_n)):
                sched["scheduler"] = torch.optim.lr_scheduler.LambdaLR(opt, poly_lambda(total, self.cfg.optim.poly_power))
        return [opt_g, opt_n], [sched_g, sched_n]

    # -- the two phases of Algorithm 1 ------------------------------------------------------
    def generator_phase(self, batch: dict[str, Any], r: torch.Tensor, progress: float):
        """Update f by the P-OC loss (Algorithm 1 lines 3-6). With ``noc_objective: paper`` noc's
        parameters do not require gradients here; with ``authors`` they do, and the backward
        leaves ``d L_gen / d theta_noc`` in noc's ``.grad`` (only f's gradients are zeroed).
        Returns (detached loss, logs, detached A)."""
        opt_g = self.optimizers()[0]
        self.noc.eval()
        shield = self.hp.noc_objective == "paper"
        # toggled_optimizer(opt_g): parameters of the other optimiser (noc) get requires_grad False
        with self.toggled_optimizer(opt_g) if shield else contextlib.nullcontext():
            loss, logs, cams = self.generator_objective(batch, r, self.noc, progress)
            opt_g.zero_grad()
            self.manual_backward(loss)
            opt_g.step()
            opt_g.zero_grad()  # f's gradients only (authors: cgopt.zero_grad() after its step)
        return loss.detach(), logs, cams.detach()

    def noc_phase(self, batch: dict[str, Any], r: torch.Tensor, cams: torch.Tensor, progress: float):
        """Fix f, update noc on the hard-erased images (Algorithm 1 lines 8-11). With
        ``noc_objective: authors`` noc's gradient left by the generator phase is kept and
        ``d L_noc / d theta_noc`` is added to it before the step. Returns the weighted ``L_noc``
        (:func:`noc_loss`), or None when no image of the batch has a class to erase."""
        valid = r >= 0
        if not bool(valid.any()):
            return None
        images, labels = batch["image"][valid], batch["label"][valid]
        with torch.no_grad():
            mask = erasure_map(cams[valid], r[valid], tuple(images.shape[-2:]), self.hp.noc_psi_norm, self.hp.psi_eps)
            erased = hard_erase(images, mask, float(self.hp.delta_noc))
        opt_n = self.optimizers()[1]
        self.noc.train()
        try:
            with self.toggled_optimizer(opt_n):  # generator parameters: requires_grad False
                logits, _ = self.noc(erased)
                loss = noc_loss(logits, self.targets(labels), self.lambda_noc(progress))
                if self.hp.noc_objective == "paper":
                    opt_n.zero_grad()  # noc descends L_noc alone
                self.manual_backward(loss)
                opt_n.step()
                opt_n.zero_grad()  # authors: ocopt.zero_grad() after ocopt.step()
        finally:
            self.noc.eval()
        return loss.detach()

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        sched_g, sched_n = self.lr_schedulers()
        step = self.step_index()
        progress = self.progress
        r = self.sample_classes(batch["label"])
        loss, logs, cams = self.generator_phase(batch, r, progress)
        sched_g.step()
        if step % int(self.hp.k_noc) == 0:
            noc = self.noc_phase(batch, r, cams, progress)
            if noc is not None:
                logs["noc"] = noc
                logs["noc_objective"] = noc_objective(
                    noc, logs["cse"], float(logs["lambda_cse"]), self.hp.noc_objective
                ).detach()
        sched_n.step()  # noc's lr follows training progress even when k_noc > 1
        logs["lambda_noc"] = torch.tensor(self.lambda_noc(progress))
        bs = batch["image"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        for k, v in logs.items():
            self.log(f"train/{k}", v, batch_size=bs)
        return loss
