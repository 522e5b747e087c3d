"""GSLM's LightningModule: the SLM training step (Mai et al., Eq. 6), a leaf like every method.

The multi-round procedure (round 0 = the GLM or another run's seeds, then rounds of Coarse
Generation + SLM training) is not here: the class declares ``recipe = "rounds"`` and
``wsss.pipeline.run_pipeline`` hands the config to ``wsss.recipes.rounds.run_rounds``, which
composes the shared stages. This module imports nothing from the stages, the pipeline, the
recipes, training, inference, evaluation, refinement or the report.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from wsss.config import Config
from wsss.methods.base import WSSSModule, multilabel_loss
from wsss.methods.gslm.model import GSLMParams

__all__ = ["GSLMModule", "gslm_params"]


def gslm_params(cfg: Config) -> GSLMParams:
    """The SLM step's :class:`GSLMParams` from ``cfg.method``.

    Only the keys that are :class:`GSLMParams` fields are read; the recipe's keys (``rounds``,
    ``theta_fg``, ...) are left to ``wsss.recipes.rounds.rounds_params``, which validates the
    whole ``method`` section (unknown keys included) before any training.

    Raises:
        ValueError: ``gslm: <key> must be ...`` for an invalid value.
    """
    names = {f.name for f in dataclasses.fields(GSLMParams)}
    return GSLMParams(**{k: v for k, v in cfg.method.items() if k in names})


class GSLMModule(WSSSModule):
    """The SLM training step (GSLM Eq. 6): ``L = L_cls + alpha * L_act``.

    ``L_cls`` is the multilabel soft-margin loss of the GLM (kept to "consolidate the learned
    patterns", Table 5); ``L_act`` is :func:`~wsss.methods.gslm.model.activation_loss`
    (``loss_form: paper``, Eq. 4-5) or :func:`~wsss.methods.gslm.model.authors_activation_loss`
    (``loss_form: authors``). ``net`` is the shared :class:`~wsss.methods.base.CAMNet` (the
    topology is unchanged, Sec. 4.1).

    Declared for the frame:

    - ``extra_inputs = ("confidence",)``: batches carry ``batch["confidence"]`` int64 (B, S, S),
      the confidence CAM as a label map (0 background, 1..C confident class, 255 ignored or crop
      padding) augmented with the image (``wsss.data.extras.LabelDirSource``, supplied by the
      recipe through ``train(extras=...)``);
    - ``recipe = "rounds"``: ``wsss pipeline`` runs ``wsss.recipes.rounds.run_rounds``;
    - ``requires_map = {"seed": ("seed_source", "")}``: a ``requires: {seed: <config>}``
      dependency run becomes ``method.seed_source`` (GSLM+: its CAMs seed round 1);
    - ``params_cls = GSLMParams``: the ``method`` keys this module reads (the recipe accepts
      them beside its own).

    The initial weights of a round come through ``train(..., init_weights=...)``.

    Raises:
        ValueError (construction): invalid ``k`` / ``alpha`` / ``loss_form`` / ``reduction``.
        RuntimeError (training step): a batch without ``"confidence"``.
    """

    recipe = "rounds"
    extra_inputs = ("confidence",)
    requires_map = {"seed": ("seed_source", "")}
    params_cls = GSLMParams

    def __init__(self, cfg: Config, num_classes: int) -> None:
        super().__init__(cfg, num_classes)
        self.params = gslm_params(cfg)

    def compute_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if "confidence" not in batch:
            raise RuntimeError(
                "gslm: the SLM batch has no confidence CAM ('confidence'); GSLM trains in rounds - run "
                "'wsss pipeline' with method.name gslm, not 'wsss train'"
            )
        p = self.params
        logits, cams = self.net(batch["image"])
        cls = multilabel_loss(logits, batch["label"])
        act = p.loss_fn()(cams, batch["confidence"], batch["label"], k=p.k, reduction=p.resolved_reduction)
        loss = cls + p.alpha * act
        return loss, {"cls": cls.detach(), "act": act.detach()}
