"""Helpers for tests and benchmarks, outside the library's import path.

``random_sd_components``: Stable Diffusion components with random weights, built from configs
(nothing downloaded). Speed does not depend on the weights, so benchmarks time SD 1.5's (and
SD-Turbo's) exact layout this way, and tests run a tiny model of the same layout in seconds.
``random_pipeline``: a tiny random-weight diffusers pipeline of any family of
``generate/models/families.py`` (SDXL, SD3, PixArt, FLUX, LCM, turbo, ...), tokenizers included.
``random_clip_folder``: an OpenCLIP folder of random weights, as ``generate --score clip:FOLDER`` reads.
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


def _t5_tokenizer():
    """T5's tokenizer class over printable ASCII: a unigram vocabulary built in memory."""
    from transformers import T5TokenizerFast

    pieces = ["<pad>", "</s>", "<unk>", "\u2581"] + _CHARS + ["\u2581" + c for c in _CHARS]
    return T5TokenizerFast(vocab=[(piece, 0.0 if i < 3 else -1.0) for i, piece in enumerate(pieces)], extra_ids=0)


def _clip_text(tokenizer, width: int, *, projection: bool = False, layers: int = 2):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=width, intermediate_size=37, num_hidden_layers=layers,
                            num_attention_heads=4, max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
                            pad_token_id=1, projection_dim=width)  # fmt: skip
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


def _t5_text(tokenizer, width: int = 32):
    from transformers import T5Config, T5EncoderModel

    config = T5Config(vocab_size=len(tokenizer), d_model=width, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                      relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1)  # fmt: skip
    return T5EncoderModel(config)


def _tiny_vae(latent_channels: int = 4, **flow):
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=latent_channels, layers_per_block=1,
                         norm_num_groups=8, **flow)  # fmt: skip


def _tiny_unet(cross_attention_dim: int = 32, **extra):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(sample_size=16, block_out_channels=(8, 16), layers_per_block=1,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=cross_attention_dim,
                                attention_head_dim=4, norm_num_groups=8, **extra)  # fmt: skip


# Families random_pipeline builds, and the name of the folder each is saved under (families.py
# reads "turbo" from the folder name).
RANDOM_FAMILIES = ("sd1", "sd2", "sd-turbo", "sd-lcm", "lcm", "sdxl", "sdxl-turbo", "sd3", "pixart", "flux", "flux-schnell")


def random_pipeline(family: str, folder: Path):
    """A tiny random-weight diffusers pipeline of ``family`` (one of RANDOM_FAMILIES), on the
    CPU in float32, built from configs (nothing downloaded); ``folder`` receives tokenizer files.
    Save it with ``save_pretrained(folder / family)``: the folder name carries "turbo"."""
    import diffusers
    from diffusers import (DDIMScheduler, EulerAncestralDiscreteScheduler, EulerDiscreteScheduler,
                           FlowMatchEulerDiscreteScheduler, LCMScheduler)  # fmt: skip

    if family not in RANDOM_FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose one of {RANDOM_FAMILIES}")
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    clip = _tokenizer(folder)
    sd_scheduler = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    flow_vae = dict(shift_factor=0.0609, scaling_factor=1.5035, use_quant_conv=False, use_post_quant_conv=False)
    sd = dict(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    if family in ("sd1", "sd-lcm", "lcm"):
        unet = _tiny_unet(time_cond_proj_dim=32 if family == "lcm" else None)
        parts = dict(tokenizer=clip, text_encoder=_clip_text(clip, 32), unet=unet, vae=_tiny_vae(), **sd)
        if family == "sd1":
            return diffusers.StableDiffusionPipeline(**parts, scheduler=DDIMScheduler(**sd_scheduler, clip_sample=False))
        scheduler = LCMScheduler(**sd_scheduler, timestep_spacing="leading", original_inference_steps=50)
        cls = diffusers.LatentConsistencyModelPipeline if family == "lcm" else diffusers.StableDiffusionPipeline
        return cls(**parts, scheduler=scheduler)
    if family in ("sd2", "sd-turbo"):  # SD 2.x: a 1024-wide text encoder, v-prediction (SD-Turbo: epsilon, trailing Euler)
        unet = _tiny_unet(cross_attention_dim=1024, use_linear_projection=True)
        if family == "sd2":
            scheduler = DDIMScheduler(**sd_scheduler, clip_sample=False, prediction_type="v_prediction")
        else:
            scheduler = EulerDiscreteScheduler(**sd_scheduler, timestep_spacing="trailing")
        return diffusers.StableDiffusionPipeline(tokenizer=clip, text_encoder=_clip_text(clip, 1024, layers=1), unet=unet,
                                                 vae=_tiny_vae(), scheduler=scheduler, **sd)  # fmt: skip
    if family in ("sdxl", "sdxl-turbo"):  # two CLIP encoders (64 = 32 + 32 wide context), size/crop conditioning
        unet = _tiny_unet(cross_attention_dim=64, use_linear_projection=True, addition_embed_type="text_time",
                          addition_time_embed_dim=8, projection_class_embeddings_input_dim=6 * 8 + 32)  # fmt: skip
        if family == "sdxl":
            scheduler = EulerDiscreteScheduler(**sd_scheduler)
        else:
            scheduler = EulerAncestralDiscreteScheduler(**sd_scheduler, timestep_spacing="trailing")
        return diffusers.StableDiffusionXLPipeline(vae=_tiny_vae(), text_encoder=_clip_text(clip, 32), tokenizer=clip,
                                                   text_encoder_2=_clip_text(clip, 32, projection=True), tokenizer_2=clip,
                                                   unet=unet, scheduler=scheduler)  # fmt: skip
    t5 = _t5_tokenizer()
    if family == "sd3":  # MMDiT over two CLIP (16 + 16 wide) and T5 (32 wide) text streams
        transformer = diffusers.SD3Transformer2DModel(sample_size=16, patch_size=2, in_channels=4, num_layers=1,
                                                      attention_head_dim=8, num_attention_heads=4, joint_attention_dim=32,
                                                      caption_projection_dim=32, pooled_projection_dim=32, out_channels=4,
                                                      pos_embed_max_size=32)  # fmt: skip
        return diffusers.StableDiffusion3Pipeline(
            transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=_tiny_vae(**flow_vae),
            text_encoder=_clip_text(clip, 16, projection=True), tokenizer=clip,
            text_encoder_2=_clip_text(clip, 16, projection=True), tokenizer_2=clip, text_encoder_3=_t5_text(t5), tokenizer_3=t5,
        )  # fmt: skip
    if family == "pixart":  # DiT with cross-attention to T5, learned sigma (8 = 2 x 4 output channels)
        transformer = diffusers.PixArtTransformer2DModel(sample_size=16, num_layers=1, patch_size=2, attention_head_dim=8,
                                                         num_attention_heads=3, caption_channels=32, in_channels=4,
                                                         cross_attention_dim=24, out_channels=8)  # fmt: skip
        return diffusers.PixArtSigmaPipeline(tokenizer=t5, text_encoder=_t5_text(t5), vae=_tiny_vae(),
                                             transformer=transformer, scheduler=DDIMScheduler())  # fmt: skip
    # FLUX: 2 x 2 packed latents (16 = 4 x 4 channels), CLIP pooled + T5 sequence; dev embeds guidance
    transformer = diffusers.FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                                   attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                                   pooled_projection_dim=32, guidance_embeds=family == "flux",
                                                   axes_dims_rope=(4, 4, 8))  # fmt: skip
    return diffusers.FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=_tiny_vae(**flow_vae),
                                  text_encoder=_clip_text(clip, 32), tokenizer=clip, text_encoder_2=_t5_text(t5),
                                  tokenizer_2=t5, transformer=transformer)  # fmt: skip


def random_sd_components(kind: str, folder: Path) -> dict:
    """Tokenizer, text encoder, UNet, VAE and scheduler with random weights (on the CPU).

    kind "sd15": the Stable Diffusion 1.5 architecture (860M-parameter UNet, CLIP ViT-L/14 text
    encoder, 4-level VAE); "sd-turbo": SD-Turbo's (SD 2.1: a 1024-wide UNet with linear
    projections, OpenCLIP ViT-H/14 text encoder; trailing Euler); "tiny": SD 1.5's layout a few
    channels wide (tests' stand-in).
    """
    from diffusers import AutoencoderKL, DDIMScheduler, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = _tokenizer(folder)
    torch.manual_seed(0)
    if kind in ("sd15", "sd-turbo"):
        if kind == "sd15":
            text = CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                  num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu")  # fmt: skip
            unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)  # the SD 1.x UNet
        else:  # SD 2.1's text encoder keeps 23 of OpenCLIP-H's 24 layers
            text = CLIPTextConfig(vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
                                  num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu",
                                  projection_dim=512)  # fmt: skip
            unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20),
                                        use_linear_projection=True)  # fmt: skip
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
        raise ValueError(f"unknown random model {kind!r}; choose sd15, sd-turbo or tiny")
    if kind == "sd-turbo":
        scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                           timestep_spacing="trailing")  # fmt: skip
    else:
        scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                                  set_alpha_to_one=False, steps_offset=1)  # fmt: skip
    return dict(tokenizer=tokenizer, text_encoder=CLIPTextModel(text), unet=unet, vae=vae, scheduler=scheduler)


def random_clip_folder(folder: Path, model_cfg: dict | str = "ViT-B-32") -> Path:
    """Write an OpenCLIP hub-style folder (``open_clip_config.json`` and ``open_clip_pytorch_model.bin``)
    of random weights into ``folder``: ``model_cfg`` a CLIP config dict or the name of one of
    OpenCLIP's own (``open_clip.get_model_config``). Returns ``folder``."""
    import open_clip

    config = open_clip.get_model_config(model_cfg) if isinstance(model_cfg, str) else model_cfg
    if config is None:
        raise ValueError(f"OpenCLIP has no model config named {model_cfg!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": config}))
    torch.save(open_clip.model.CLIP(**config).state_dict(), folder / "open_clip_pytorch_model.bin")
    return folder
