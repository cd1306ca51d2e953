"""Initial noise that depends only on (seed, caption index, image index).

Every image's starting point comes from its own ``torch.Generator`` seeded from a hash of the
three integers, drawn on the CPU, so an image is the same whatever the batch size, the world
size, the rank, the device or how often the run was resumed. (A stochastic sampler's step
noise follows from each image's initial noise: ``models/protocol.step_generators``.)
"""

from __future__ import annotations

import hashlib
import math

import torch

VIEWS = ("independent", "latent-neighbors")

# Image index of a caption's anchor noise under "latent-neighbors"; real images are 0..K-1.
ANCHOR = -1


def noise_seed(seed: int, caption_index: int, image_index: int) -> int:
    """A 63-bit seed for image ``image_index`` of caption ``caption_index`` in run ``seed``."""
    digest = hashlib.blake2b(f"{seed}/{caption_index}/{image_index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def _normal(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    generator = torch.Generator("cpu").manual_seed(seed)
    return torch.randn(shape, generator=generator, dtype=torch.float32)


def initial_noise(
    seed: int,
    caption_indices: list[int],
    images_per_caption: int,
    shape: tuple[int, ...],
    *,
    views: str = "independent",
    latent_std: float = 0.5,
) -> torch.Tensor:
    """Standard-normal starting noise, float32 on the CPU, [len(caption_indices), K, *shape].

    ``views="independent"``: image k of caption i is N(0, I) from ``noise_seed(seed, i, k)``.
    ``views="latent-neighbors"`` (GenRep's latent views, for diffusion): the K noises of caption
    i are neighbours of one anchor x_0 = N(0, I) from ``noise_seed(seed, i, ANCHOR)``,
    x_k = (x_0 + sigma * eps_k) / sqrt(1 + sigma^2) with eps_k from ``noise_seed(seed, i, k)``;
    the division restores unit variance, so each x_k is again exactly N(0, I) distributed and
    corr(x_j, x_k) = 1 / (1 + sigma^2).
    """
    if views not in VIEWS:
        raise ValueError(f"views must be one of {VIEWS}, got {views!r}")
    noise = torch.stack(
        [
            torch.stack([_normal(noise_seed(seed, i, k), shape) for k in range(images_per_caption)])
            for i in caption_indices
        ]
    )
    if views == "latent-neighbors":
        anchors = torch.stack([_normal(noise_seed(seed, i, ANCHOR), shape) for i in caption_indices])
        noise = (anchors.unsqueeze(1) + latent_std * noise) / math.sqrt(1.0 + latent_std**2)
    return noise
