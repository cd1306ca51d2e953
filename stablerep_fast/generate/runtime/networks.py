"""What a backend is given: the networks of one pipeline, and where it may keep what it builds."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from torch.nn import Module


@dataclass(frozen=True)
class Networks:
    """The networks a pipeline calls, on their device and dtype; a backend speeds them up in
    place (``runtime/backends.py``), so the pipeline calls them as it always does: the denoiser
    like a diffusers UNet or transformer, ``vae.decode(latents, return_dict=False)``, the text
    encoder like a transformers CLIP text model."""

    denoiser: Module  # the UNet or transformer, called once per denoising step
    vae: Module  # an AutoencoderKL: its ``decode`` is called once per batch
    # The text encoder of a pipeline that runs the whole model in the modules' dtype
    # (StableRepPipeline's own loop): TensorRT then runs it and the VAE decoder on engines too.
    # None: diffusers' own pipeline, whose text encoders and VAE (SDXL upcasts it to float32)
    # TensorRT leaves to torch.
    text_encoder: Module | None = None
    # The pipeline's calls put the batch first in the first argument and in every keyword tensor
    # with as many rows (StableRepPipeline's do): a smaller batch may then be padded to the
    # largest one seen, so one compiled graph serves every call.
    static_batch: bool = False


@dataclass(frozen=True)
class BackendOptions:
    """What a backend may need beside the networks."""

    cache_dir: Path | None = None  # compiled artefacts and engines; None: default_cache_dir()
    weights_files: dict[str, list[Path]] | None = None  # checkpoint files per component: TensorRT cache keys


def default_cache_dir() -> Path:
    """Where compiled artefacts and engines are kept: $STABLEREP_FAST_CACHE, else
    $XDG_CACHE_HOME/stablerep_fast, else ~/.cache/stablerep_fast."""
    if os.environ.get("STABLEREP_FAST_CACHE"):
        return Path(os.environ["STABLEREP_FAST_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "stablerep_fast"
