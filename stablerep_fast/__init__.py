"""stablerep_fast: learning visual representations from synthetic images, fast.

Public API (everything else is reachable through the stage subpackages):

    multipos_con_loss, multipos_clip_loss   the StableRep / StableRep+ losses
    MultiPosConLoss, MultiPosConLossMM      drop-in modules (reference calling convention)
    available_backends                      which loss backends run on a device and dtype
    MissingExtraError                       a stage imported without its extra (one-line message)

The bare install is the loss alone; stages (generate, data, train, ...) need their extras.
"""

from stablerep_fast._deps import MissingExtraError

from stablerep_fast.ops import (
    MultiPosConLoss,
    MultiPosConLossMM,
    available_backends,
    multipos_clip_loss,
    multipos_con_loss,
)

__version__ = "0.1.0"

__all__ = [
    "MissingExtraError",
    "MultiPosConLoss",
    "MultiPosConLossMM",
    "available_backends",
    "multipos_clip_loss",
    "multipos_con_loss",
    "__version__",
]
