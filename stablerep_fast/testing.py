"""Helpers for tests and benchmarks, outside the library's import path.

``random_sd_components``: Stable Diffusion components with random weights, built from configs
(nothing downloaded). Speed does not depend on the weights, so benchmarks time SD 1.5's exact
layout this way, and tests run a tiny model of the same layout in seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

# Printable ASCII, each also as a word end: a byte-level BPE vocabulary with no merges.
_CHARS = [chr(i) for i in range(33, 127)]


def _tokenizer(folder: Path):
    """CLIP's tokenizer class over printable ASCII (vocabulary files written to ``folder``)."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for token in _CHARS + [c + "</w>" for c in _CHARS]:
        vocab[token] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)


def random_sd_components(kind: str, folder: Path) -> dict:
    """Tokenizer, text encoder, UNet, VAE and DDIM scheduler with random weights (on the CPU).

    kind "sd15": the Stable Diffusion 1.5 architecture (860M-parameter UNet, CLIP ViT-L/14 text
    encoder, 4-level VAE); "tiny": the same layout a few channels wide (tests' stand-in).
    """
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = _tokenizer(folder)
    torch.manual_seed(0)
    if kind == "sd15":
        text = CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                              num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu")  # fmt: skip
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)  # the SD 1.x UNet
        vae = AutoencoderKL(
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(128, 256, 512, 512),
            layers_per_block=2,
            latent_channels=4,
            sample_size=512,
        )
    elif kind == "tiny":
        text = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                              num_attention_heads=4, max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
                              pad_token_id=1)  # fmt: skip
        unet = UNet2DConditionModel(
            sample_size=16,
            block_out_channels=(8, 16),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=4,
            norm_num_groups=8,
        )
        vae = AutoencoderKL(
            block_out_channels=(8, 16),
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2,
            latent_channels=4,
            layers_per_block=1,
            norm_num_groups=8,
        )
    else:
        raise ValueError(f"unknown random model {kind!r}; choose sd15 or tiny")
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)  # fmt: skip
    return dict(tokenizer=tokenizer, text_encoder=CLIPTextModel(text), unet=unet, vae=vae, scheduler=scheduler)
