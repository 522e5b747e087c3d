"""GSLM: General-Specific Learning Mechanism (Mai et al.), multi-round, on any CAM generator.

- :mod:`wsss.methods.gslm.model`: ``relu_k`` (Eq. 4), ``activation_loss`` (Eq. 5),
  ``GSLMParams``.
- :mod:`wsss.methods.gslm.module`: ``GSLMModule`` (SLM step, Eq. 6) and the round driver
  ``run_gslm`` used by ``wsss pipeline`` (``GSLMModule.run_pipeline``).
"""

from wsss.methods.gslm.model import GSLMParams, activation_loss, confidence_targets, relu_k
from wsss.methods.gslm.module import GSLMModule, build_confidence, confidence_cam, run_gslm

__all__ = [
    "GSLMParams",
    "GSLMModule",
    "activation_loss",
    "confidence_targets",
    "relu_k",
    "build_confidence",
    "confidence_cam",
    "run_gslm",
]
