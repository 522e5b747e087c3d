"""The CAM baseline (Zhou et al. 2016, trained as in IRN, Ahn et al. 2019)."""

from wsss.methods.cam.module import CAMModule

__all__ = ["CAMModule"]
