"""The fused multi-positive cross-entropy: one autograd Function over two kernels.

Every memory-bounded backend (chunked torch, C++, Triton, CUDA) supplies the same two
kernels; this module does the rest (positive terms, gradient bookkeeping) once:

    lse(a, b, scale, diag) -> [na] in the accumulation dtype (float64 for float64, else float32)
        lse_i = log sum_j exp(s_ij),  s_ij = scale * a_i . b_j,  j = i + diag excluded
    weighted_sum(a, b, u, lse_a, v, lse_b, scale, diag) -> [na, D] in the accumulation dtype
        out_i = sum_j (u_i exp(s_ij - lse_a_i) + v_j exp(s_ij - lse_b_j)) b_j,  j = i + diag excluded
        (u/lse_a or v/lse_b may be None: that term is absent; lse entries are finite or +inf,
        and +inf makes that row's or column's term vanish)

Neither materialises anything [na, nb]. The positive term needs no quadratic work: with
G_g the sum of the columns of caption g, sum_{j in P_i} a_i . b_j = a_i . (G_{y_i} - own column).

Gradients (g_i = dL/dl_i, zero for rows without positives, w_i = g_i / k_i):
    dL/da_i = scale * [sum_j g_i Q_ij b_j - w_i sum_{j in P_i} b_j]
    dL/db_j = scale * [sum_i g_i Q_ij a_i - sum_{i : j in P_i} w_i a_i]
When rows and columns are the same tensor (single process), s is symmetric and one
weighted_sum with both terms gives the whole gradient: deterministic, no atomics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import torch
import torch.distributed

from stablerep_fast.ops.distributed import gather_rows


class Kernels(Protocol):
    def lse(self, a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor, diag: int | None) -> torch.Tensor: ...

    def weighted_sum(
        self,
        a: torch.Tensor,
        b: torch.Tensor,
        u: torch.Tensor | None,
        lse_a: torch.Tensor | None,
        v: torch.Tensor | None,
        lse_b: torch.Tensor | None,
        scale: torch.Tensor,
        diag: int | None,
    ) -> torch.Tensor: ...


def group_ids(row_labels: torch.Tensor, col_labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Caption ids shared by rows and columns: (row_ids, col_ids, bound), ids < bound.

    Sort-based with static shapes (no torch.unique), so it traces under torch.compile; the
    bound is the number of labels, not the number of distinct captions.
    """
    same = row_labels is col_labels
    labels = row_labels if same else torch.cat([row_labels, col_labels])
    sorted_labels, order = torch.sort(labels)
    starts = torch.ones_like(sorted_labels)
    starts[1:] = sorted_labels[1:] != sorted_labels[:-1]
    ids = torch.empty_like(labels)
    ids[order] = torch.cumsum(starts, 0) - 1
    if same:
        return ids, ids, labels.shape[0]
    n = row_labels.shape[0]
    return ids[:n], ids[n:], labels.shape[0]


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; everything else accumulates in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _group_sums(x: torch.Tensor, ids: torch.Tensor, bound: int, weight: torch.Tensor | None = None) -> torch.Tensor:
    """[bound, D]: the sum (weighted by ``weight``) of the rows of ``x`` with each id."""
    xa = x.to(accumulation_dtype(x.dtype))
    sums = torch.zeros(bound, x.shape[1], dtype=xa.dtype, device=x.device)
    return sums.index_add_(0, ids, xa if weight is None else weight[:, None] * xa)


def _positive_cols(cols, row_ids, col_ids, bound, self_offset, n) -> torch.Tensor:
    """[n, D]: for each row, the sum of its caption's columns other than its own."""
    out = _group_sums(cols, col_ids, bound)[row_ids]
    if self_offset is not None:
        out -= cols[self_offset : self_offset + n]
    return out


@dataclass(frozen=True)
class Ranks:
    """Where this rank's rows and columns sit among every rank's (distributed losses)."""

    group: object
    world: int
    row_sizes: list[int]
    col_sizes: list[int]
    rank: int

    @property
    def row_offset(self) -> int:
        return sum(self.row_sizes[: self.rank])


class _FusedMultiPosCE(torch.autograd.Function):
    # Buffers are updated in place where possible: at N = 8192, D = 256 every [N, D] float32
    # temporary is 8 MiB of a budget of O(N * D).
    @staticmethod
    def forward(ctx, rows, cols, all_cols, row_ids, col_ids, bound, scale, self_offset, kernels, ranks):
        # cols=None: the columns are the rows themselves; all_cols=None: no other rank. (Tensors
        # are never passed twice: torch.compile cannot trace that.) row_ids are this rank's
        # rows' caption ids, col_ids those of every rank's columns (None: same as row_ids).
        symmetric = cols is None
        cols = rows if symmetric else cols
        all_cols = cols if all_cols is None else all_cols
        col_ids = row_ids if col_ids is None else col_ids
        n, acc = rows.shape[0], accumulation_dtype(rows.dtype)
        # Static-shape count per caption (bincount's length depends on the data).
        k = torch.zeros(bound, dtype=torch.int64, device=col_ids.device).index_add_(
            0, col_ids, torch.ones_like(col_ids)
        )[row_ids]
        if self_offset is not None:
            k -= 1
        # Unscaled sum over P_i of a_i . b_j.
        positive_dot = _positive_cols(all_cols, row_ids, col_ids, bound, self_offset, n).mul_(rows).sum(1)
        lse = kernels.lse(rows, all_cols, scale, self_offset)
        has_positive = k > 0
        k_safe = k.clamp(min=1).to(acc)
        per_row = torch.where(has_positive, lse - scale.to(acc) * positive_dot / k_safe, 0.0)
        ctx.save_for_backward(rows, cols, all_cols, row_ids, col_ids, scale, lse, k_safe, has_positive, positive_dot)
        ctx.bound, ctx.self_offset, ctx.symmetric, ctx.kernels, ctx.ranks = bound, self_offset, symmetric, kernels, ranks
        return per_row.mean()

    @staticmethod
    def backward(ctx, grad_loss):
        rows, cols, all_cols, row_ids, col_ids, scale, lse, k_safe, has_positive, positive_dot = ctx.saved_tensors
        self_offset, kernels, ranks, bound = ctx.self_offset, ctx.kernels, ctx.ranks, ctx.bound
        n, acc = rows.shape[0], lse.dtype
        # dL/dl_i. One process: 1/n, the mean's. Several: W / (all ranks' rows), so that DDP's
        # average over ranks follows the gradient of the global mean loss (equal local sizes:
        # the same 1/n).
        weight = 1.0 / n if ranks is None else ranks.world / sum(ranks.row_sizes)
        g = torch.where(has_positive, grad_loss.to(acc) * weight, 0.0)
        lse = lse.masked_fill(~has_positive, float("inf"))  # softmax rows of such anchors vanish
        w = g / k_safe
        scale_acc = scale.to(acc)
        # Every rank's rows' (g, w, lse): the column side of the gradient needs them.
        all_g, all_w, all_lse = g, w, lse
        if ranks is not None:
            gathered, _ = gather_rows(torch.stack([g, w, lse], 1), ranks.group, ranks.row_sizes)
            all_g, all_w, all_lse = gathered.unbind(1)

        # Positive pairs: rows get -w_i sum_{j in P_i} b_j; columns get -sum_{i: j in P_i} w_i a_i.
        rows_positive_grad = _positive_cols(all_cols, row_ids, col_ids, bound, self_offset, n).mul_(w[:, None])
        if ctx.symmetric:
            # Every rank's rows are the columns: s is symmetric, one pass gives the whole gradient.
            grad = kernels.weighted_sum(rows, all_cols, g, lse, all_g, all_lse, scale, self_offset)
            cols_positive_grad = _group_sums(all_cols, col_ids, bound, all_w)[row_ids]
            cols_positive_grad -= w[:, None] * rows
            grad.sub_(rows_positive_grad).sub_(cols_positive_grad).mul_(scale_acc)
            return grad.to(rows.dtype), None, None, None, None, None, None, None, None, None

        grad_rows = kernels.weighted_sum(rows, all_cols, g, lse, None, None, scale, self_offset)
        grad_scale = None
        if ctx.needs_input_grad[6]:
            # dL/dscale = sum_ij (dL/ds_ij) a_i . b_j; the lse part is a_i . grad_rows_i (unscaled).
            dscale = (rows.to(acc) * grad_rows).sum() - (w * positive_dot).sum()
            grad_scale = dscale.to(scale.dtype).reshape(scale.shape)
        grad_rows.sub_(rows_positive_grad).mul_(scale_acc)

        # This rank's columns against every rank's rows.
        all_rows, all_row_ids, row0, col0 = rows, row_ids, 0, 0
        if ranks is not None:
            all_rows, _ = gather_rows(rows.detach(), ranks.group, ranks.row_sizes)
            all_row_ids, _ = gather_rows(row_ids, ranks.group, ranks.row_sizes)
            row0, col0 = ranks.row_offset, sum(ranks.col_sizes[: ranks.rank])
        grad_cols_diag = None
        if self_offset is not None:
            # Local column j is global column col0 + j, the own column of global row
            # row0 + (col0 + j - self_offset); its local row is own - col0 (slice below).
            grad_cols_diag = row0 + col0 - self_offset
        grad_cols = kernels.weighted_sum(cols, all_rows, None, None, all_g, all_lse, scale, grad_cols_diag)
        grad_cols.sub_(_group_sums(all_rows, all_row_ids, bound, all_w)[col_ids[col0 : col0 + cols.shape[0]]])
        if self_offset is not None:
            own = self_offset - col0
            grad_cols[own : own + n] += w[:, None] * rows
        grad_cols.mul_(scale_acc)
        return grad_rows.to(rows.dtype), grad_cols.to(cols.dtype), None, None, None, None, grad_scale, None, None, None


def fused_multipos_ce(
    kernels: Kernels,
    rows: torch.Tensor,
    cols: torch.Tensor,
    row_labels: torch.Tensor,
    col_labels: torch.Tensor,
    scale: torch.Tensor | float,
    self_offset: int | None,
    group=None,
) -> torch.Tensor:
    """Mean multi-positive cross-entropy of rows against columns (see multipos_torch) via ``kernels``.

    With a process ``group``, rows and columns are this rank's; the columns of every rank are
    gathered (features once in the forward; lse and row weights in the backward, O(N) each),
    nothing flows back through a collective, and each rank computes its own rows' and
    columns' gradient. ``self_offset`` is then 0 (rows are this rank's columns) or None.
    """
    if not isinstance(scale, torch.Tensor):
        scale = torch.tensor(float(scale), dtype=accumulation_dtype(rows.dtype), device=rows.device)
    scale = scale.to(rows.device)
    # One symmetric pass needs s = s^T (same tensor, own diagonal) and no scale gradient.
    symmetric = rows is cols and self_offset == 0 and not scale.requires_grad
    if group is None:
        row_ids, col_ids, bound = group_ids(row_labels, col_labels)
        return _FusedMultiPosCE.apply(
            rows, None if symmetric else cols, None, row_ids, None if col_ids is row_ids else col_ids, bound, scale,
            self_offset, kernels, None,
        )
    if self_offset not in (None, 0) or (self_offset == 0 and rows is not cols):
        raise ValueError("distributed: the diagonal can only be excluded when rows are this rank's columns")
    all_cols, col_sizes = gather_rows(cols.detach(), group)
    all_col_labels, _ = gather_rows(col_labels, group, col_sizes)
    if rows is cols:
        row_sizes, all_row_labels = col_sizes, all_col_labels
    else:
        all_row_labels, row_sizes = gather_rows(row_labels, group)
    ranks = Ranks(group, len(col_sizes), row_sizes, col_sizes, torch.distributed.get_rank(group))
    all_row_ids, col_ids, bound = group_ids(all_row_labels, all_col_labels)
    row_ids = all_row_ids[ranks.row_offset : ranks.row_offset + rows.shape[0]]
    offset = None if self_offset is None else ranks.row_offset
    return _FusedMultiPosCE.apply(
        rows, None if symmetric else cols, all_cols, row_ids, col_ids, bound, scale, offset, kernels, ranks
    )


@dataclass(frozen=True)
class OpKernels:
    """A backend's two kernels registered as torch ops (see ``register_kernels``); ``extra``
    holds trailing op arguments, such as a precision."""

    lse_op: Callable[..., torch.Tensor]
    weighted_sum_op: Callable[..., torch.Tensor]
    extra: tuple = ()

    def lse(self, a, b, scale, diag):
        return self.lse_op(a, b, scale, diag or 0, diag is not None, *self.extra)

    def weighted_sum(self, a, b, u, lse_a, v, lse_b, scale, diag):
        return self.weighted_sum_op(a, b, u, lse_a, v, lse_b, scale, diag or 0, diag is not None, *self.extra)


def register_kernels(name: str, lse_impl: Callable, weighted_sum_impl: Callable) -> OpKernels:
    """Register ``stablerep_fast::{name}_lse`` and ``{name}_weighted_sum`` as torch custom ops.

    The implementations take ``(a, b, scale, diag: int, has_diag: bool, *extra)`` and
    ``(a, b, u, lse_a, v, lse_b, scale, diag, has_diag, *extra)`` (annotated, Optional tensors
    for the absent terms). Fake implementations give torch.compile the output shapes, so a
    compiled model calling the loss traces through the kernels without a graph break.
    """
    lse_op = torch.library.custom_op(f"stablerep_fast::{name}_lse", mutates_args=())(lse_impl)
    weighted_sum_op = torch.library.custom_op(f"stablerep_fast::{name}_weighted_sum", mutates_args=())(
        weighted_sum_impl
    )

    @lse_op.register_fake
    def _(a, b, *args):
        return a.new_empty(a.shape[0], dtype=accumulation_dtype(a.dtype))

    @weighted_sum_op.register_fake
    def _(a, b, *args):
        return a.new_empty(a.shape, dtype=accumulation_dtype(a.dtype))

    return OpKernels(lse_op, weighted_sum_op)
