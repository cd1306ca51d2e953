"""PyTorch backends of the multi-positive cross-entropy: dense (the reference) and chunked.

Both compute ``multipos_fused.MultiPosCE``'s loss. ``REFERENCE`` materialises the [n, M]
logits and masks like the StableRep reference implementation and lets autograd
differentiate them. ``CHUNKED`` implements the two kernels of ``multipos_fused`` with row
chunks of torch matmuls, so memory is O(chunk * M): only lse [n] is saved, the positive term
comes from per-caption column sums, and the backward recomputes each chunk's similarities.
"""

from __future__ import annotations

import torch

from stablerep_fast.ops.backend import Backend
from stablerep_fast.ops.distributed import gathered_columns_loss
from stablerep_fast.ops.multipos_fused import accumulation_dtype

# Elements of one [chunk, M] similarity block in the chunked backend: 4M fp32 = 16 MiB.
CHUNK_ELEMENTS = 1 << 22


def dense_multipos_ce(rows, cols, row_labels, col_labels, scale, diag, group, precision) -> torch.Tensor:
    """``Backend.loss`` (see ``multipos_fused.MultiPosCE``) with [n, M] masks and logits,
    differentiated by autograd; exact, ``precision`` is not used. With a process ``group`` the
    columns of every rank are gathered differentiably, as the reference does (see
    ``distributed.gathered_columns_loss``)."""
    if cols is None:
        cols, col_labels = rows, row_labels
    if group is not None:
        return gathered_columns_loss(_dense_loss, rows, cols, row_labels, col_labels, scale, diag, group)
    return _dense_loss(rows, cols, row_labels, col_labels, scale, diag)


def _dense_loss(rows, cols, row_labels, col_labels, scale, diag) -> torch.Tensor:
    """The loss of this process's rows against ``cols``, with [n, M] logits."""
    n, acc = rows.shape[0], accumulation_dtype(rows.dtype)
    rows, cols = rows.to(acc), cols.to(acc)
    logits = scale * (rows @ cols.T)
    positive = row_labels[:, None] == col_labels[None, :]
    if diag is not None:
        is_self = torch.zeros_like(positive)
        i = torch.arange(n, device=rows.device)
        is_self[i, i + diag] = True
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


def _chunks(a: torch.Tensor, b: torch.Tensor):
    """(first row, row slice, a, b) per chunk of CHUNK_ELEMENTS logits, in the accumulation dtype."""
    rows = max(1, CHUNK_ELEMENTS // max(b.shape[0], 1))
    acc = accumulation_dtype(a.dtype)
    a, b = a.to(acc), b.to(acc)
    for r0 in range(0, a.shape[0], rows):
        yield r0, slice(r0, r0 + rows), a, b


def chunked_lse(a, b, scale, diag, precision):
    """The lse kernel (see multipos_fused) over row chunks; exact, ``precision`` is not used."""
    out = torch.empty(a.shape[0], dtype=accumulation_dtype(a.dtype), device=a.device)
    for r0, rs, a, b in _chunks(a, b):
        out[rs] = torch.logsumexp(_scaled_logits(a[rs], b, scale, diag, r0), dim=1)
    return out


def chunked_weighted_sum(a, b, u, lse_a, v, lse_b, scale, diag, precision):
    """The weighted_sum kernel (see multipos_fused) over row chunks; exact."""
    out = torch.empty(a.shape, dtype=accumulation_dtype(a.dtype), device=a.device)
    for r0, rs, a, b in _chunks(a, b):
        logits = _scaled_logits(a[rs], b, scale, diag, r0)
        p = 0.0
        if u is not None:
            p = u[rs, None] * torch.exp(logits - lse_a[rs, None])
        if v is not None:
            p = p + v[None, :] * torch.exp(logits - lse_b[None, :])
        out[rs] = p @ b
    return out


REFERENCE = Backend("reference", "PyTorch, dense [N, N] logits (the reference)", None, None, dense=dense_multipos_ce)
CHUNKED = Backend("chunked", "PyTorch, row chunks, O(N * chunk) memory", chunked_lse, chunked_weighted_sum)
