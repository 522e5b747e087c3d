"""CPN: Complementary Patch Network (Zhang, Gu, Zhang & Dai, ICCV 2021).

- :mod:`wsss.methods.cpn.model`: plain torch - patch masks (grid and superpixels, vectorised),
  the CP Pair, L_cls / L_tcp / L_cpcr with OHEM (Eq. 13-17), PCM (Eq. 9-10), PRCM (Eq. 11-12),
  :class:`CPNNet`, :class:`CPNParams`.
- :mod:`wsss.methods.cpn.module`: :class:`CPNModule`, registered as ``cpn``.
- Superpixels come from :class:`wsss.data.superpixels.SuperpixelSource` (cached SLIC maps).
"""

from wsss.methods.cpn.model import CPNNet, CPNParams
from wsss.methods.cpn.module import CPNModule, cpn_params

__all__ = ["CPNNet", "CPNParams", "CPNModule", "cpn_params"]
