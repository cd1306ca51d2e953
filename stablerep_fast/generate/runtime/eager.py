"""The ``eager`` backend: the diffusers modules themselves, with cheap, numerically safe speed-ups.

The convolutional networks (a UNet denoiser, the VAE) get PyTorch's SDPA attention and fused
QKV projections where the module offers them and, on GPU, the channels_last memory format
(NHWC convolutions run on tensor cores without transposes). A transformer denoiser (SD3,
PixArt, FLUX) keeps the attention processors its family sets (joint attention in SD3 and
FLUX). fp16/bf16 come from the modules' dtype. The compile backend starts from here.
"""

from __future__ import annotations

import torch
from torch.nn import Module

from stablerep_fast.generate.runtime.networks import BackendOptions, Networks


def is_unet(module: Module) -> bool:
    """Whether ``module`` is a convolutional UNet (its config lists the blocks' channels), not a transformer."""
    return "block_out_channels" in getattr(module, "config", {})


def setup_eager(networks: Networks, options: BackendOptions = BackendOptions()) -> list[str]:
    """Apply the speed-ups of the module doc in place; returns what was applied."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    convolutional = [("unet", networks.denoiser)] if is_unet(networks.denoiser) else []
    convolutional.append(("vae", networks.vae))
    applied = []
    for name, module in convolutional:
        try:
            module.set_attn_processor(AttnProcessor2_0())  # PyTorch SDPA (flash / memory-efficient kernels)
            applied.append(f"{name}: sdpa")
            module.fuse_qkv_projections()  # one matmul for q, k, v (k, v in cross-attention)
            applied.append(f"{name}: fused qkv")
        except (AttributeError, ValueError, NotImplementedError):
            pass  # a module without these (or with added KV projections) keeps its processors
    if networks.vae.device.type == "cuda":
        for _, module in convolutional:
            module.to(memory_format=torch.channels_last)
        applied.append("channels_last")
    return applied
