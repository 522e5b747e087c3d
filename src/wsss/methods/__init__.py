"""Method registry: ``method.name`` in a config -> the method's LightningModule.

Each method lives in its own folder (``model.py`` plain nn.Module + losses, ``module.py``
LightningModule, ``README.md`` with equations and deviations). Entries are imported
lazily so a method's optional dependencies never slow down the others.
"""

from __future__ import annotations

import importlib

__all__ = ["METHODS", "get_method", "register"]

# name -> "module.path:ClassName"
METHODS: dict[str, str] = {
    "cam": "wsss.methods.cam.module:CAMModule",
    # P-NOC family (David et al.): Puzzle-CAM, OC-CSE, P-OC, P-NOC
    "puzzle": "wsss.methods.pnoc.module:PuzzleModule",
    "occse": "wsss.methods.pnoc.module:OCCSEModule",
    "poc": "wsss.methods.pnoc.module:POCModule",
    "pnoc": "wsss.methods.pnoc.module:PNOCModule",
    # GSLM (general-specific learning, on top of any CAM generator)
    "gslm": "wsss.methods.gslm.module:GSLMModule",
    "cpn": "wsss.methods.cpn.module:CPNModule",  # CPN (Zhang et al., ICCV 2021): complementary patches + PCM/PRCM
}


def register(name: str, target: str) -> None:
    """Register a method under ``name``; ``target`` is ``"package.module:Class"``."""
    METHODS[name] = target


def get_method(name: str) -> type:
    """The LightningModule class of method ``name``.

    Raises:
        ValueError: unknown method name (the message lists the known ones).
    """
    if name not in METHODS:
        raise ValueError(f"unknown method '{name}'; known methods: {sorted(METHODS)}")
    mod_name, cls_name = METHODS[name].split(":")
    return getattr(importlib.import_module(mod_name), cls_name)
