"""The first-use check of a fused backend's kernels (see ``dispatch``).

On a GPU, ``backend="auto"`` may pick kernels that have never run on that device, dtype or
feature width. Before their first use there, ``failure`` runs the backend once on a small
problem of that width and dtype, in both forms the public losses use (rows against
themselves with the diagonal left out; rows against other columns with a learnable scale),
forward and backward, and compares the loss and every gradient with the chunked torch
kernels in float64 on the same inputs. A broken kernel is off by order one, so the
tolerances are loose: they only need to stand above TF32 and half-precision rounding.

Two shapes are checked (``SHAPES``), because Triton compiles a kernel separately for sizes
that are and are not multiples of 16: an odd one, and one of the specialisation training
launches (N a multiple of 16) spanning several tiles of every kernel.

Most launch errors only disqualify the backend, and "auto" moves on. A few do not: a kernel
that faults (an illegal or misaligned address, a device-side assert, ...) leaves the CUDA
context unusable, so every later CUDA call in the process fails too, the fallback's
included. ``failure`` raises ``CudaContextLost`` for those, one line naming the fault and
what to do, instead of letting the fallback fail with the same error.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from stablerep_fast.ops.backend import Backend
from stablerep_fast.ops.multipos_torch import CHUNKED

# Largest error allowed, relative to the largest reference value (the loss: to max(1, |loss|)).
# Exact modes reorder float32 sums (~1e-6); TF32 and half-precision products round to ~1e-3.
EXACT_TOL = 1e-3
ROUNDED_TOL = 5e-2
# (rows, columns) of the checked problems; the image-image form uses the rows alone.
# 70 x 45: N not a multiple of 16 (Triton's other specialisation), across the 64-row tiles,
# a partial column tile. 144 x 80: multiples of 16, as training batches are, across the 64-
# and 128-row tiles (those D = 256 launches on Hopper) and two 64-column steps, partial last
# ones included. Under Triton's interpreter (the CPU tests) it costs ~3 s at D = 256.
SHAPES = ((70, 45), (144, 80))
CAPTIONS = 9
# What CUDA reports for the faults that leave a context unusable (its "sticky" errors), as
# torch's and Triton's messages spell them; matched case-insensitively.
CONTEXT_LOST = (
    "illegal memory access", "cudaerrorillegaladdress", "misaligned address", "cudaerrormisalignedaddress",
    "device-side assert", "cudaerrorassert", "illegal instruction", "cudaerrorillegalinstruction",
    "unspecified launch failure", "cudaerrorlaunchfailure", "hardware stack error", "invalid program counter",
    "invalid address space",
)  # fmt: skip


class CudaContextLost(RuntimeError):
    """A backend's check faulted in a way that leaves the CUDA context unusable: no other
    backend can run in this process. The message is one line: the fault and what to do."""


def failure(backend: Backend, device: torch.device, dtype: torch.dtype, precision: str, dim: int) -> str | None:
    """None when ``backend`` computes the loss and its gradients right for features of width
    ``dim`` in ``dtype`` on ``device`` (``precision``: the one its kernels are given), else the
    reason: the error it raised, or which output is off and by how much. Raises
    CudaContextLost when the error is a fault that leaves the CUDA context unusable."""
    try:
        for rows, cols in SHAPES:
            reason = _compare(backend, device, dtype, precision, dim, rows, cols)
            if reason:
                return f"{reason} at {rows} x {cols}"
        return None
    except Exception as exc:  # any compile or launch error is a reason to pass the backend over
        first_line = (str(exc).strip().splitlines() or [""])[0]
        if any(pattern in str(exc).lower() for pattern in CONTEXT_LOST):
            raise CudaContextLost(
                f"loss backend {backend.name!r} faulted in its first-use check on {device} with {dtype}, D = {dim} "
                f"({type(exc).__name__}: {first_line}); the fault leaves the CUDA context unusable, so no fallback "
                f"can run in this process: restart it with backend=\"torch\" and report the fault"
            ) from None
        return f"{type(exc).__name__}: {first_line}"


def _compare(
    backend: Backend, device: torch.device, dtype: torch.dtype, precision: str, dim: int, n_rows: int, n_cols: int
) -> str | None:
    if dtype in (torch.float16, torch.bfloat16) and not backend.half_inputs:
        dtype = torch.float32  # what the public losses hand such a backend
    exact = dtype == torch.float64 or (dtype == torch.float32 and precision == "ieee")
    tol = EXACT_TOL if exact else ROUNDED_TOL
    gen = torch.Generator().manual_seed(0)

    def unit_rows(n: int) -> torch.Tensor:  # rounded to dtype first, so both sides see the same numbers
        return F.normalize(torch.randn(n, dim, generator=gen, dtype=torch.float64), dim=1).to(dtype).double()

    rows, cols = unit_rows(n_rows), unit_rows(n_cols)
    row_labels, col_labels = torch.arange(n_rows) % CAPTIONS, torch.arange(n_cols) % CAPTIONS
    problems = {
        "image-image": lambda impl, x, y, s: impl.loss(x, None, row_labels, None, s, 0, None, precision),
        "image-text": lambda impl, x, y, s: impl.loss(x, y, row_labels, col_labels, s, None, None, precision),
    }
    for form, loss_fn in problems.items():
        got = _loss_and_grads(loss_fn, backend, rows, cols, device, dtype)
        want = _loss_and_grads(loss_fn, CHUNKED, rows, cols, torch.device("cpu"), torch.float64)
        for name, g, w in zip(("loss", "d rows", "d columns", "d scale"), got, want):
            err = (g.detach().double().cpu() - w).abs().max().item()
            bound = tol * max(w.abs().max().item(), 1.0 if name == "loss" else 1e-12)
            if not err <= bound:  # NaN fails too
                return f"{form} {name} off by {err:.3g} (tolerance {bound:.3g})"
    return None


def _loss_and_grads(loss_fn, backend, rows, cols, device, dtype) -> list[torch.Tensor]:
    x = rows.to(device, dtype).requires_grad_()
    y = cols.to(device, dtype).requires_grad_()
    scale = torch.tensor(10.0, dtype=torch.float64, device=device, requires_grad=True)
    with torch.enable_grad():
        loss = loss_fn(backend, x, y, scale)
        grads = torch.autograd.grad(loss, (x, y, scale), allow_unused=True)
    return [loss, *(torch.zeros(()) if g is None else g for g in grads)]
