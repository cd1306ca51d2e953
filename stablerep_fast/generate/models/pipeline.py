"""Stable Diffusion 1.x/2.x for StableRep: B captions x K given noises -> B x K images per call.

Reads like a diffusers pipeline (named components ``tokenizer``, ``text_encoder``, ``unet``,
``vae``, ``scheduler``; ``__call__`` in numbered steps) but takes the initial noise as input, so
every image is reproducible from its own seed, and runs its networks through a swappable
backend (``runtime/backends.py``: eager, compile or TensorRT). It satisfies the Generator
protocol (``protocol.py``) and serves the families of ``families.py`` whose ``fast_path`` is set
(SD 1.x, SD 2.x, SD-Turbo, LCM-LoRA-fused SD); the others run through diffusers' own
``__call__`` (``diffusers_pipeline.py``).
"""

from __future__ import annotations

import inspect
from pathlib import Path

import torch

from stablerep_fast.errors import GenerateError, first_line
from stablerep_fast.generate.models.families import FAMILIES, Family, make_scheduler, unsupported_backends
from stablerep_fast.generate.models.protocol import GenerationOutput, check_latents, step_generators, to_uint8_images
from stablerep_fast.generate.runtime.backends import resolve_backend
from stablerep_fast.generate.runtime.networks import BackendOptions, Networks

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")


class StableRepPipeline:
    """Text-to-image with classifier-free guidance and any diffusers scheduler (the family's
    default: DDIM, eta 0, for SD 1.x/2.x). Components: tokenizer, text_encoder, unet, vae,
    scheduler; ``family`` gives the default steps and guidance."""

    def __init__(
        self,
        tokenizer,
        text_encoder,
        unet,
        vae,
        scheduler,
        *,
        model_id: str = "",
        backend: str = "auto",
        cache_dir: Path | None = None,
        weights_files: dict[str, list[Path]] | None = None,
        family: Family = FAMILIES["sd1"],
    ):
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.unet = unet
        self.vae = vae
        self.scheduler = scheduler
        self.model_id = model_id
        self.family = family
        self.default_steps, self.default_guidance = family.steps, family.guidance
        self.device = unet.device
        self.dtype = unet.dtype
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        # The UNet halves the latent once per down block but the last.
        self.latent_multiple = 2 ** (len(unet.config.block_out_channels) - 1)
        for module in (text_encoder, unet, vae):
            module.eval().requires_grad_(False)
        spec = resolve_backend(backend, self.device, unsupported_backends(family))
        self.backend = spec.name
        networks = Networks(denoiser=unet, vae=vae, text_encoder=text_encoder, static_batch=True)
        self.optimisations = spec.setup(networks, BackendOptions(cache_dir, weights_files))
        self._empty_context: torch.Tensor | None = None

    @classmethod
    def from_pretrained(
        cls,
        model: str | Path,
        *,
        device: torch.device,
        dtype: torch.dtype,
        backend: str = "auto",
        cache_dir: Path | None = None,
        family: Family = FAMILIES["sd1"],
        scheduler: str | None = None,
    ) -> StableRepPipeline:
        """Load a local diffusers Stable Diffusion folder or single-file checkpoint (offline),
        with the scheduler ``scheduler`` names (``families.make_scheduler``; None: the family's,
        DDIM with eta 0 for SD 1.x/2.x, the recipe's sampler). ``cache_dir``: where compiled
        artefacts and engines are kept (default: ``runtime.networks.default_cache_dir()``)."""
        from diffusers import StableDiffusionPipeline

        resolve_backend(backend, device, unsupported_backends(family))  # an unavailable backend fails before minutes of loading

        path = Path(model)
        kwargs = dict(dtype=dtype, local_files_only=True, safety_checker=None, requires_safety_checker=False)
        if path.is_dir():
            if not (path / "model_index.json").is_file():
                raise GenerateError(f"model folder {path} is not a diffusers pipeline (no model_index.json)")
            load = StableDiffusionPipeline.from_pretrained
            folders = {"text_encoder": "text_encoder", "unet": "unet", "vae_decoder": "vae"}
            weights_files = {name: sorted(p for p in (path / sub).glob("*") if p.is_file()) for name, sub in folders.items()}
        elif path.is_file() and path.suffix in SINGLE_FILE_SUFFIXES:
            load = StableDiffusionPipeline.from_single_file
            weights_files = {name: [path] for name in ("text_encoder", "unet", "vae_decoder")}
        else:
            raise GenerateError(
                f"--model {model}: not 'shapes', a diffusers folder, a {'/'.join(SINGLE_FILE_SUFFIXES)} checkpoint "
                "or an import path 'package.module:Generator'"
            )
        try:
            sd = load(str(path), **kwargs)
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
            raise GenerateError(f"cannot load Stable Diffusion model {path}: {first_line(exc)}") from exc
        sd.to(device)
        return cls(
            sd.tokenizer,
            sd.text_encoder,
            sd.unet,
            sd.vae,
            make_scheduler(sd.scheduler, family, scheduler),
            model_id=str(model),
            backend=backend,
            cache_dir=cache_dir,
            weights_files=weights_files,
            family=family,
        )

    def latent_shape(self, resolution: int) -> tuple[int, ...]:
        """Shape of one image's initial noise at ``resolution`` pixels (checked)."""
        self.check_resolution(resolution)
        side = resolution // self.vae_scale_factor
        return (self.vae.config.latent_channels, side, side)

    def check_resolution(self, resolution: int) -> None:
        multiple = self.vae_scale_factor * self.latent_multiple
        if resolution % multiple != 0:
            raise GenerateError(f"resolution must be a multiple of {multiple} for this model, got {resolution}")

    def encode_prompt(self, prompts: list[str]) -> torch.Tensor:
        """prompts: B strings -> text embeddings [B, L, D] in the model dtype."""
        input_ids = self.tokenizer(
            prompts, padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids
        return self.text_encoder(input_ids.to(self.device))[0]

    def predict_noise(self, latents: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """One UNet call (as the backend set it up): latents [N, C, h, w] (model dtype), a scalar
        timestep, context [N, L, D] -> predicted noise [N, C, h, w]."""
        return self.unet(latents, timestep, encoder_hidden_states=context, return_dict=False)[0]

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Unscaled latents [N, C, h, w] (model dtype) -> images [N, 3, H, W] in about [-1, 1]."""
        return self.vae.decode(latents, return_dict=False)[0]

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
        """prompts: B captions; latents: initial noise [B, K, C, h, w] (standard normal) ->
        images uint8 [B, K, output_size, output_size, 3]. Guidance: eps = eps_uncond +
        guidance_scale * (eps_cond - eps_uncond) when guidance_scale > 1; at or below 1 (as in
        diffusers) only the conditional pass runs. None: the family's default steps or guidance."""
        num_inference_steps = self.default_steps if num_inference_steps is None else num_inference_steps
        guidance_scale = self.default_guidance if guidance_scale is None else guidance_scale
        # 1. Check inputs.
        batch, k = check_latents(prompts, latents, self.latent_shape(resolution))
        guided = guidance_scale > 1.0

        # 2. Encode the prompts (and the empty prompt once), one context row per image.
        context = self.encode_prompt(prompts).repeat_interleave(k, dim=0)
        if guided:
            if self._empty_context is None:
                self._empty_context = self.encode_prompt([""])
            empty = self._empty_context.expand(batch * k, -1, -1)
            context = torch.cat([empty, context])

        # 3. Prepare the latents: float32 for the scheduler's arithmetic, the model dtype for the UNet.
        # The scheduler's timesteps stay on the CPU (its tables are there: indexing them with a
        # GPU timestep would sync every step); the UNet gets them from one copy on the device.
        self.scheduler.set_timesteps(num_inference_steps, device="cpu")
        timesteps = self.scheduler.timesteps
        unet_timesteps = timesteps.to(self.device, non_blocking=True)
        x = latents.reshape(batch * k, *latents.shape[2:]).to(self.device, torch.float32)
        x = x * self.scheduler.init_noise_sigma
        # A stochastic sampler (LCM, ancestral Euler) draws each image's noise from its own generator.
        takes_generator = "generator" in inspect.signature(self.scheduler.step).parameters
        step_options = {"generator": step_generators(latents.flatten(0, 1))} if takes_generator else {}

        # 4. Denoise: one static batch of B x K images (x2 with guidance) per UNet call.
        for i, t in enumerate(timesteps):
            model_input = self.scheduler.scale_model_input(x, t).to(self.dtype)
            model_input = torch.cat([model_input, model_input]) if guided else model_input
            eps = self.predict_noise(model_input, unet_timesteps[i], context).float()
            if guided:
                eps_uncond, eps_cond = eps.chunk(2)
                eps = eps_uncond + guidance_scale * (eps_cond - eps_uncond)
            x = self.scheduler.step(eps, t, x, **step_options, return_dict=False)[0]

        # 5. Decode.
        images = self.decode((x / self.vae.config.scaling_factor).to(self.dtype))
        images = (images.float() / 2 + 0.5).clamp(0, 1)

        # 6. Resize to the saved size and convert.
        return GenerationOutput(to_uint8_images(images, output_size).reshape(batch, k, output_size, output_size, 3))
