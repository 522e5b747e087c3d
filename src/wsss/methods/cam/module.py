"""CAM baseline training: backbone + bias-free 1x1 classifier, GAP, multilabel soft-margin loss.

Everything is the shared schedule of :class:`wsss.methods.base.WSSSModule` (SGD + poly,
classifier lr x10, frozen stem/BN); the baseline adds nothing, which is the point: it is
the reference every method is compared to and the template of a method folder.
"""

from __future__ import annotations

from wsss.methods.base import WSSSModule


class CAMModule(WSSSModule):
    """The CAM baseline; ``net`` is a :class:`wsss.methods.base.CAMNet`."""
