"""Compile the Triton loss kernels for sm_80 / sm_90 ahead of time, without a GPU.

Every ``multipos_triton.Variant`` the public losses launch (``public_variants``, built from
the launchers' own ``launch_meta``) is compiled through Triton's own argument
specialisation, once with N a multiple of 16 and once not (Triton compiles those
separately; D's alignment comes with each width). ptxas's report gives registers per
thread, spill bytes and the stack frame; Triton's metadata the shared memory.

    python -m stablerep_fast.ops.triton_aot     # the table for sm_80 and sm_90

Compilation runs in worker processes started with ``TRITON_INTERPRET=0`` (kernels defined under the
interpreter cannot be compiled) and a temporary ``TRITON_CACHE_DIR``, removed afterwards.
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import os
import re
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

ARCHS = (80, 90)
# Aligned and unaligned N: Triton specialises an int argument on divisibility by 16.
SIZES = (8192, 8191)


@dataclass(frozen=True)
class Resources:
    """ptxas's report for one compiled kernel (bytes per thread, shared bytes per program)."""

    variant: object  # multipos_triton.Variant
    n: int
    arch: int
    registers: int
    spill_stores: int
    spill_loads: int
    stack: int
    shared: int
    seconds: float
    mma: tuple[str, ...] = ()  # the PTX matrix instructions, e.g. "wgmma.m64n64k16.bf16"

    @property
    def spills(self) -> int:
        return self.spill_stores + self.spill_loads


def _stand_in_args(kernel, variant, n: int) -> dict:
    """The launchers' runtime arguments as Triton's specialisation sees them: tensors (dtype,
    16-byte aligned pointer), None for absent terms, and the sizes."""
    import torch

    absent = set()
    if not variant.has_u:
        absent |= {"u_ptr", "lse_a_ptr"}
    if not variant.has_v:
        absent |= {"v_ptr", "lse_b_ptr"}
    sizes = {"na": n, "nb": n, "D": variant.d, "diag": 0, "split_cols": n}
    args = {}
    for p in kernel.params:
        if p.is_constexpr:
            continue
        if p.name.endswith("_ptr"):
            dtype = variant.dtype if p.name in ("a_ptr", "b_ptr") else torch.float32
            args[p.name] = None if p.name in absent else torch.empty(4, dtype=dtype)
        else:
            args[p.name] = sizes[p.name]
    return args


@contextlib.contextmanager
def _environment(**values: str):
    """Set environment variables for the block (worker processes spawned in it inherit them)."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


_PTXAS = re.compile(
    r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads.*?Used (\d+) registers", re.S
)


def compile_variant(variant, n: int, arch: int) -> Resources:
    """Compile one variant for sm_``arch`` with N = ``n`` and read ptxas's report."""
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    from stablerep_fast.ops import multipos_triton as mt

    kernel = {"lse": mt._lse_kernel, "weighted_sum": mt._weighted_sum_kernel}[variant.kernel]
    if not isinstance(kernel, triton.runtime.JITFunction):
        raise RuntimeError("the kernels were defined under TRITON_INTERPRET=1; compile in a fresh process")
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    kwargs = dict(mt.launch_meta(variant, arch, interpret=False), debug=False,
                  instrumentation_mode=knobs.compilation.instrumentation_mode)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, specialization, options = binder(**_stand_in_args(kernel, variant, n), **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound, specialization, options)
    log = io.StringIO()
    start = time.perf_counter()
    with knobs.nvidia.scope(), knobs.compilation.scope(), contextlib.redirect_stdout(log):
        knobs.nvidia.dump_ptxas_log = True
        knobs.compilation.always_compile = True  # a cached kernel would skip ptxas and its report
        compiled = triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=target,
                                  options=options.__dict__)
    seconds = time.perf_counter() - start
    found = _PTXAS.search(log.getvalue())
    if found is None:
        raise RuntimeError(f"no ptxas report for {variant} (n={n}, sm_{arch}):\n{log.getvalue()}")
    stack, stores, loads, registers = (int(x) for x in found.groups())
    return Resources(variant, n, arch, registers, stores, loads, stack, compiled.metadata.shared, seconds,
                     matrix_instructions(compiled.asm["ptx"]))


_MMA = re.compile(r"\b(wgmma\.mma_async|mma\.sync)\.\S*?\.(m\d+n\d+k\d+)\.(\S+)\s+\{[^}]*\},\s*(\{|%)")


def matrix_instructions(ptx: str) -> tuple[str, ...]:
    """The distinct matrix instructions of a kernel's PTX, sorted: "wgmma.m64n64k16.bf16.ss"
    (opcode, shape, operand type, and for wgmma where A comes from: "ss" shared memory, "rs"
    registers) or "mma.m16n8k16.bf16"."""
    found = set()
    for op, shape, types, a_operand in _MMA.findall(ptx):
        operand = types.split(".")[-2 if op == "mma.sync" else -1]
        if op == "wgmma.mma_async":
            found.add(f"wgmma.{shape}.{operand}.{'rs' if a_operand == '{' else 'ss'}")
        else:
            found.add(f"mma.{shape}.{operand}")
    return tuple(sorted(found))


def _compile_task(task):
    return compile_variant(*task)


def compile_all(variants=None, archs=ARCHS, sizes=SIZES, jobs: int | None = None) -> list[Resources]:
    """Compile every (variant, N, arch) in ``jobs`` worker processes (default: CPU count)."""
    if variants is None:
        from stablerep_fast.ops.multipos_triton import public_variants

        variants = public_variants()
    tasks = [(v, n, arch) for arch in archs for v in variants for n in sizes]
    jobs = jobs or os.cpu_count() or 1
    # Workers start with TRITON_INTERPRET=0 in their environment, before anything imports Triton
    # (Triton reads it when its own helpers are defined, e.g. under a test session's =1).
    with tempfile.TemporaryDirectory(prefix="triton-aot-") as cache_dir:
        with _environment(TRITON_INTERPRET="0", TRITON_CACHE_DIR=cache_dir):
            with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
                return list(pool.map(_compile_task, tasks))


def format_table(rows: list[Resources]) -> str:
    """One line per compiled kernel, then a summary per architecture."""
    import torch

    names = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
    lines = [f"{'arch':<6} {'kernel':<13} {'inputs':<10} {'terms':<8} {'D':>5} {'N':>5} "
             f"{'regs':>5} {'spill B':>8} {'stack B':>8} {'smem KB':>8} {'s':>5}"]
    for r in rows:
        v = r.variant
        inputs = names[v.dtype] + (f"/{v.precision}" if v.dtype == torch.float32 else "")
        terms = ("u" if v.has_u else "") + ("v" if v.has_v else "") + ("+diag" if v.has_diag else "")
        lines.append(f"sm_{r.arch:<3} {v.kernel:<13} {inputs:<10} {terms or '-':<8} {v.d:>5} {r.n:>5} "
                     f"{r.registers:>5} {r.spills:>8} {r.stack:>8} {r.shared / 1024:>8.1f} {r.seconds:>5.1f}")
    for arch in sorted({r.arch for r in rows}):
        of_arch = [r for r in rows if r.arch == arch]
        spilling = [r for r in of_arch if r.spills or r.stack]
        lines.append(f"sm_{arch}: {len(of_arch)} kernels, {len(spilling)} with spills or a stack frame, "
                     f"max {max(r.registers for r in of_arch)} registers, "
                     f"max {max(r.shared for r in of_arch) / 1024:.1f} KB shared memory, "
                     f"max spill {max(r.spills for r in of_arch)} B")
    return "\n".join(lines)


if __name__ == "__main__":
    print(format_table(compile_all()), flush=True)
