"""How a pipeline's networks run: one interface for every pipeline, one table, the rule of "auto".

A backend is a set-up function ``setup(networks, options) -> what it applied``: it takes the
networks of one pipeline (``Networks``: denoiser, VAE, maybe the text encoder, on their device
and dtype) and speeds them up in place, so the pipeline calls them as it always does. The SD
1.x/2.x pipeline's own loop (``models/pipeline.py``) and the families run through diffusers'
own ``__call__`` (``models/diffusers_pipeline.py``) use the same backends the same way; a faster
one plugs in by adding a module and a row to BACKENDS.

- ``eager`` (``eager.py``): the diffusers modules with SDPA attention, fused QKV projections and,
  on GPU, channels_last memory format (fp16/bf16 comes from the modules' dtype).
- ``compile`` (``compiled.py``): eager's modules, the denoiser and VAE decoder under
  ``torch.compile`` with static shapes; on GPU each denoising step replays a CUDA graph.
- ``tensorrt`` (``tensorrt/``): fp16 TensorRT engines, cached on disk; the UNet families only,
  and for a diffusers pipeline (SDXL) the UNet only.
- ``auto``: tensorrt if it imports, a GPU is present and the model can run on it (else a note,
  and compile), else compile on a GPU, else eager.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Callable

import torch

from stablerep_fast.errors import GenerateError
from stablerep_fast.generate.runtime.compiled import setup_compile
from stablerep_fast.generate.runtime.eager import setup_eager
from stablerep_fast.generate.runtime.networks import BackendOptions, Networks
from stablerep_fast.generate.runtime.tensorrt.forwards import setup_tensorrt
from stablerep_fast.generate.runtime.tensorrt.runner import tensorrt_unavailable_reason

log = logging.getLogger("stablerep_fast.generate")


@dataclass(frozen=True)
class Backend:
    name: str
    setup: Callable[[Networks, BackendOptions], list[str]]  # speeds the networks up in place; returns what it applied
    description: str


BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend("eager", setup_eager, "diffusers modules with SDPA, fused QKV and channels_last"),
        Backend("compile", setup_compile, "torch.compile of the denoiser and VAE decoder (CUDA graphs on GPU)"),
        Backend("tensorrt", setup_tensorrt, "TensorRT engines"),
    )
}

# Preference order of "auto", fastest first, per device type: the first available one runs.
AUTO_ORDER: dict[str, tuple[str, ...]] = {
    "cuda": ("tensorrt", "compile", "eager"),
    "cpu": ("eager",),
}


def unavailable_reason(name: str, device: torch.device) -> str | None:
    """None when backend ``name`` can run on ``device``, else why not (one line)."""
    if name == "tensorrt":
        if device.type != "cuda":
            return "TensorRT engines run on NVIDIA GPUs only (use --device cuda)"
        reason = tensorrt_unavailable_reason()
        if reason is not None:
            return reason
    if name in ("tensorrt", "compile") and device.type == "cuda" and not torch.cuda.is_available():
        return "no CUDA GPU is visible"
    return None


def resolve_backend(name: str, device: torch.device, unsupported: Mapping[str, str] | None = None) -> Backend:
    """Backend ``name`` (checked), or for "auto" the first available one in AUTO_ORDER that the
    model supports, with a note when a faster one is passed over. ``unsupported``: the backends
    the model's networks cannot run on -> why, in one line (``families.unsupported_backends``)."""
    unsupported = unsupported or {}
    if name == "auto":  # eager ends every order and always runs
        available = [c for c in AUTO_ORDER.get(device.type, ("eager",)) if unavailable_reason(c, device) is None]
        name = next(c for c in available if c not in unsupported)
        for skipped in available[: available.index(name)]:
            log.warning(f"note: {unsupported[skipped]}; running on {name}")
    if name not in BACKENDS:
        raise GenerateError(f"unknown backend {name!r}; choose one of {['auto', *BACKENDS]}")
    reason = unavailable_reason(name, device)
    if reason is not None:
        raise GenerateError(f"backend {name!r} cannot run on {device.type}: {reason}")
    if name in unsupported:
        others = [b for b in BACKENDS if b != name and b not in unsupported]
        raise GenerateError(f"backend {name!r}: {unsupported[name]}; use --backend auto, {' or '.join(others)}")
    return BACKENDS[name]
