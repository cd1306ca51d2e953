"""Any diffusers text-to-image pipeline as a Generator: diffusers' own ``__call__`` with our noise.

Families without a fast path of their own here (SDXL, SDXL-Turbo, SD3, PixArt, FLUX, LCM, and
other diffusers text-to-image pipelines) run through the pipeline diffusers maintains for them:
one call per B captions with ``num_images_per_prompt=K``, ``latents=`` the B x K initial noises
(each from its own (seed, caption, k), ``farm/seeds.py``), ``generator=`` one step-noise generator
per image (``protocol.step_generators``), the steps, guidance and scheduler of the family
(``families.py``) unless told otherwise, and ``output_type="pt"``. So every image depends only
on its caption and seeds, whatever the batch, like the SD 1.x pipeline's.

FLUX denoises packed latents (2 x 2 patches as tokens); its initial noise is drawn as the
unpacked tensor [C, h, w] (so latent-neighbour views work the same way) and packed by the
pipeline's own ``_pack_latents`` before the call.

    load_diffusers_model(path, device=..., dtype=...)    a folder or checkpoint -> its Generator
"""

from __future__ import annotations

import inspect
from pathlib import Path

import torch

from stablerep_fast.errors import GenerateError, first_line
from stablerep_fast.generate.models.families import (
    FAMILIES,
    MODEL_SCHEDULER,
    Family,
    call_defaults,
    detect_family,
    make_scheduler,
    scheduler_class_name,
    unsupported_backends,
)
from stablerep_fast.generate.models.pipeline import StableRepPipeline
from stablerep_fast.generate.models.protocol import GenerationOutput, check_latents, step_generators, to_uint8_images
from stablerep_fast.generate.runtime.backends import resolve_backend
from stablerep_fast.generate.runtime.networks import BackendOptions, Networks

def denoiser_of(pipe) -> torch.nn.Module:
    """The network a diffusers pipeline calls at every step: its transformer, else its UNet."""
    return getattr(pipe, "transformer", None) or pipe.unet


# Call options some pipelines take: PixArt's resolution binning would change the asked size,
# and its caption cleaning needs extra packages and would change the captions.
CALL_EXTRAS = {"use_resolution_binning": False, "clean_caption": False}


class DiffusersGenerator:
    """B captions x K given noises -> B x K images through a diffusers pipeline's ``__call__``.

    ``pipe``: the loaded pipeline on its device and dtype; ``family``: its defaults; ``backend``:
    "eager", "compile", or for SDXL "tensorrt" (its UNet; other families: a one-line error);
    ``weights_files``: the UNet's checkpoint files, which key its TensorRT engines."""

    def __init__(
        self,
        pipe,
        family: Family,
        *,
        model_id: str,
        backend: str = "auto",
        cache_dir: Path | None = None,
        weights_files: dict[str, list[Path]] | None = None,
    ):
        self.pipe = pipe
        self.family = family
        self.model_id = model_id
        self.denoiser = denoiser_of(pipe)
        self.device, self.dtype = self.denoiser.device, self.denoiser.dtype
        own_steps, own_guidance = call_defaults(pipe.__call__)
        self.default_steps = own_steps if family.steps is None else family.steps
        self.default_guidance = own_guidance if family.guidance is None else family.guidance
        self.packed = hasattr(pipe, "_pack_latents")  # FLUX: tokens of 2 x 2 latent patches
        self.call_parameters = inspect.signature(pipe.__call__).parameters
        pipe.set_progress_bar_config(disable=True)
        spec = resolve_backend(backend, self.device, unsupported_backends(family))
        self.backend = spec.name
        self.optimisations = spec.setup(Networks(denoiser=self.denoiser, vae=pipe.vae), BackendOptions(cache_dir, weights_files))

    @property
    def scheduler(self):
        return self.pipe.scheduler

    @classmethod
    def from_pretrained(
        cls,
        folder: Path,
        family: Family,
        *,
        device: torch.device,
        dtype: torch.dtype,
        backend: str = "auto",
        cache_dir: Path | None = None,
        scheduler: str | None = None,
    ) -> DiffusersGenerator:
        """Load a local diffusers pipeline folder (offline) of ``family``, its scheduler as
        ``families.make_scheduler`` says."""
        from diffusers import DiffusionPipeline

        resolve_backend(backend, device, unsupported_backends(family))  # an unavailable backend fails before minutes of loading
        try:
            pipe = DiffusionPipeline.from_pretrained(str(folder), dtype=dtype, local_files_only=True)
        except (OSError, ValueError, KeyError, TypeError, RuntimeError, AttributeError) as exc:
            raise GenerateError(f"cannot load {family.description} model {folder}: {first_line(exc)}") from exc
        missing = [name for name in ("vae", "scheduler") if getattr(pipe, name, None) is None]
        if missing or getattr(pipe, "transformer", None) is None and getattr(pipe, "unet", None) is None:
            raise GenerateError(
                f"--model {folder}: {type(pipe).__name__} is not a text-to-image pipeline of latents "
                f"(it lacks {', '.join(missing) or 'a unet or transformer'})"
            )
        pipe.scheduler = make_scheduler(pipe.scheduler, family, scheduler)
        pipe.to(device)
        unet_files = sorted(p for p in (folder / "unet").glob("*") if p.is_file())  # TensorRT engines are keyed on them
        return cls(pipe, family, model_id=str(folder), backend=backend, cache_dir=cache_dir, weights_files={"unet": unet_files})

    def resolution_multiple(self) -> int:
        """Pixels the resolution must be a multiple of: the VAE's factor times the denoiser's
        (its patch size, FLUX's 2 x 2 packing, a UNet's downsamplings)."""
        config = self.denoiser.config
        if "block_out_channels" in config:  # a UNet halves the latent once per down block but the last
            factor = 2 ** (len(config.block_out_channels) - 1)
        else:
            factor = (config.get("patch_size") or 1) * (2 if self.packed else 1)
        return self.pipe.vae_scale_factor * factor

    def latent_shape(self, resolution: int) -> tuple[int, ...]:
        """Shape of one image's (unpacked) initial noise at ``resolution`` pixels (checked)."""
        multiple = self.resolution_multiple()
        if resolution % multiple != 0:
            raise GenerateError(f"resolution must be a multiple of {multiple} for this model, got {resolution}")
        channels = self.denoiser.config.in_channels // (4 if self.packed else 1)
        side = resolution // self.pipe.vae_scale_factor
        return (channels, side, side)

    @torch.inference_mode()
    def __call__(
        self,
        prompts: list[str],
        latents: torch.Tensor,
        *,
        resolution: int,
        output_size: int,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
    ) -> GenerationOutput:
        """prompts: B captions; latents: initial noise [B, K, *latent_shape] (standard normal) ->
        images uint8 [B, K, output_size, output_size, 3]. None: the family's steps or guidance."""
        # 1. Check inputs.
        batch, k = check_latents(prompts, latents, self.latent_shape(resolution))

        # 2. The noise as the pipeline takes it: one image per row, in the model's dtype (as
        # diffusers draws its own), FLUX's packed into tokens.
        flat = latents.flatten(0, 1)
        x = flat.to(self.device, self.dtype)
        if self.packed:
            x = self.pipe._pack_latents(x, *x.shape)

        # 3. Denoise and decode: diffusers' own loop.
        options = dict(
            prompt=list(prompts),
            num_images_per_prompt=k,
            latents=x,
            generator=step_generators(flat),
            height=resolution,
            width=resolution,
            num_inference_steps=self.default_steps if num_inference_steps is None else num_inference_steps,
            guidance_scale=self.default_guidance if guidance_scale is None else guidance_scale,
            output_type="pt",
            **CALL_EXTRAS,
        )
        images = self.pipe(**{name: value for name, value in options.items() if name in self.call_parameters}).images

        # 4. Resize to the saved size and convert.
        return GenerationOutput(to_uint8_images(images.float(), output_size).reshape(batch, k, output_size, output_size, 3))


def load_diffusers_model(
    model: str | Path,
    *,
    device: torch.device,
    dtype: torch.dtype,
    backend: str = "auto",
    cache_dir: Path | None = None,
    scheduler: str | None = None,
):
    """The Generator of a local diffusers folder (any text-to-image family, ``families.py``) or of
    a single-file SD 1.x/2.x checkpoint: the families with a fast path run on StableRepPipeline's
    own loop, the others through diffusers' ``__call__`` (DiffusersGenerator)."""
    if scheduler not in (None, MODEL_SCHEDULER):
        scheduler_class_name(scheduler)  # a bad name fails before minutes of loading
    path = Path(model)
    options = dict(device=device, dtype=dtype, backend=backend, cache_dir=cache_dir, scheduler=scheduler)
    if not path.is_dir():  # a checkpoint file, or a path StableRepPipeline explains in one line
        return StableRepPipeline.from_pretrained(model, **options, family=FAMILIES["sd1"])
    if not (path / "model_index.json").is_file():
        raise GenerateError(f"model folder {path} is not a diffusers pipeline (no model_index.json)")
    family, _ = detect_family(path)
    if family.fast_path:
        return StableRepPipeline.from_pretrained(model, **options, family=family)
    return DiffusersGenerator.from_pretrained(path, family, **options)
