"""The ``compile`` backend: ``torch.compile`` with static shapes, the denoiser's steps as CUDA graphs.

Eager's set-up (``eager.py``), then the denoiser's forward and the VAE decoder each stand in
for themselves compiled (``CompiledForward``): on GPU the denoiser in mode "reduce-overhead",
so each denoising step replays a CUDA graph; the decoder, called once per batch, without (a
graph buys little there). Inductor's artefacts are cached under ``<cache>/inductor`` between
runs (``configure_compile_cache``). With ``Networks.static_batch`` a smaller batch (a shard's
last) runs padded on the graph of the largest one; otherwise it compiles its own graph once.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch

from stablerep_fast.generate.runtime.eager import setup_eager
from stablerep_fast.generate.runtime.networks import BackendOptions, Networks, default_cache_dir
from stablerep_fast.generate.runtime.padding import pad_batch


def configure_compile_cache(cache_dir: Path | None) -> Path:
    """Keep inductor's compiled kernels and FX graphs under ``<cache>/inductor`` so a later run,
    or another worker sharing the folder, loads them instead of compiling again.

    An explicit ``cache_dir`` (``--engine-cache``) always wins; without one, a
    TORCHINDUCTOR_CACHE_DIR the user set is kept. Inductor has no config field for its folder:
    it reads TORCHINDUCTOR_CACHE_DIR at each lookup and writes its own default there at its
    first one, so the variable is set (not defaulted) and inductor's in-memory caches of earlier
    lookups are cleared."""
    import torch._inductor.config as inductor_config
    import torch._inductor.utils as inductor_utils
    from torch._inductor.runtime.runtime_utils import default_cache_dir as inductor_default

    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if cache_dir is not None or current is None or current == os.path.abspath(inductor_default()):
        root = str((Path(cache_dir or default_cache_dir()) / "inductor").resolve())
        if os.environ.get("TORCHINDUCTOR_CACHE_DIR") != root:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = root
            clear = getattr(inductor_utils, "clear_caches", None) or getattr(inductor_utils, "clear_inductor_caches", None)
            if clear is not None:
                clear()
    inductor_config.fx_graph_cache = True
    return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])


def _rows(value) -> int | None:
    return value.shape[0] if isinstance(value, torch.Tensor) and value.dim() > 0 else None


class CompiledForward:
    """``torch.compile`` of a module's forward (or ``decode``) with static shapes, standing in
    for it. ``cuda_graphs``: mode "reduce-overhead" (each call replays a CUDA graph), outputs
    cloned out of the graph's memory, which the next replay overwrites. ``static_batch``: the
    first argument and every keyword tensor with as many rows are padded (``pad_batch``) to the
    largest batch seen and the outputs cut back, so one graph serves every smaller batch."""

    def __init__(self, forward: Callable, *, cuda_graphs: bool, static_batch: bool):
        self.cuda_graphs = cuda_graphs
        self.static_batch = static_batch
        self.batch = 0  # the largest batch seen (static_batch)
        self.compiled = torch.compile(forward, dynamic=False, mode="reduce-overhead" if cuda_graphs else None)

    def __call__(self, *args, **kwargs):
        n = _rows(args[0]) if self.static_batch and args else None
        if n is not None:
            self.batch = max(self.batch, n)
            args = (pad_batch(args[0], self.batch), *args[1:])
            kwargs = {name: pad_batch(value, self.batch) if _rows(value) == n else value for name, value in kwargs.items()}
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()  # the previous step's outputs are consumed
        out = self.compiled(*args, **kwargs)
        if (n is None or n == self.batch) and not self.cuda_graphs:
            return out

        def own_rows(t):
            if not isinstance(t, torch.Tensor):
                return t
            t = t[:n] if n is not None and _rows(t) == self.batch else t
            return t.clone() if self.cuda_graphs else t

        return torch.utils._pytree.tree_map(own_rows, out)


def setup_compile(networks: Networks, options: BackendOptions = BackendOptions()) -> list[str]:
    """Eager's set-up, then the denoiser's forward and the VAE decoder compiled in place (see the module doc)."""
    applied = setup_eager(networks, options)
    cache = configure_compile_cache(options.cache_dir)
    denoiser, vae = networks.denoiser, networks.vae
    denoiser.forward = CompiledForward(denoiser.forward, cuda_graphs=denoiser.device.type == "cuda",
                                       static_batch=networks.static_batch)  # fmt: skip
    vae.decode = CompiledForward(vae.decode, cuda_graphs=False, static_batch=networks.static_batch)
    return [*applied, f"compiled {type(denoiser).__name__} and VAE decoder", f"inductor cache {cache}"]
