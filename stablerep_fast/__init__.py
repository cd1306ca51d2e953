"""stablerep_fast: learning visual representations from synthetic images, fast.

Public API (everything else is reachable through the stage subpackages):

    multipos_con_loss, multipos_clip_loss   the StableRep / StableRep+ losses
    MultiPosConLoss, MultiPosConLossMM      drop-in modules (reference calling convention)
    available_backends                      which loss backends run on a device and dtype
"""

from stablerep_fast.ops import (
    MultiPosConLoss,
    MultiPosConLossMM,
    available_backends,
    multipos_clip_loss,
    multipos_con_loss,
)

__version__ = "0.1.0"

__all__ = [
    "MultiPosConLoss",
    "MultiPosConLossMM",
    "available_backends",
    "multipos_clip_loss",
    "multipos_con_loss",
    "__version__",
]
