"""PyTorch backends of the multi-positive cross-entropy: dense (the reference) and chunked.

Both compute, for rows x_i against columns y_j with a scalar scale c (1/tau, or the CLIP
logit scale):

    s_ij = c * x_i . y_j            (j = self_offset + i excluded when self_offset is set)
    P_i  = {j : col_labels_j == row_labels_i, j not excluded},  k_i = |P_i|
    l_i  = logsumexp_j s_ij - mean_{j in P_i} s_ij   if k_i > 0, else 0
    loss = mean_i l_i

``dense`` materialises the [n, M] logits like the StableRep reference implementation.
``chunked`` implements the two kernels of ``multipos_fused`` with row chunks of torch
matmuls, so memory is O(chunk * M): only lse [n] is saved, the positive term comes from
per-caption column sums, and the backward recomputes each chunk's similarities.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from stablerep_fast.ops.distributed import gathered_columns_loss
from stablerep_fast.ops.multipos_fused import accumulation_dtype, fused_multipos_ce

# Elements of one [chunk, M] similarity block in the chunked backend: 4M fp32 = 16 MiB.
CHUNK_ELEMENTS = 1 << 22
# The "torch" backend switches from dense to chunked above this many logits (n * M):
# 2048 x 2048 logits keep the dense path's ~10 N^2 temporaries under ~200 MB.
DENSE_MAX_ELEMENTS = 1 << 22


def multipos_ce_dense(
    rows: torch.Tensor,
    cols: torch.Tensor,
    row_labels: torch.Tensor,
    col_labels: torch.Tensor,
    scale: torch.Tensor | float,
    self_offset: int | None,
    group=None,
) -> torch.Tensor:
    """Reference semantics with [n, M] masks and logits; differentiable by autograd. With a
    process ``group`` the columns of every rank are gathered differentiably, as the reference
    does (see ``distributed.gathered_columns_loss``)."""
    if group is not None:
        return gathered_columns_loss(multipos_ce_dense, rows, cols, row_labels, col_labels, scale, self_offset, group)
    n, acc = rows.shape[0], accumulation_dtype(rows.dtype)
    rows, cols = rows.to(acc), cols.to(acc)
    logits = scale * (rows @ cols.T)
    positive = row_labels[:, None] == col_labels[None, :]
    if self_offset is not None:
        is_self = torch.zeros_like(positive)
        i = torch.arange(n, device=rows.device)
        is_self[i, i + self_offset] = True
        logits = logits.masked_fill(is_self, float("-inf"))
        positive &= ~is_self
    k = positive.sum(1)
    has_positive = k > 0
    # Rows without positives contribute 0; blank their logits so no -inf/NaN reaches autograd.
    lse = torch.logsumexp(logits.masked_fill(~has_positive[:, None], 0.0), dim=1)
    positive_mean = logits.masked_fill(~positive, 0.0).sum(1) / k.clamp(min=1)
    return torch.where(has_positive, lse - positive_mean, 0.0).mean()


def _scaled_logits(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor, diag: int | None, r0: int) -> torch.Tensor:
    """scale * a @ b.T for rows r0.. of a problem, with pair (i, i + diag) set to -inf."""
    logits = scale * (a @ b.T)
    if diag is not None:
        i = torch.arange(a.shape[0], device=a.device)
        j = i + (r0 + diag)
        inside = (j >= 0) & (j < b.shape[0])
        logits[i[inside], j[inside]] = float("-inf")
    return logits


@dataclass(frozen=True)
class ChunkedKernels:
    """The two fused kernels (see multipos_fused) as loops over row chunks of torch matmuls."""

    chunk_rows: int | None = None  # None: CHUNK_ELEMENTS // nb rows per chunk

    def _chunks(self, a: torch.Tensor, b: torch.Tensor):
        rows = self.chunk_rows or max(1, CHUNK_ELEMENTS // max(b.shape[0], 1))
        acc = accumulation_dtype(a.dtype)
        a, b = a.to(acc), b.to(acc)
        for r0 in range(0, a.shape[0], rows):
            yield r0, slice(r0, r0 + rows), a, b

    def lse(self, a, b, scale, diag):
        out = torch.empty(a.shape[0], dtype=accumulation_dtype(a.dtype), device=a.device)
        for r0, rs, a, b in self._chunks(a, b):
            out[rs] = torch.logsumexp(_scaled_logits(a[rs], b, scale, diag, r0), dim=1)
        return out

    def weighted_sum(self, a, b, u, lse_a, v, lse_b, scale, diag):
        out = torch.empty(a.shape, dtype=accumulation_dtype(a.dtype), device=a.device)
        for r0, rs, a, b in self._chunks(a, b):
            logits = _scaled_logits(a[rs], b, scale, diag, r0)
            p = 0.0
            if u is not None:
                p = u[rs, None] * torch.exp(logits - lse_a[rs, None])
            if v is not None:
                p = p + v[None, :] * torch.exp(logits - lse_b[None, :])
            out[rs] = p @ b
        return out


def multipos_ce_chunked(
    rows: torch.Tensor,
    cols: torch.Tensor,
    row_labels: torch.Tensor,
    col_labels: torch.Tensor,
    scale: torch.Tensor | float,
    self_offset: int | None,
    group=None,
    chunk_rows: int | None = None,
) -> torch.Tensor:
    """Memory-bounded version of :func:`multipos_ce_dense` (same value and gradients)."""
    kernels = ChunkedKernels(chunk_rows)
    return fused_multipos_ce(kernels, rows, cols, row_labels, col_labels, scale, self_offset, group)


def multipos_ce_torch(rows, cols, row_labels, col_labels, scale, self_offset, group=None) -> torch.Tensor:
    """Dense for small problems, chunked once the [n, M] logits would be large."""
    world = 1 if group is None else torch.distributed.get_world_size(group)
    if rows.shape[0] * cols.shape[0] * world <= DENSE_MAX_ELEMENTS:
        return multipos_ce_dense(rows, cols, row_labels, col_labels, scale, self_offset, group)
    return multipos_ce_chunked(rows, cols, row_labels, col_labels, scale, self_offset, group)
