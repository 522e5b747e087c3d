"""The P-NOC family (David, Pedrini & Dias): Puzzle-CAM, OC-CSE, P-OC and P-NOC.

``model.py`` holds the plain-torch pieces (tiling, erasure, ramps, losses, hyperparameters);
``module.py`` the LightningModules registered as ``puzzle``, ``occse``, ``poc`` and ``pnoc``.
"""

from wsss.methods.pnoc.module import OCCSEModule, PNOCModule, POCModule, PuzzleModule

__all__ = ["PuzzleModule", "OCCSEModule", "POCModule", "PNOCModule"]
