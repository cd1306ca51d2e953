"""The fused multi-positive cross-entropy: one autograd Function over a backend's two kernels.

Every memory-bounded backend (chunked torch, C++, Triton, CUDA) exports one
``ops.backend.Backend`` record holding the same two kernels; ``MultiPosCE`` does the rest
(positive terms, gradient bookkeeping, the distributed gathers) once. It calls the kernels
itself: a public loss calls ``MultiPosCE.apply``, whose ``forward`` calls a kernel op, whose
launcher launches. ``diag`` names the excluded diagonal everywhere: column j = i + diag is
left out of row i, and None excludes nothing.

    lse(a, b, scale, diag, precision) -> [na] in the accumulation dtype (float64 for float64, else float32)
        lse_i = log sum_j exp(s_ij),  s_ij = scale * a_i . b_j,  j = i + diag excluded
    weighted_sum(a, b, u, lse_a, v, lse_b, scale, diag, precision) -> [na, D] in the accumulation dtype
        out_i = sum_j (u_i exp(s_ij - lse_a_i) + v_j exp(s_ij - lse_b_j)) b_j,  j = i + diag excluded
        (u/lse_a or v/lse_b may be None: that term is absent; lse entries are finite or +inf,
        and +inf makes that row's or column's term vanish)

``precision`` is how float32 products run on tensor cores ("tf32" or "ieee"); backends
without them are passed "ieee". Neither kernel materialises anything [na, nb]. The positive
term needs no quadratic work: with G_g the sum of the columns of caption g,
sum_{j in P_i} a_i . b_j = a_i . (G_{y_i} - own column).

Gradients (g_i = dL/dl_i, zero for rows without positives, w_i = g_i / k_i):
    dL/da_i = scale * [sum_j g_i Q_ij b_j - w_i sum_{j in P_i} b_j]
    dL/db_j = scale * [sum_i g_i Q_ij a_i - sum_{i : j in P_i} w_i a_i]
    dL/dscale = sum_i g_i sum_j Q_ij a_i . b_j - sum_i w_i sum_{j in P_i} a_i . b_j
When rows and columns are the same tensor (single process), s is symmetric and one
weighted_sum with both terms gives the whole gradient: deterministic, no atomics.
See docs/method.md for the derivation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed

from stablerep_fast.ops.distributed import gather_rows


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


def _positive_cols(cols, row_ids, col_ids, bound, diag, n) -> torch.Tensor:
    """[n, D]: for each row, the sum of its caption's columns other than its own."""
    out = _group_sums(cols, col_ids, bound)[row_ids]
    if diag is not None:
        out -= cols[diag : diag + n]
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


class MultiPosCE(torch.autograd.Function):
    """Mean multi-positive cross-entropy of rows against columns on a backend's kernels.

    ``MultiPosCE.apply(backend, rows, cols, row_labels, col_labels, scale, diag, group, precision)``
    (what ``Backend.loss`` calls): s_ij = scale * rows_i . cols_j, column i + diag left out
    when diag is not None; P_i = {j : col_labels_j == row_labels_i, j kept}, k_i = |P_i|;
    l_i = logsumexp_j s_ij - mean_{j in P_i} s_ij if k_i > 0, else 0; the result is mean_i l_i.
    ``scale`` is a number or a tensor (which may need a gradient). cols = col_labels = None:
    the columns are the rows themselves, with each row's own column left out (diag must be 0);
    s is then symmetric and one weighted_sum gives the whole gradient. (Tensors are never passed
    twice: torch.compile cannot trace that.) ``precision`` is the public one; the kernels get
    ``backend.kernel_precision(precision)``.

    With a process ``group``, rows and columns are this rank's; the columns of every rank are
    gathered (features once in the forward; lse and row weights in the backward, O(N) each),
    nothing flows back through a collective, and each rank computes its own rows' and
    columns' gradient. ``diag`` is then 0 with cols=None, or None.
    """

    # Buffers are updated in place where possible: at N = 8192, D = 256 every [N, D] float32
    # temporary is 8 MiB of a budget of O(N * D).
    @staticmethod
    def forward(ctx, backend, rows, cols, row_labels, col_labels, scale, diag, group, precision):
        symmetric = cols is None
        if symmetric and diag != 0:
            raise ValueError(f"cols=None (the rows themselves) leaves each row's own column out: diag must be 0, "
                             f"got {diag}")
        cols = rows if symmetric else cols
        n, acc = rows.shape[0], accumulation_dtype(rows.dtype)
        all_cols, row_ids, col_ids, bound, diag, ranks = _columns(
            rows, cols, row_labels, row_labels if symmetric else col_labels, diag, group, symmetric
        )
        precision = backend.kernel_precision(precision)
        if isinstance(scale, torch.Tensor):
            ctx.scale_like = (scale.dtype, scale.device, scale.shape)  # its gradient goes back as it came
            scale = scale.to(device=rows.device, dtype=acc)
        else:
            scale = torch.tensor(float(scale), dtype=acc, device=rows.device)
        # Static-shape count per caption (bincount's length depends on the data).
        k = torch.zeros(bound, dtype=torch.int64, device=col_ids.device).index_add_(
            0, col_ids, torch.ones_like(col_ids)
        )[row_ids]
        if diag is not None:
            k -= 1
        # Unscaled sum over P_i of a_i . b_j.
        positive_dot = _positive_cols(all_cols, row_ids, col_ids, bound, diag, n).mul_(rows).sum(1)
        lse = backend.lse(rows, all_cols, scale, diag, precision)
        has_positive = k > 0
        k_safe = k.clamp(min=1).to(acc)
        per_row = torch.where(has_positive, lse - scale * positive_dot / k_safe, 0.0)
        ctx.save_for_backward(rows, cols, all_cols, row_ids, col_ids, scale, lse, k_safe, has_positive, positive_dot)
        ctx.bound, ctx.diag, ctx.symmetric, ctx.backend, ctx.precision, ctx.ranks = (
            bound, diag, symmetric, backend, precision, ranks
        )
        return per_row.mean()

    @staticmethod
    def backward(ctx, grad_loss):
        rows, cols, all_cols, row_ids, col_ids, scale, lse, k_safe, has_positive, positive_dot = ctx.saved_tensors
        diag, backend, precision, ranks, bound = ctx.diag, ctx.backend, ctx.precision, ctx.ranks, ctx.bound
        n, acc = rows.shape[0], lse.dtype
        # dL/dl_i. One process: 1/n, the mean's. Several: W / (all ranks' rows), so that DDP's
        # average over ranks follows the gradient of the global mean loss (equal local sizes:
        # the same 1/n).
        weight = 1.0 / n if ranks is None else ranks.world / sum(ranks.row_sizes)
        g = torch.where(has_positive, grad_loss.to(acc) * weight, 0.0)
        lse = lse.masked_fill(~has_positive, float("inf"))  # softmax rows of such anchors vanish
        w = g / k_safe
        # Every rank's rows' (g, w, lse): the column side of the gradient needs them.
        all_g, all_w, all_lse = g, w, lse
        if ranks is not None:
            gathered, _ = gather_rows(torch.stack([g, w, lse], 1), ranks.group, ranks.row_sizes)
            all_g, all_w, all_lse = gathered.unbind(1)

        def scale_grad(lse_part: torch.Tensor) -> torch.Tensor | None:
            """dL/dscale from the unscaled sum_ij g_i Q_ij a_i . b_j (the positive part added here)."""
            if not ctx.needs_input_grad[5]:
                return None
            dtype, device, shape = ctx.scale_like
            return (lse_part - (w * positive_dot).sum()).to(device, dtype).reshape(shape)

        # Positive pairs: rows get -w_i sum_{j in P_i} b_j; columns get -sum_{i: j in P_i} w_i a_i.
        rows_positive_grad = _positive_cols(all_cols, row_ids, col_ids, bound, diag, n).mul_(w[:, None])
        if ctx.symmetric:
            # Every rank's rows are the columns: s is symmetric, one pass gives the whole gradient.
            grad = backend.weighted_sum(rows, all_cols, g, lse, all_g, all_lse, scale, diag, precision)
            # a_i . grad_i counts each pair once as a row and once as a column: half is the scale's
            # (summed over ranks, the rows' and the columns' halves each add up to the global sum).
            grad_scale = scale_grad(0.5 * (rows.to(acc) * grad).sum())
            cols_positive_grad = _group_sums(all_cols, col_ids, bound, all_w)[row_ids]
            cols_positive_grad -= w[:, None] * rows
            grad.sub_(rows_positive_grad).sub_(cols_positive_grad).mul_(scale)
            return None, grad.to(rows.dtype), None, None, None, grad_scale, None, None, None

        grad_rows = backend.weighted_sum(rows, all_cols, g, lse, None, None, scale, diag, precision)
        grad_scale = scale_grad((rows.to(acc) * grad_rows).sum())
        grad_rows.sub_(rows_positive_grad).mul_(scale)

        # This rank's columns against every rank's rows.
        all_rows, all_row_ids, row0, col0 = rows, row_ids, 0, 0
        if ranks is not None:
            all_rows, _ = gather_rows(rows.detach(), ranks.group, ranks.row_sizes)
            all_row_ids, _ = gather_rows(row_ids, ranks.group, ranks.row_sizes)
            row0, col0 = ranks.row_offset, sum(ranks.col_sizes[: ranks.rank])
        cols_diag = None
        if diag is not None:
            # Local column j is global column col0 + j, the own column of global row
            # row0 + (col0 + j - diag); its local row is own - col0 (slice below).
            cols_diag = row0 + col0 - diag
        grad_cols = backend.weighted_sum(cols, all_rows, None, None, all_g, all_lse, scale, cols_diag, precision)
        grad_cols.sub_(_group_sums(all_rows, all_row_ids, bound, all_w)[col_ids[col0 : col0 + cols.shape[0]]])
        if diag is not None:
            own = diag - col0
            grad_cols[own : own + n] += w[:, None] * rows
        grad_cols.mul_(scale)
        return None, grad_rows.to(rows.dtype), grad_cols.to(cols.dtype), None, None, grad_scale, None, None, None


def _columns(rows, cols, row_labels, col_labels, diag, group, symmetric):
    """Every rank's columns and the caption ids: (all_cols, row_ids, col_ids, bound, diag, ranks).

    One process: the columns as given, ranks None. With a ``group``: the columns of every rank
    (gathered without autograd), this rank's rows' ids, every rank's columns' ids, ``diag``
    shifted to this rank's row offset, and where the rows and columns sit among every rank's.
    """
    if group is None:
        row_ids, col_ids, bound = group_ids(row_labels, col_labels)
        return cols, row_ids, col_ids, bound, diag, None
    if diag is not None and not symmetric:
        raise ValueError("distributed: the diagonal can only be excluded when rows are this rank's columns")
    all_cols, col_sizes = gather_rows(cols.detach(), group)
    all_col_labels, _ = gather_rows(col_labels, group, col_sizes)
    if symmetric:
        row_sizes, all_row_labels = col_sizes, all_col_labels
    else:
        all_row_labels, row_sizes = gather_rows(row_labels, group)
    ranks = Ranks(group, len(col_sizes), row_sizes, col_sizes, torch.distributed.get_rank(group))
    all_row_ids, col_ids, bound = group_ids(all_row_labels, all_col_labels)
    row_ids = all_row_ids[ranks.row_offset : ranks.row_offset + rows.shape[0]]
    return all_cols, row_ids, col_ids, bound, None if diag is None else ranks.row_offset, ranks
