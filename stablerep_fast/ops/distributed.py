"""Gathering loss inputs across ranks for the distributed multi-positive losses.

Rank r's loss is the mean over its own rows against the columns of every rank (docs/method.md),
and the feature gradient on each rank is W times that of the global mean loss, so DDP's
average over ranks trains on the global mean (with equal local sizes this is exactly the
gradient of rank r's loss summed over ranks, the StableRep reference's behaviour).

The fused backends gather without autograd (``multipos_fused``); the dense reference uses
``gathered_columns_loss``: ``torch.distributed.nn.functional.all_gather``, whose backward
sums every rank's column gradients onto the owner. Local sizes may differ between ranks
(rows are padded for the collectives).
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


class _ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, factor):
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.factor, None


def gathered_columns_loss(local_loss, rows, cols, row_labels, col_labels, scale, diag, group) -> torch.Tensor:
    """``local_loss`` (rows against columns) with every rank's columns, gathered differentiably.

    The value is the mean over this rank's rows; its gradient is scaled by W * n_r / N so the
    sum over ranks of what flows back is W times the gradient of the global mean.
    """
    all_cols, col_sizes = gather_rows(cols, group)
    all_col_labels, _ = gather_rows(col_labels, group, col_sizes)
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    offset = None if diag is None else diag + sum(col_sizes[:rank])
    row_sizes = col_sizes if rows is cols else gather_rows(row_labels, group)[1]
    loss = local_loss(rows, all_cols, row_labels, all_col_labels, scale, offset)
    return _ScaleGrad.apply(loss, world * rows.shape[0] / sum(row_sizes))
