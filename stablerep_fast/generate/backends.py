"""How the pipeline's networks run: one small interface, one table, and the rule "auto" follows.

A backend takes the pipeline's modules (already on their device and dtype) and provides the
three calls the denoising loop makes: ``encode_text``, ``unet`` and ``decode``. The pipeline
never depends on which backend runs them, so faster ones plug in by adding a class and a row
to BACKENDS. Every factory takes ``(text_encoder, unet, vae, options: BackendOptions)``.
Families that run through diffusers' own ``__call__`` (``diffusers_pipeline.py``) get a
backend's ``prepare`` instead, which speeds up the pipeline's modules in place.

- ``eager``: the diffusers modules with SDPA attention, fused QKV projections and, on GPU,
  channels_last memory format (fp16/bf16 comes from the pipeline's dtype).
- ``compile``: eager's modules under ``torch.compile`` with static shapes; on GPU the UNet
  step replays as a CUDA graph (mode "reduce-overhead"); inductor's artefacts are cached
  under ``<cache>/inductor`` between runs. A smaller last batch is padded to the static one.
- ``tensorrt``: fp16 TensorRT engines, cached on disk (``tensorrt/``); for SDXL (run through
  diffusers' ``__call__``) the UNet only.
- ``auto``: tensorrt if it imports, a GPU is present and the model's family is one TensorRT
  covers (else a note, and compile), else compile on a GPU, else eager.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch.nn import Module

from stablerep_fast.generate.config import BackendOptions, GenerateError, default_cache_dir
from stablerep_fast.generate.families import Family, tensorrt_families
from stablerep_fast.generate.padding import pad_batch
from stablerep_fast.generate.tensorrt import TensorRTBackend, tensorrt_unavailable_reason

log = logging.getLogger("stablerep_fast.generate")


def optimise_modules(text_encoder: torch.nn.Module, unet: torch.nn.Module, vae: torch.nn.Module) -> list[str]:
    """Cheap, numerically safe speed-ups applied in place; returns what was applied."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    applied = []
    for name, module in (("unet", unet), ("vae", vae)):
        try:
            module.set_attn_processor(AttnProcessor2_0())  # PyTorch SDPA (flash / memory-efficient kernels)
            applied.append(f"{name}: sdpa")
            module.fuse_qkv_projections()  # one matmul for q, k, v (k, v in cross-attention)
            applied.append(f"{name}: fused qkv")
        except (AttributeError, ValueError, NotImplementedError):
            pass  # a module without these (or with added KV projections) keeps its processors
    if unet.device.type == "cuda":  # NHWC convolutions run on tensor cores without transposes
        unet.to(memory_format=torch.channels_last)
        vae.to(memory_format=torch.channels_last)
        applied.append("channels_last")
    return applied


class EagerBackend:
    """The modules as they are, after ``optimise_modules``."""

    name = "eager"

    def __init__(self, text_encoder: Module, unet: Module, vae: Module, options: BackendOptions = BackendOptions()):
        self.text_encoder = text_encoder
        self.unet_module = unet
        self.vae = vae
        self.optimisations = optimise_modules(text_encoder, unet, vae)

    def encode_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids: int64 [N, L] -> hidden states [N, L, D]."""
        return self.text_encoder(input_ids)[0]

    def unet(self, latents: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """latents: [N, C, h, w]; timestep: scalar; context: [N, L, D] -> predicted noise [N, C, h, w]."""
        return self.unet_module(latents, timestep, encoder_hidden_states=context, return_dict=False)[0]

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Unscaled latents [N, C, h, w] -> images [N, 3, H, W] in [-1, 1]."""
        return self.vae.decode(latents, return_dict=False)[0]


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


class CompileBackend(EagerBackend):
    """``torch.compile`` of the UNet and the VAE decoder with static shapes: one graph per
    component, at the first (full) batch; smaller batches are padded to it. On GPU the UNet
    runs in mode "reduce-overhead": each denoising step replays a CUDA graph."""

    name = "compile"

    def __init__(self, text_encoder: Module, unet: Module, vae: Module, options: BackendOptions = BackendOptions()):
        super().__init__(text_encoder, unet, vae)
        self.inductor_cache = configure_compile_cache(options.cache_dir)
        self.cuda_graphs = unet.device.type == "cuda"
        self._unet = torch.compile(unet, dynamic=False, mode="reduce-overhead" if self.cuda_graphs else None)
        self._decode = torch.compile(vae.decode, dynamic=False)  # once per batch: a graph buys little there
        self._batch: dict[str, int] = {}

    def _static(self, component: str, n: int) -> int:
        self._batch[component] = max(self._batch.get(component, 0), n)
        return self._batch[component]

    def unet(self, latents: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        n = latents.shape[0]
        batch = self._static("unet", n)
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()  # the previous step's outputs are consumed
        out = self._unet(pad_batch(latents, batch), timestep, encoder_hidden_states=pad_batch(context, batch), return_dict=False)[0]
        return out[:n].clone()  # CUDA-graph outputs live in memory the next replay overwrites

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        n = latents.shape[0]
        return self._decode(pad_batch(latents, self._static("vae", n)), return_dict=False)[0][:n]


def denoiser_of(pipe) -> Module:
    """The network a diffusers pipeline calls at every step: its transformer, else its UNet."""
    return getattr(pipe, "transformer", None) or pipe.unet


def prepare_eager(pipe, options: BackendOptions = BackendOptions()) -> list[str]:
    """A diffusers pipeline's modules as they are, but convolutions in channels_last on GPU."""
    if pipe.vae.device.type != "cuda":
        return []
    for module in (getattr(pipe, "unet", None), pipe.vae):
        if module is not None:
            module.to(memory_format=torch.channels_last)
    return ["channels_last"]


class CompiledForward:
    """``torch.compile`` of a module's forward with static shapes (one graph per batch shape); on
    GPU in mode "reduce-overhead" (each step replays a CUDA graph), its outputs cloned out of the
    graph's memory, which the next replay overwrites."""

    def __init__(self, forward: Callable, cuda_graphs: bool):
        self.cuda_graphs = cuda_graphs
        self.compiled = torch.compile(forward, dynamic=False, mode="reduce-overhead" if cuda_graphs else None)

    def __call__(self, *args, **kwargs):
        if not self.cuda_graphs:
            return self.compiled(*args, **kwargs)
        torch.compiler.cudagraph_mark_step_begin()  # the previous step's outputs are consumed
        out = self.compiled(*args, **kwargs)
        return torch.utils._pytree.tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t, out)


def prepare_compile(pipe, options: BackendOptions = BackendOptions()) -> list[str]:
    """``prepare_eager``, then the denoiser's forward and the VAE decoder compiled in place
    (artefacts cached as ``configure_compile_cache`` says). A batch of another size (a shard's
    last) compiles its own graph once."""
    applied = prepare_eager(pipe, options)
    configure_compile_cache(options.cache_dir)
    denoiser = denoiser_of(pipe)
    denoiser.forward = CompiledForward(denoiser.forward, denoiser.device.type == "cuda")
    pipe.vae.decode = torch.compile(pipe.vae.decode, dynamic=False)
    return [*applied, f"compiled {type(denoiser).__name__} and VAE decoder"]


class TensorRTForward:
    """A diffusers UNet's forward (SD 1.x/2.x/XL layouts) run by the TensorRT backend's UNet
    engines, as the pipeline calls it: SDXL's pooled text and time ids come as added_cond_kwargs."""

    def __init__(self, runner: TensorRTBackend):
        self.runner = runner

    def __call__(self, sample, timestep, encoder_hidden_states, *, added_cond_kwargs=None, timestep_cond=None,
                 return_dict: bool = True, **unused):  # fmt: skip
        if timestep_cond is not None:
            raise GenerateError("TensorRT engines of a UNet take no timestep_cond (an LCM UNet); use --backend compile")
        added = {name: added_cond_kwargs[name] for name in ("text_embeds", "time_ids")} if added_cond_kwargs else {}
        noise = self.runner.unet(sample, timestep, encoder_hidden_states, **added)
        if not return_dict:
            return (noise,)
        from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

        return UNet2DConditionOutput(sample=noise)


def prepare_tensorrt(pipe, options: BackendOptions = BackendOptions()) -> list[str]:
    """The pipeline's UNet forward run by TensorRT engines (built per input shapes, cached as
    ``tensorrt/`` says); its text encoders and VAE (which SDXL upcasts to float32) stay in torch."""
    pipe.unet.forward = TensorRTForward(TensorRTBackend(pipe.text_encoder, pipe.unet, pipe.vae, options))
    return ["unet: TensorRT engines"]


@dataclass(frozen=True)
class Backend:
    name: str
    factory: Callable[..., object] | None  # None: not part of this version
    description: str
    # (diffusers pipeline, options) -> what was applied; None: only the StableRepPipeline families
    prepare: Callable[..., list[str]] | None = None


BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend("eager", EagerBackend, "diffusers modules with SDPA, fused QKV and channels_last", prepare_eager),
        Backend("compile", CompileBackend, "torch.compile of the denoiser and VAE decoder (CUDA graphs on GPU)", prepare_compile),
        Backend("tensorrt", TensorRTBackend, "TensorRT engines", prepare_tensorrt),
    )
}

# Preference order of "auto", fastest first, per device type: the first available one runs.
AUTO_ORDER: dict[str, tuple[str, ...]] = {
    "cuda": ("tensorrt", "compile", "eager"),
    "cpu": ("eager",),
}


def unavailable_reason(name: str, device: torch.device) -> str | None:
    """None when backend ``name`` can run on ``device``, else why not (one line)."""
    if BACKENDS[name].factory is None:
        return f"the {BACKENDS[name].description} backend is not part of this version of stablerep_fast"
    if name == "tensorrt":
        if device.type != "cuda":
            return "TensorRT engines run on NVIDIA GPUs only (use --device cuda)"
        reason = tensorrt_unavailable_reason()
        if reason is not None:
            return reason
    if name in ("tensorrt", "compile") and device.type == "cuda" and not torch.cuda.is_available():
        return "no CUDA GPU is visible"
    return None


def resolve_backend(name: str, device: torch.device, family: Family | None = None) -> Backend:
    """Backend ``name`` (checked), or for "auto" the first available one in AUTO_ORDER that covers
    ``family`` (None: the SD 1.x/2.x families), with a note when TensorRT is passed over."""
    covered = family is None or family.tensorrt
    if name == "auto":  # eager ends every order and always runs
        available = [c for c in AUTO_ORDER.get(device.type, ("eager",)) if unavailable_reason(c, device) is None]
        name = next(c for c in available if covered or c != "tensorrt")
        if not covered and "tensorrt" in available:
            log.warning(f"note: {family_reason(family)}; running on {name}")
    if name not in BACKENDS:
        raise GenerateError(f"unknown backend {name!r}; choose one of {['auto', *BACKENDS]}")
    reason = unavailable_reason(name, device)
    if reason is not None:
        raise GenerateError(f"backend {name!r} cannot run on {device.type}: {reason}")
    if name == "tensorrt" and not covered:
        raise GenerateError(f"backend 'tensorrt': {family_reason(family)}; use --backend compile or auto")
    return BACKENDS[name]


def family_reason(family: Family) -> str:
    """One line: what the TensorRT backend covers and that ``family`` is not among them."""
    return f"TensorRT engines cover {tensorrt_families()}, not {family.description}"
