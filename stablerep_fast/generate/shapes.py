"""A procedural caption-to-image generator: the ``--model shapes`` stand-in for Stable Diffusion.

Captions name five attributes, e.g. "a small red striped star on a grey background" (size,
colour, texture, shape, background). Each image of a caption renders that concept with its own
variation (position, scale, rotation, colour jitter, texture phase, pixel noise) drawn from a
small latent vector, so the K images of a caption are different views of one concept, and
``--views latent-neighbors`` works here as it does for diffusion noise. Rendering is
deterministic: same caption and latent, same pixels.

For demos and tests it also gives the caption vocabulary (``make_captions``) and a labelled
held-out set for linear probing (``make_probe_set``).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, fields

import numpy as np
import torch
from PIL import Image, ImageDraw

from stablerep_fast.generate.generator import GenerationOutput, to_uint8_images

SIZES = {"small": 0.18, "medium": 0.26, "large": 0.34}  # shape radius / image side
COLOURS = {
    "red": (220, 40, 40),
    "orange": (240, 140, 30),
    "yellow": (235, 215, 40),
    "green": (50, 170, 60),
    "cyan": (40, 200, 210),
    "blue": (40, 80, 210),
    "purple": (140, 60, 190),
    "pink": (240, 120, 180),
    "white": (245, 245, 245),
    "black": (25, 25, 25),
}
TEXTURES = ("solid", "striped", "checkered", "dotted")
SHAPES = ("circle", "square", "triangle", "pentagon", "hexagon", "star", "cross", "ring")
BACKGROUNDS = {
    "white": (235, 235, 230),
    "black": (15, 15, 20),
    "grey": (128, 128, 128),
    "beige": (220, 205, 170),
    "navy": (20, 30, 90),
    "teal": (20, 110, 110),
}

# Latent coordinates: centre x, centre y, scale, rotation, colour jitter r/g/b, background
# brightness, texture phase. Pixel noise is seeded from the latent's bytes.
LATENT_DIM = 9
NOISE_STD = 6.0  # pixel noise, in 0-255 units
_PROBE_STREAM = 0x5EED  # keeps probe sets apart from every generation run's noise


@dataclass(frozen=True)
class Attributes:
    size: str
    colour: str
    texture: str
    shape: str
    background: str

    @property
    def caption(self) -> str:
        return f"a {self.size} {self.colour} {self.texture} {self.shape} on a {self.background} background"


VOCABULARY: dict[str, tuple[str, ...]] = {
    "size": tuple(SIZES),
    "colour": tuple(COLOURS),
    "texture": TEXTURES,
    "shape": SHAPES,
    "background": tuple(BACKGROUNDS),
}


def parse_caption(caption: str) -> Attributes:
    """The attributes a caption names. The background is the word before "background"; each
    other attribute is the first vocabulary word of its kind. Attributes a caption does not
    name (any free text works) are picked from a hash of the caption, so they are stable."""
    words = caption.lower().replace(",", " ").split()
    background = None
    if "background" in words and words.index("background") > 0:
        background = words[words.index("background") - 1]
        words = words[: words.index("background") - 1]
    digest = hashlib.blake2b(caption.encode(), digest_size=8).digest()
    picked = {}
    for position, (name, choices) in enumerate(VOCABULARY.items()):
        found = background if name == "background" else next((w for w in words if w in choices), None)
        picked[name] = found if found in choices else choices[digest[position] % len(choices)]
    return Attributes(**picked)


def make_captions(n: int, seed: int = 0) -> list[str]:
    """``n`` captions of random attribute combinations, distinct while n <= the number of
    combinations (7680)."""
    sizes = [len(VOCABULARY[f.name]) for f in fields(Attributes)]
    total = math.prod(sizes)
    codes = np.random.default_rng(seed).choice(total, size=n, replace=n > total)
    return [_attributes_from_code(int(code), sizes).caption for code in codes]


def _attributes_from_code(code: int, sizes: list[int]) -> Attributes:
    picked = []
    for f, size in zip(fields(Attributes), sizes):
        code, digit = divmod(code, size)
        picked.append(VOCABULARY[f.name][digit])
    return Attributes(*picked)


def _polygon(shape: str, cx: float, cy: float, radius: float, angle: float) -> list[tuple[float, float]]:
    if shape == "star":
        corners = [(radius if j % 2 == 0 else 0.45 * radius, math.pi * j / 5) for j in range(10)]
    elif shape == "cross":
        arm = 0.35
        outline = [(arm, 1), (arm, arm), (1, arm), (1, -arm), (arm, -arm), (arm, -1),
                   (-arm, -1), (-arm, -arm), (-1, -arm), (-1, arm), (-arm, arm), (-arm, 1)]  # fmt: skip
        corners = [(radius * math.hypot(x, y), math.atan2(y, x)) for x, y in outline]
    else:
        sides = {"triangle": 3, "square": 4, "pentagon": 5, "hexagon": 6}[shape]
        corners = [(radius, 2 * math.pi * j / sides - math.pi / 2) for j in range(sides)]
    return [(cx + r * math.cos(a + angle), cy + r * math.sin(a + angle)) for r, a in corners]


def render(caption: str, latent: np.ndarray, resolution: int) -> np.ndarray:
    """One image of ``caption``, float32 [3, resolution, resolution] in [0, 1];
    ``latent``: float [LATENT_DIM], standard normal (its coordinates map to uniforms)."""
    attrs = parse_caption(caption)
    latent = np.asarray(latent, dtype=np.float64)
    u = 0.5 * (1.0 + np.vectorize(math.erf)(latent / math.sqrt(2.0)))
    side = resolution
    radius = SIZES[attrs.size] * side * (0.8 + 0.4 * u[2])
    cx, cy = (radius + u[:2] * (side - 2 * radius)).tolist()
    angle = 2 * math.pi * u[3]

    # 1. The shape's mask.
    mask_image = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(mask_image)
    box = [cx - radius, cy - radius, cx + radius, cy + radius]
    if attrs.shape == "circle":
        draw.ellipse(box, fill=255)
    elif attrs.shape == "ring":
        draw.ellipse(box, outline=255, width=max(1, round(0.35 * radius)))
    else:
        draw.polygon(_polygon(attrs.shape, cx, cy, radius, angle), fill=255)
    mask = np.asarray(mask_image, dtype=np.float32)[..., None] / 255.0

    # 2. The texture, in the shape's rotated frame: 1 where the second tone shows.
    y, x = np.mgrid[0:side, 0:side].astype(np.float32) + 0.5
    along = (x - cx) * math.cos(angle) + (y - cy) * math.sin(angle)
    across = -(x - cx) * math.sin(angle) + (y - cy) * math.cos(angle)
    period = max(radius / 2.5, 2.0)
    along = along / period + u[8]
    across = across / period
    pattern = {
        "solid": np.zeros_like(along),
        "striped": np.floor(along) % 2,
        "checkered": (np.floor(along) + np.floor(across)) % 2,
        "dotted": (np.hypot(along - np.round(along), across - np.round(across)) < 0.3).astype(np.float32),
    }[attrs.texture][..., None]

    # 3. Colours with jitter, composited, plus pixel noise.
    fg = np.clip(np.array(COLOURS[attrs.colour]) + 50.0 * (u[4:7] - 0.5), 0, 255)
    second = fg * 0.4 if fg.mean() > 100 else fg + 0.5 * (255 - fg)
    bg = np.clip(np.array(BACKGROUNDS[attrs.background]) * (0.8 + 0.4 * u[7]), 0, 255)
    shape_pixels = pattern * second + (1 - pattern) * fg
    image = mask * shape_pixels + (1 - mask) * bg
    noise_seed = int.from_bytes(hashlib.blake2b(latent.tobytes(), digest_size=8).digest(), "little")
    image = image + np.random.default_rng(noise_seed).normal(0.0, NOISE_STD, image.shape)
    return (np.clip(image, 0, 255) / 255.0).astype(np.float32).transpose(2, 0, 1)


class ShapesPipeline:
    """Renders B captions x K latents per call, with the calling convention of
    ``StableRepPipeline``; there is no denoising loop, so steps and guidance are not used."""

    model_id = "shapes"
    backend = "numpy"

    def latent_shape(self, resolution: int) -> tuple[int, ...]:
        return (LATENT_DIM,)

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
        """prompts: B captions; latents: [B, K, LATENT_DIM] -> images uint8 [B, K, S, S, 3]."""
        if latents.shape[0] != len(prompts) or tuple(latents.shape[2:]) != (LATENT_DIM,):
            raise ValueError(f"latents must be [{len(prompts)}, K, {LATENT_DIM}], got {tuple(latents.shape)}")
        batch, k = latents.shape[:2]
        rendered = torch.from_numpy(
            np.stack([render(prompt, latent, resolution) for prompt, row in zip(prompts, latents.numpy()) for latent in row])
        )
        return GenerationOutput(to_uint8_images(rendered, output_size).reshape(batch, k, output_size, output_size, 3))


@dataclass(frozen=True)
class ProbeSet:
    images: np.ndarray  # uint8 [N, S, S, 3]
    labels: np.ndarray  # int64 [N], indices into class_names
    class_names: tuple[str, ...]
    captions: list[str]


def make_probe_set(
    n_per_class: int, *, label: str = "shape", seed: int = 0, resolution: int = 64, size: int | None = None
) -> ProbeSet:
    """A labelled set for linear probing: ``n_per_class`` images per value of attribute
    ``label`` ("shape", "colour", "texture", "size" or "background"), the other attributes and
    the latent drawn at random. Its randomness is a stream of its own, apart from every
    generation run; use different seeds for the probe's train and test sets."""
    if label not in VOCABULARY:
        raise ValueError(f"label must be one of {list(VOCABULARY)}, got {label!r}")
    rng = np.random.default_rng([_PROBE_STREAM, seed])
    class_names = VOCABULARY[label]
    captions, latents, labels = [], [], []
    for class_index, value in enumerate(class_names):
        for _ in range(n_per_class):
            picked = {name: choices[rng.integers(len(choices))] for name, choices in VOCABULARY.items()}
            picked[label] = value
            captions.append(Attributes(**picked).caption)
            latents.append(rng.standard_normal(LATENT_DIM))
            labels.append(class_index)
    rendered = torch.from_numpy(np.stack([render(c, z, resolution) for c, z in zip(captions, latents)]))
    images = to_uint8_images(rendered, size or resolution)
    return ProbeSet(images, np.array(labels, dtype=np.int64), class_names, captions)
