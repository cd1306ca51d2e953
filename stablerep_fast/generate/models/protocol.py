"""What a generator is: the protocol every image generator satisfies, and what it returns.

A generator turns B captions and their initial noise into B x K images. ``generate`` and online
generation (``data/online.py``) only call what ``Generator`` names, so the Stable Diffusion
pipeline, the procedural worlds and a user's own class are used the same way: per-(caption, k)
seeds, shards, resume, the farm split and latent-neighbour views all work for any of them.

    class MyGenerator:
        model_id = "my-generator"                      # recorded in dataset.json and KEY.json
        def latent_shape(self, resolution): return (4, resolution // 8, resolution // 8)
        def __call__(self, prompts, latents, *, resolution, output_size, **options):
            ...                                        # latents: [B, K, *latent_shape]
            return GenerationOutput(images)            # uint8 [B, K, output_size, output_size, 3]

``load_generator("my_pkg.my_module:MyGenerator")`` (``loader.py``) imports the class and
instantiates it with no arguments (``--model`` on the command line). Online generation also
uses two optional attributes: ``make_captions(n, seed)`` (the generator's own captions) and
``default_resolution``.

Beside the protocol, the helpers that keep a generator to it: ``check_latents`` and
``to_uint8_images`` (inside a generator), ``step_generators`` (a stochastic sampler's noise
from each image's own latent), ``checked_latent_shape`` and ``generated_images`` (around a call
to any generator, turning an error it raises or a broken answer into a one-line error naming it).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F

from stablerep_fast.errors import GenerateError, StableRepError, first_line


@dataclass
class GenerationOutput:
    images: np.ndarray  # uint8 [B, K, S, S, 3]


@runtime_checkable
class Generator(Protocol):
    """B captions x K initial noises -> B x K images.

    ``__call__`` is given ``resolution`` (pixels to generate at), ``output_size`` (pixels of the
    saved images), ``num_inference_steps`` and ``guidance_scale`` as keywords; a generator
    without a denoising loop ignores the last two. A generator may say which steps and guidance
    suit it (``default_steps``, ``default_guidance``: used when the user gives none). Images must depend only on (prompt, latent),
    not on the batch they come in, for resume and farm splits to give the same dataset."""

    model_id: str

    def latent_shape(self, resolution: int) -> tuple[int, ...]:
        """Shape of one image's initial noise (standard normal) at ``resolution`` pixels;
        raise ValueError for a resolution the generator cannot make."""
        ...

    def __call__(self, prompts: list[str], latents: torch.Tensor, **options) -> GenerationOutput:
        """prompts: B captions; latents: float32 [B, K, *latent_shape] -> images uint8 [B, K, S, S, 3]."""
        ...


def check_latents(prompts: list[str], latents: torch.Tensor, latent_shape: tuple[int, ...]) -> tuple[int, int]:
    """(B, K) of ``latents``, which must be [len(prompts), K, *latent_shape]; else ValueError."""
    expected = (len(prompts), *latent_shape)
    if latents.dim() != 2 + len(latent_shape) or (latents.shape[0], *latents.shape[2:]) != expected:
        raise ValueError(f"latents must be [{expected[0]}, K, {', '.join(map(str, expected[1:]))}], got {tuple(latents.shape)}")
    return latents.shape[0], latents.shape[1]


def to_uint8_images(images: torch.Tensor, size: int) -> np.ndarray:
    """images: float [N, 3, H, W] in [0, 1] -> uint8 [N, size, size, 3] (antialiased bicubic)."""
    if images.shape[-1] != size or images.shape[-2] != size:
        images = F.interpolate(images, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    images = (images.clamp(0, 1) * 255).round().to(torch.uint8)
    return images.permute(0, 2, 3, 1).cpu().numpy()


def step_generators(latents: torch.Tensor) -> list[torch.Generator]:
    """One CPU ``torch.Generator`` per image for a stochastic sampler's noise (LCM, ancestral
    Euler, DDIM with eta > 0), seeded from a hash of the image's initial noise ``latents[i]``
    (float32, one image per row): that noise depends only on (seed, caption, k), so the
    sampler's draws do too, whatever the batch."""
    rows = latents.detach().to("cpu", torch.float32).contiguous().reshape(latents.shape[0], -1)
    return [
        torch.Generator("cpu").manual_seed(
            int.from_bytes(hashlib.blake2b(row.numpy().tobytes(), digest_size=8).digest(), "little") >> 1
        )
        for row in rows
    ]


def backend_name(generator: Generator) -> str:
    """The backend a generator runs its networks on (``"custom"`` when it does not say)."""
    return str(getattr(generator, "backend", "custom"))


def describe(generator: Generator) -> str:
    """A generator as error messages name it: its model_id and class (``blobs-v1 (my_pkg.blobs:Blobs)``)."""
    kind = type(generator)
    return f"{generator.model_id} ({kind.__module__}:{kind.__qualname__})"


def checked_latent_shape(generator: Generator, resolution: int) -> tuple[int, ...]:
    """``generator.latent_shape(resolution)``, which must be a tuple of ints >= 1; a resolution
    it refuses (ValueError), another error it raises or a bad answer is a GenerateError naming it."""
    try:
        shape = tuple(int(d) for d in generator.latent_shape(resolution))
    except ValueError as exc:
        raise GenerateError(f"{generator.model_id}: {exc}") from exc
    except TypeError as exc:
        raise GenerateError(f"{generator.model_id}: latent_shape({resolution}) must return a tuple of ints ({exc})") from exc
    except StableRepError:
        raise
    except Exception as exc:  # noqa: BLE001 - the generator's own code: one line naming it
        raise GenerateError(f"generator {describe(generator)}: latent_shape({resolution}) raised {first_line(exc)}; "
                            "fix the generator") from exc  # fmt: skip
    if any(d < 1 for d in shape):
        raise GenerateError(f"generator {describe(generator)}: latent_shape({resolution}) returned {shape}; every "
                            "dimension must be >= 1: fix the generator")  # fmt: skip
    return shape


def generated_images(generator: Generator, prompts: list[str], latents: torch.Tensor, expected: tuple[int, ...],
                     **options) -> np.ndarray:  # fmt: skip
    """``generator(prompts, latents, **options)``'s images, which must be uint8 ``expected``
    [B, K, S, S, 3]; an error the generator raises (its cause kept) or a broken answer is a
    GenerateError naming it."""
    try:
        output = generator(prompts, latents, **options)
    except StableRepError:
        raise
    except Exception as exc:  # noqa: BLE001 - the generator's own code: one line naming it
        advice = "lower the batch size" if isinstance(exc, torch.cuda.OutOfMemoryError) else "fix the generator"
        raise GenerateError(f"generator {describe(generator)} failed on {len(prompts)} captions from {prompts[0][:40]!r} "
                            f"({first_line(exc)}); {advice}") from exc  # fmt: skip
    images = getattr(output, "images", None)
    if images is None:
        raise GenerateError(f"generator {generator.model_id} returned a {type(output).__name__}, not a GenerationOutput(images)")
    if not isinstance(images, np.ndarray) or images.shape != expected or images.dtype != np.uint8:
        raise GenerateError(
            f"generator {generator.model_id} returned images of shape {getattr(images, 'shape', None)} and dtype "
            f"{getattr(images, 'dtype', None)}; expected a uint8 numpy array of shape {expected} (B, K, save size, save size, 3)"
        )
    return images
