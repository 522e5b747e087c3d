"""Multi-stage recipes composed from the shared stages (:mod:`wsss.stages`).

A method's LightningModule class names its recipe (``recipe = "rounds"``); ``wsss.pipeline``
looks the name up in its ``RECIPES`` table and calls the function with the config. Recipes
import the stages, the data layer and the methods' plain building blocks, never
``wsss.pipeline`` or the CLI.

- :mod:`wsss.recipes.rounds`: ``run_rounds(cfg) -> dict``, GSLM's GLM + SLM rounds.

Names are imported lazily (``from wsss.recipes import run_rounds`` loads the stages only then).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"run_rounds": "rounds", "RoundsParams": "rounds", "rounds_params": "rounds"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'wsss.recipes' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"wsss.recipes.{mod}"), name)
    globals()[name] = value
    return value
