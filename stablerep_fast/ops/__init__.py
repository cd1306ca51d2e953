"""The multi-positive losses and their backends."""

from stablerep_fast.ops.dispatch import available_backends
from stablerep_fast.ops.multipos import (
    MultiPosConLoss,
    MultiPosConLossMM,
    multipos_clip_loss,
    multipos_con_loss,
)

__all__ = [
    "MultiPosConLoss",
    "MultiPosConLossMM",
    "available_backends",
    "multipos_clip_loss",
    "multipos_con_loss",
]
