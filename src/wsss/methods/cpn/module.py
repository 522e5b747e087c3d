"""CPN's LightningModule: the triplet training step (Zhang et al., ICCV 2021, Eq. 13-17).

A leaf like every method: it imports the shared base, its own :mod:`wsss.methods.cpn.model` and
the data-layer :class:`~wsss.data.superpixels.SuperpixelSource`; nothing from the stages, the
pipeline, training or inference. Every back-propagated loss is the value of
:func:`wsss.methods.cpn.model.cpn_loss` on the batch's tensors; this file only draws the patch
masks, builds the CP Pair and runs the shared network once over the three branches.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from wsss.config import Config, ConfigError
from wsss.methods.base import WSSSModule, build_backbone, method_params
from wsss.methods.cpn.model import (
    CPNNet,
    CPNParams,
    PatchMasks,
    branch_weights,
    complementary_masks,
    cp_pair,
    cpn_loss,
    grid_patch_ids,
    scaled_grid_sizes,
)

__all__ = ["CPNModule", "cpn_params", "SUPERPIXELS"]

#: batch key of the superpixel label maps (the extra input made by :meth:`CPNModule.extra_sources`)
SUPERPIXELS = "superpixels"


def cpn_params(cfg: Config) -> CPNParams:
    """:class:`CPNParams` from ``cfg.method``.

    Raises:
        ConfigError (a ValueError): an unknown key, or ``<source>: method 'cpn': method.<key> must be ...``.
    """
    try:
        return method_params(cfg, CPNParams, "cpn")
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{cfg.source or 'config'}: method 'cpn': {exc}") from None


class CPNModule(WSSSModule):
    """Complementary Patch Network training (paper Sec. 3, Eq. 17).

    Each step: patch ids per image (cached SLIC superpixels from ``batch["superpixels"]``, or
    grid cells), complementary masks (:func:`~wsss.methods.cpn.model.complementary_masks`),
    lambda (:func:`~wsss.methods.cpn.model.branch_weights`), the CP Pair (hidden pixels = 0 =
    the normalisation mean), one pass of the shared :class:`~wsss.methods.cpn.model.CPNNet` over
    ``concat(I, I_h, I_hbar)`` (shared weights = one network; see README "Deviations" for the
    BatchNorm consequence), then :func:`~wsss.methods.cpn.model.cpn_loss`. Masks are drawn on
    the CPU from a generator seeded by ``seed`` and the step index (a resumed run draws what an
    uninterrupted one would).

    Declared for the frame:

    - :meth:`required_extras`: ``("superpixels",)`` for ``method.patches: superpixels``, ``()`` for
      the grid; the frame's check (``wsss.training.check_extra_inputs``) calls it before training.
      The instance attribute ``extra_inputs`` holds the same names, and a superpixel step without
      ``batch["superpixels"]`` raises RuntimeError.
    - :meth:`extra_sources`: the frame's hook (``wsss.stages.method_extras``) builds the
      :class:`~wsss.data.superpixels.SuperpixelSource` of the training split and computes the
      missing maps before training (rank 0 first); nothing for the grid strategy.
    - ``params_cls = CPNParams``.

    Raises:
        ConfigError (construction): invalid ``method`` keys or values.
        RuntimeError (training step): superpixel strategy without ``batch["superpixels"]``.
    """

    extra_inputs: tuple[str, ...] = ()
    params_cls = CPNParams

    def __init__(self, cfg: Config, num_classes: int) -> None:
        super().__init__(cfg, num_classes)
        self.extra_inputs = self.required_extras(cfg)  # one rule: what the frame's check asks
        self.grid_sizes = scaled_grid_sizes(self.hp.grid_sizes, cfg.data.crop_size, self.hp.grid_reference_crop)

    def build_net(self) -> CPNNet:
        self.hp = cpn_params(self.cfg)
        m = self.cfg.model
        return CPNNet(build_backbone(m), self.num_classes, classifier_init=m.classifier_init,
                      pcm_stages=self.hp.pcm_stages, prcm_form=self.hp.prcm_form, inference_cam=self.hp.inference_cam)

    # -- the frame's hooks ---------------------------------------------------------------------
    @classmethod
    def required_extras(cls, cfg: Config) -> tuple[str, ...]:
        """Names of the extra training inputs this config needs: ``("superpixels",)`` or ``()``.

        Raises:
            ConfigError: invalid ``method`` values.
        """
        return (SUPERPIXELS,) if cpn_params(cfg).patches == "superpixels" else ()

    @classmethod
    def extra_sources(cls, cfg: Config, layout: Any, run_dir: Path) -> dict[str, Any]:
        """``{"superpixels": SuperpixelSource}`` with every map of ``layout`` computed (cached under
        ``method.superpixel_cache`` or ``<run_dir>/cache/superpixels``); ``{}`` for the grid.

        Raises:
            ConfigError: invalid ``method`` values.
            wsss.data.voc.DatasetError: an image cannot be read.
        """
        hp = cpn_params(cfg)
        if hp.patches != "superpixels":
            return {}
        from wsss.data.superpixels import SlicParams, SuperpixelSource

        cache = Path(hp.superpixel_cache) if hp.superpixel_cache else Path(run_dir) / "cache" / "superpixels"
        src = SuperpixelSource(layout, cache, SlicParams(hp.n_segments, hp.compactness), workers=hp.superpixel_workers)
        stats = src.prepare()
        print(f"[train] superpixels (SLIC S_N={hp.n_segments}): {stats['computed']} computed with {stats['workers']} "
              f"process(es), {stats['cached']} cached, {stats['seconds']:.1f} s -> {stats['folder']}")
        return {SUPERPIXELS: src}

    # -- one step --------------------------------------------------------------------------------
    def step_generator(self) -> torch.Generator:
        """CPU generator for this step's masks, seeded from ``seed`` and the step index."""
        return torch.Generator().manual_seed(int(self.cfg.seed) * 1_000_003 + int(self.global_step))

    def patch_masks(self, batch: dict[str, Any], generator: torch.Generator) -> PatchMasks:
        """The batch's complementary masks (on the images' device).

        Raises:
            RuntimeError: superpixel strategy and no ``batch["superpixels"]``.
        """
        images = batch["image"]
        b, _, h, w = images.shape
        valid = batch.get("valid")
        if valid is None:
            valid = torch.ones((b, h, w), device=images.device)
        if self.hp.patches == "superpixels":
            if SUPERPIXELS not in batch:
                raise RuntimeError(
                    "cpn: the batch has no superpixel maps ('superpixels'); train through 'wsss train' / "
                    "'wsss pipeline' (the method's extra_sources makes them) or set method.patches: grid"
                )
            ids = batch[SUPERPIXELS].long()
            ids = torch.where(valid > 0, ids, torch.full_like(ids, -1))
        else:
            ids = grid_patch_ids(valid, self.grid_sizes, generator)
        return complementary_masks(ids, self.hp.hide_prob, generator, self.hp.sampling)

    def compute_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        images, labels = batch["image"], batch["label"]
        masks = self.patch_masks(batch, self.step_generator())
        lam = branch_weights(masks, self.hp.lambda_mode).to(images.device)
        i_h, i_hbar = cp_pair(images, masks)
        out = self.net.forward_all(torch.cat([images, i_h, i_hbar], dim=0))
        b = images.shape[0]
        branches = tuple({k: v[i * b:(i + 1) * b] for k, v in out.items()} for i in range(3))
        loss, logs = cpn_loss(branches, labels, lam, self.hp)
        logs["lambda"] = lam.mean().detach()
        return loss, logs
