"""The loss backend record and the registration of its kernels as torch ops.

Every backend is one ``Backend`` record: two kernels with the signatures of ``multipos_fused``
(or, for the dense reference, one function computing the whole loss), where it runs and its
limits. ``ops.dispatch`` maps names to records; ``Backend.loss`` is what the public losses call.

Compiled and Triton kernels are registered torch ops (``register_kernels``, or Triton's own
``triton_op`` with the same schemas) with fake implementations that give the output shapes, so
torch.compile traces a model calling the loss without a graph break.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch

from stablerep_fast.ops.multipos_fused import MultiPosCE, accumulation_dtype

# The kernels' signature, written once: the torch op schemas every backend registers under.
LSE_SCHEMA = "(Tensor a, Tensor b, Tensor scale, int? diag, str precision) -> Tensor"
WEIGHTED_SUM_SCHEMA = (
    "(Tensor a, Tensor b, Tensor? u, Tensor? lse_a, Tensor? v, Tensor? lse_b, Tensor scale, int? diag, "
    "str precision) -> Tensor"
)


def _runs_anywhere(device: torch.device, dtype: torch.dtype) -> str | None:
    return None


@dataclass(frozen=True)
class Backend:
    """One loss backend: its two kernels and what it can run (``ops.dispatch`` maps names to these).

    lse, weighted_sum: the kernels (signatures in ``multipos_fused``); both None for a dense
        backend, whose ``dense`` computes the whole loss with autograd instead (same signature
        as ``loss``).
    unavailable(device, dtype): None when the backend runs there, else the reason.
    max_d: the widest features it takes (None: any); "auto" passes it over for wider ones.
    half_inputs: takes float16/bfloat16 rows as they are (others get them in float32).
    auto_min_logits: below this many logits (rows x columns) "auto" passes it over.
    precisions: the float32 product modes its kernels distinguish; others get "ieee".
    """

    name: str
    description: str
    lse: Callable[..., torch.Tensor] | None
    weighted_sum: Callable[..., torch.Tensor] | None
    unavailable: Callable[[torch.device, torch.dtype], str | None] = _runs_anywhere
    max_d: int | None = None
    half_inputs: bool = False
    auto_min_logits: int = 0
    precisions: tuple[str, ...] = ("ieee",)
    dense: Callable[..., torch.Tensor] | None = None

    def kernel_precision(self, precision: str) -> str:
        """The precision its kernels are given for the public ``precision``."""
        return precision if precision in self.precisions else "ieee"

    @property
    def loss(self) -> Callable[..., torch.Tensor]:
        """The mean multi-positive cross-entropy on this backend, called as
        ``loss(rows, cols, row_labels, col_labels, scale, diag, group, precision)``; see
        ``multipos_fused.MultiPosCE``. For the fused backends it is the autograd Function itself
        (no Python layer between the caller and ``MultiPosCE.forward``)."""
        return self.dense if self.dense is not None else partial(MultiPosCE.apply, self)


def register_kernels(name: str, lse_impl: Callable, weighted_sum_impl: Callable) -> tuple[Callable, Callable]:
    """Register ``stablerep_fast::{name}_lse`` and ``{name}_weighted_sum`` as torch custom ops
    with LSE_SCHEMA / WEIGHTED_SUM_SCHEMA and fake implementations; returns the two ops."""
    lse_op = torch.library.custom_op(f"stablerep_fast::{name}_lse", lse_impl, mutates_args=(), schema=LSE_SCHEMA)
    weighted_sum_op = torch.library.custom_op(
        f"stablerep_fast::{name}_weighted_sum", weighted_sum_impl, mutates_args=(), schema=WEIGHTED_SUM_SCHEMA
    )
    lse_op.register_fake(_lse_shape)
    weighted_sum_op.register_fake(_weighted_sum_shape)
    return lse_op, weighted_sum_op


def _lse_shape(a, b, *args):
    return a.new_empty(a.shape[0], dtype=accumulation_dtype(a.dtype))


def _weighted_sum_shape(a, b, *args):
    return a.new_empty(a.shape, dtype=accumulation_dtype(a.dtype))
