"""wsss: weakly supervised semantic segmentation from image-level labels.

One package, one CLI (``wsss``) and one evaluation protocol for CAM, GSLM, ACR, CPN,
P-NOC and SSC. See the README for the pipeline and ``wsss --help`` for the stages.
"""

__version__ = "0.1.0"
