"""GSLM: General-Specific Learning Mechanism (Mai et al.), on any CAM generator.

- :mod:`wsss.methods.gslm.model`: ``relu_k`` (Eq. 4), ``activation_loss`` (Eq. 5, the paper's
  form), ``authors_activation_loss`` (the authors' running form), ``BoundedCAMGenerator``,
  ``GSLMParams``.
- :mod:`wsss.methods.gslm.module`: ``GSLMModule`` (the SLM step, Eq. 6; ``recipe = "rounds"``).

The rounds themselves (GLM, Coarse Generation, SLM rounds) are the recipe
``wsss.recipes.rounds.run_rounds``, which ``wsss pipeline`` runs for this method.
"""

from wsss.methods.gslm.model import (
    GSLMParams,
    BoundedCAMGenerator,
    activation_loss,
    authors_activation_loss,
    confidence_targets,
    relu_k,
)
from wsss.methods.gslm.module import GSLMModule, gslm_params

__all__ = [
    "GSLMParams",
    "GSLMModule",
    "BoundedCAMGenerator",
    "activation_loss",
    "authors_activation_loss",
    "confidence_targets",
    "gslm_params",
    "relu_k",
]
