"""wsss.evaluation: confusion matrices, segmentation scores, seed and pseudo-mask evaluation.

One confusion matrix per split, void (255) ignored, mIoU over background + foreground
(IRN protocol); the background threshold is always recorded as fixed or swept.
"""

from wsss.evaluation.metrics import ConfusionMatrix, confusion_matrix, segmentation_scores
from wsss.evaluation.seeds import DEFAULT_SWEEP, best_threshold, cam_to_seed, evaluate_masks, evaluate_seeds

__all__ = [
    "ConfusionMatrix",
    "confusion_matrix",
    "segmentation_scores",
    "DEFAULT_SWEEP",
    "cam_to_seed",
    "evaluate_seeds",
    "evaluate_masks",
    "best_threshold",
]
