"""wsss.refine: dense CRF and pseudo masks (CRF-refined seeds, confident labels).

pydensecrf2 is optional (``pip install "wsss[crf]"``) and imported only when a CRF runs.
"""

from wsss.refine.crf import CRFParams, crf_from_labels, crf_from_probs
from wsss.refine.pseudo import CONFLICT_RULES, confident_labels, dense_pseudo_mask, make_pseudo_masks

__all__ = [
    "CRFParams",
    "crf_from_labels",
    "crf_from_probs",
    "CONFLICT_RULES",
    "dense_pseudo_mask",
    "confident_labels",
    "make_pseudo_masks",
]
