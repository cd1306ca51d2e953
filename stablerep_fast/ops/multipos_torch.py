"""PyTorch backends of the multi-positive cross-entropy: dense (the reference) and chunked.

Both compute, for rows x_i against columns y_j with a scalar scale c (1/tau, or the CLIP
logit scale):

    s_ij = c * x_i . y_j            (j = self_offset + i excluded when self_offset is set)
    P_i  = {j : col_labels_j == row_labels_i, j not excluded},  k_i = |P_i|
    l_i  = logsumexp_j s_ij - mean_{j in P_i} s_ij   if k_i > 0, else 0
    loss = mean_i l_i

``dense`` materialises the [n, M] logits like the StableRep reference implementation.
``chunked`` walks row chunks with a custom autograd Function so memory is O(chunk * M):
only lse [n] is saved, the positive term comes from per-caption column sums, and the
backward recomputes each chunk's similarities once.
"""

from __future__ import annotations

import torch

# Elements of one [chunk, M] similarity block in the chunked backend: 4M fp32 = 16 MiB.
CHUNK_ELEMENTS = 1 << 22
# The "torch" backend switches from dense to chunked above this many logits (n * M):
# 2048 x 2048 logits keep the dense path's ~10 N^2 temporaries under ~200 MB.
DENSE_MAX_ELEMENTS = 1 << 22


def _self_index(n: int, self_offset: int, device: torch.device) -> torch.Tensor:
    return torch.arange(n, device=device) + self_offset


def multipos_ce_dense(
    rows: torch.Tensor,
    cols: torch.Tensor,
    row_labels: torch.Tensor,
    col_labels: torch.Tensor,
    scale: torch.Tensor | float,
    self_offset: int | None,
) -> torch.Tensor:
    """Reference semantics with [n, M] masks and logits; differentiable by autograd."""
    n = rows.shape[0]
    logits = scale * (rows @ cols.T)
    positive = row_labels[:, None] == col_labels[None, :]
    if self_offset is not None:
        is_self = torch.zeros_like(positive)
        is_self[torch.arange(n, device=rows.device), _self_index(n, self_offset, rows.device)] = True
        logits = logits.masked_fill(is_self, float("-inf"))
        positive &= ~is_self
    k = positive.sum(1)
    has_positive = k > 0
    # Rows without positives contribute 0; blank their logits so no -inf/NaN reaches autograd.
    lse = torch.logsumexp(logits.masked_fill(~has_positive[:, None], 0.0), dim=1)
    positive_mean = logits.masked_fill(~positive, 0.0).sum(1) / k.clamp(min=1)
    return torch.where(has_positive, lse - positive_mean, 0.0).mean()


def group_ids(row_labels: torch.Tensor, col_labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Dense caption ids 0..G-1 shared by rows and columns: (row_ids, col_ids, G)."""
    uniq, inverse = torch.unique(torch.cat([row_labels, col_labels]), return_inverse=True)
    n = row_labels.shape[0]
    return inverse[:n], inverse[n:], uniq.shape[0]


class _ChunkedMultiPosCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, rows, cols, row_ids, col_ids, num_groups, scale, self_offset, chunk):
        n, M = rows.shape[0], cols.shape[0]
        col_sums = torch.zeros(num_groups, cols.shape[1], dtype=cols.dtype, device=cols.device)
        col_sums.index_add_(0, col_ids, cols)
        k = torch.bincount(col_ids, minlength=num_groups)[row_ids]
        # Positive sum per row: x_i . (sum of its caption's columns, minus its own column).
        positive_cols = col_sums[row_ids]
        if self_offset is not None:
            k = k - 1
            positive_cols = positive_cols - cols[self_offset : self_offset + n]
        positive_dot = (rows * positive_cols).sum(1)  # unscaled
        lse = torch.empty(n, dtype=rows.dtype, device=rows.device)
        for r0 in range(0, n, chunk):
            logits = _scaled_logits(rows[r0 : r0 + chunk] @ cols.T, scale, self_offset, r0)
            lse[r0 : r0 + chunk] = torch.logsumexp(logits, dim=1)
        has_positive = k > 0
        k_safe = k.clamp(min=1).to(rows.dtype)
        per_row = torch.where(has_positive, lse - scale * positive_dot / k_safe, 0.0)
        ctx.save_for_backward(rows, cols, row_ids, col_ids, scale, lse, k_safe, has_positive, positive_dot)
        ctx.num_groups, ctx.self_offset, ctx.chunk = num_groups, self_offset, chunk
        return per_row.mean()

    @staticmethod
    def backward(ctx, grad_loss):
        rows, cols, row_ids, col_ids, scale, lse, k_safe, has_positive, positive_dot = ctx.saved_tensors
        self_offset, chunk = ctx.self_offset, ctx.chunk
        n = rows.shape[0]
        # dL/dl_i, zero for rows without positives; +inf lse turns their softmax row into 0.
        g = torch.where(has_positive, grad_loss / n, 0.0).to(rows.dtype)
        lse_safe = lse.masked_fill(~has_positive, float("inf"))
        w = g / k_safe  # weight of each positive pair of row i
        need_scale = ctx.needs_input_grad[5]

        grad_rows = torch.empty_like(rows)
        grad_cols = torch.zeros_like(cols)
        dscale = torch.zeros((), dtype=rows.dtype, device=rows.device)
        for r0 in range(0, n, chunk):
            x = rows[r0 : r0 + chunk]
            dots = x @ cols.T
            logits = _scaled_logits(dots, scale, self_offset, r0)
            a = torch.exp(logits - lse_safe[r0 : r0 + chunk, None]) * g[r0 : r0 + chunk, None]
            grad_rows[r0 : r0 + chunk] = a @ cols
            grad_cols.addmm_(a.T, x)
            if need_scale:
                dscale += (a * dots).sum()

        # Positive pairs: -w_i * y_j for every j in P_i (rows) and -w_i * x_i (columns).
        col_sums = torch.zeros(ctx.num_groups, cols.shape[1], dtype=cols.dtype, device=cols.device)
        col_sums.index_add_(0, col_ids, cols)
        weighted_row_sums = torch.zeros_like(col_sums).index_add_(0, row_ids, w[:, None] * rows)
        positive_cols = col_sums[row_ids]
        grad_cols -= weighted_row_sums[col_ids]
        if self_offset is not None:
            positive_cols = positive_cols - cols[self_offset : self_offset + n]
            grad_cols[self_offset : self_offset + n] += w[:, None] * rows
        grad_rows -= w[:, None] * positive_cols

        grad_scale = None
        if need_scale:
            grad_scale = (dscale - (w * positive_dot).sum()).to(scale.dtype).reshape(scale.shape)
        return grad_rows * scale, grad_cols * scale, None, None, None, grad_scale, None, None


def _scaled_logits(dots: torch.Tensor, scale, self_offset: int | None, r0: int) -> torch.Tensor:
    """scale * dots for rows r0.., with each row's own column set to -inf."""
    logits = scale * dots
    if self_offset is not None:
        idx = torch.arange(dots.shape[0], device=dots.device)
        logits[idx, idx + self_offset + r0] = float("-inf")
    return logits


def multipos_ce_chunked(
    rows: torch.Tensor,
    cols: torch.Tensor,
    row_labels: torch.Tensor,
    col_labels: torch.Tensor,
    scale: torch.Tensor | float,
    self_offset: int | None,
    chunk: int | None = None,
) -> torch.Tensor:
    """Memory-bounded version of :func:`multipos_ce_dense` (same value and gradients)."""
    if chunk is None:
        chunk = max(1, min(rows.shape[0], CHUNK_ELEMENTS // max(cols.shape[0], 1)))
    if not isinstance(scale, torch.Tensor):
        scale = torch.tensor(float(scale), dtype=rows.dtype, device=rows.device)
    row_ids, col_ids, num_groups = group_ids(row_labels, col_labels)
    return _ChunkedMultiPosCE.apply(
        rows, cols, row_ids, col_ids, num_groups, scale.to(rows.dtype), self_offset, chunk
    )


def multipos_ce_torch(rows, cols, row_labels, col_labels, scale, self_offset) -> torch.Tensor:
    """Dense for small problems, chunked once the [n, M] logits would be large."""
    if rows.shape[0] * cols.shape[0] <= DENSE_MAX_ELEMENTS:
        return multipos_ce_dense(rows, cols, row_labels, col_labels, scale, self_offset)
    return multipos_ce_chunked(rows, cols, row_labels, col_labels, scale, self_offset)
