"""How the pipeline's networks run: one small interface, one table, and the rule "auto" follows.

A backend takes the pipeline's modules (already on their device and dtype) and provides the
three calls the denoising loop makes: ``encode_text``, ``unet`` and ``decode``. The pipeline
never depends on which backend runs them, so faster ones (compiled graphs, TensorRT engines)
plug in by adding a class and a row to BACKENDS.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from stablerep_fast.generate.config import GenerateError


class EagerBackend:
    """The modules as they are (diffusers' default attention is PyTorch SDPA)."""

    name = "eager"

    def __init__(self, text_encoder: torch.nn.Module, unet: torch.nn.Module, vae: torch.nn.Module):
        self.text_encoder = text_encoder
        self.unet_module = unet
        self.vae = vae

    def encode_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids: int64 [N, L] -> hidden states [N, L, D]."""
        return self.text_encoder(input_ids)[0]

    def unet(self, latents: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """latents: [N, C, h, w]; timestep: scalar; context: [N, L, D] -> predicted noise [N, C, h, w]."""
        return self.unet_module(latents, timestep, encoder_hidden_states=context, return_dict=False)[0]

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Unscaled latents [N, C, h, w] -> images [N, 3, H, W] in [-1, 1]."""
        return self.vae.decode(latents, return_dict=False)[0]


class CompileBackend(EagerBackend):
    """``torch.compile`` of the UNet and the VAE decoder, static shapes (one graph per batch
    shape: keep the batch size fixed; the last batch of a shard may add one more graph)."""

    name = "compile"

    def __init__(self, text_encoder: torch.nn.Module, unet: torch.nn.Module, vae: torch.nn.Module):
        super().__init__(text_encoder, unet, vae)
        self.unet_module = torch.compile(unet, dynamic=False)
        self._decode = torch.compile(vae.decode, dynamic=False)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self._decode(latents, return_dict=False)[0]


@dataclass(frozen=True)
class Backend:
    name: str
    factory: Callable[..., EagerBackend] | None  # None: not part of this version
    description: str


BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend("eager", EagerBackend, "diffusers modules run as they are"),
        Backend("compile", CompileBackend, "torch.compile of the UNet and VAE decoder"),
        Backend("tensorrt", None, "TensorRT engines"),
    )
}

# Preference order of "auto", fastest first, per device type. "compile" joins once its
# speed-up is measured on a GPU; "tensorrt" is tried first and skipped while unavailable.
AUTO_ORDER: dict[str, tuple[str, ...]] = {
    "cuda": ("tensorrt", "eager"),
    "cpu": ("eager",),
}


def unavailable_reason(name: str, device: torch.device) -> str | None:
    """None when backend ``name`` can run on ``device``, else why not."""
    if BACKENDS[name].factory is None:
        return f"the {BACKENDS[name].description} backend is not part of this version of stablerep_fast"
    return None


def resolve_backend(name: str, device: torch.device) -> Backend:
    """Backend ``name`` (checked), or for "auto" the first available one in AUTO_ORDER."""
    if name == "auto":  # eager ends every order and always runs
        name = next(c for c in AUTO_ORDER.get(device.type, ("eager",)) if unavailable_reason(c, device) is None)
    if name not in BACKENDS:
        raise GenerateError(f"unknown backend {name!r}; choose one of {['auto', *BACKENDS]}")
    reason = unavailable_reason(name, device)
    if reason is not None:
        raise GenerateError(f"backend {name!r} cannot run on {device.type}: {reason}")
    return BACKENDS[name]
