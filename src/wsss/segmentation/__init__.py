"""The segmentation network: DeepLabV3+ trained on pseudo masks, its evaluation and ``wsss predict``.

- :mod:`wsss.segmentation.model`: :func:`build_deeplabv3plus` (smp DeepLabV3+, timm encoder,
  offline ImageNet weights) and :class:`SegmentationNet` (any input size);
- :mod:`wsss.segmentation.module`: :class:`SegParams` (the ``segmentation:`` config section) and
  :class:`SegmentationModule` (cross-entropy ignoring 255, SGD + poly);
- :mod:`wsss.segmentation.infer`: :func:`predict_probs` (multi-scale + flip),
  :func:`crf_postprocess` (DeepLab CRF), :func:`evaluate_segmentation` (one variant) and
  :func:`evaluate_segmentation_variants` (several in one pass);
- :mod:`wsss.segmentation.predict`: :func:`save_segmentation_model`,
  :func:`load_segmentation_model`, :func:`predict_images` (``wsss predict``).

See ``README.md`` in this folder for the recipe, its sources and deviations.
"""

from wsss.segmentation.infer import (
    DEEPLAB_CRF,
    crf_postprocess,
    evaluate_segmentation,
    evaluate_segmentation_variants,
    predict_probs,
)
from wsss.segmentation.model import SegmentationNet, build_deeplabv3plus
from wsss.segmentation.module import SegmentationModule, SegParams
from wsss.segmentation.predict import (
    load_segmentation_model,
    predict_images,
    save_segmentation_model,
    segmentation_model_paths,
)

__all__ = [
    "DEEPLAB_CRF",
    "SegParams",
    "SegmentationModule",
    "SegmentationNet",
    "build_deeplabv3plus",
    "crf_postprocess",
    "evaluate_segmentation",
    "evaluate_segmentation_variants",
    "load_segmentation_model",
    "predict_images",
    "predict_probs",
    "save_segmentation_model",
    "segmentation_model_paths",
]
