"""Static batches: a smaller batch (the last of a shard) padded to the shape a compiled graph or
engine was built for, so one graph serves every call."""

from __future__ import annotations

import torch


def pad_batch(x: torch.Tensor, batch: int) -> torch.Tensor:
    """Rows of ``x`` followed by copies of its first row up to ``batch`` rows (a static shape)."""
    if x.shape[0] == batch:
        return x
    return torch.cat([x, x[:1].expand(batch - x.shape[0], *x.shape[1:])])
