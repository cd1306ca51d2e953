"""Gathering loss inputs across ranks for the distributed multi-positive losses.

Rank r's loss is the mean over its own rows against the columns of every rank (METHOD.md).
Here the columns are gathered with ``torch.distributed.nn.functional.all_gather``, whose
backward sums every rank's column gradients back onto the owner, as the StableRep reference
does; local batch sizes may differ between ranks (rows are padded for the collective).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn


def active_group(process_group=None):
    """The process group to gather over, or None when the loss is purely local."""
    if process_group is not None:
        return process_group if dist.get_world_size(process_group) > 1 else None
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist.group.WORLD
    return None


def gather_rows(x: torch.Tensor, group, sizes: list[int] | None = None) -> tuple[torch.Tensor, list[int]]:
    """Concatenate every rank's ``x`` along dim 0, differentiably when ``x`` needs a gradient.

    Returns the gathered tensor and the per-rank row counts (pass ``sizes`` when known to
    skip the collective that finds them).
    """
    world = dist.get_world_size(group)
    if sizes is None:
        count = torch.tensor([x.shape[0]], dtype=torch.int64, device=x.device)
        counts = [torch.zeros_like(count) for _ in range(world)]
        dist.all_gather(counts, count, group=group)
        sizes = [int(c.item()) for c in counts]
    padded = x
    if x.shape[0] < max(sizes):
        padded = torch.cat([x, x.new_zeros((max(sizes) - x.shape[0], *x.shape[1:]))])
    if x.requires_grad:
        parts = dist_fn.all_gather(padded.contiguous(), group=group)
    else:
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded.contiguous(), group=group)
    return torch.cat([p[:s] for p, s in zip(parts, sizes)]), sizes


def row_offset(sizes: list[int], group) -> int:
    """Index of this rank's first row among the gathered rows."""
    return sum(sizes[: dist.get_rank(group)])
