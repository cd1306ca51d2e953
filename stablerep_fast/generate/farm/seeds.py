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


def attempt_index(image_index: int, attempt: int, images_per_caption: int) -> int:
    """The image index whose noise seed attempt ``attempt`` of image ``image_index`` uses: attempt 0
    is the image itself; ``generate --regenerate-below`` redraws a low-scoring image k of a caption
    with K images from index k + attempt * K, an index no other image of the caption uses."""
    return image_index + attempt * images_per_caption


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
    images = [[(i, k) for k in range(images_per_caption)] for i in caption_indices]
    return image_noise(seed, images, shape, views=views, latent_std=latent_std)


def image_noise(
    seed: int,
    images: list[list[tuple[int, int]]],
    shape: tuple[int, ...],
    *,
    views: str = "independent",
    latent_std: float = 0.5,
) -> torch.Tensor:
    """The noise of any images, float32 [len(images), len(images[0]), *shape]: ``images[b][j]`` is
    a (caption index, image index) pair, drawn as ``initial_noise`` draws it (around its own
    caption's anchor under "latent-neighbors")."""
    if views not in VIEWS:
        raise ValueError(f"views must be one of {VIEWS}, got {views!r}")
    noise = torch.stack([torch.stack([_normal(noise_seed(seed, i, k), shape) for i, k in row]) for row in images])
    if views == "latent-neighbors":
        anchors = torch.stack([torch.stack([_normal(noise_seed(seed, i, ANCHOR), shape) for i, _ in row]) for row in images])
        noise = (anchors + latent_std * noise) / math.sqrt(1.0 + latent_std**2)
    return noise
