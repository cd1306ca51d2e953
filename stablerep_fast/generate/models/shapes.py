"""A procedural caption-to-image generator: the ``--model shapes`` stand-in for Stable Diffusion.

An image shows one object with five attributes: size, colour, texture, shape, background.
A caption names some of them, e.g. "a red star", "a small striped star on a navy background"
or "a large red checkered star on a grey background"; like a text-to-image model, the generator
fills in what the caption leaves unsaid differently for every image: each unnamed attribute is
drawn from the image's own latent vector, as are the nuisance variables (position, scale,
rotation, colour jitter, texture phase, pixel noise). So the K images of "a red star" are red
stars of many sizes, textures and backgrounds, and ``--views latent-neighbors`` works here as
it does for diffusion noise. Rendering is deterministic: same caption and latent, same pixels.
Free text works too: whatever vocabulary words it holds are named, the rest is drawn.

``make_captions`` gives caption sets: ``mode="subset"`` (default) names the shape always and
each other attribute with probability ``NAME_PROBABILITY``; ``mode="all"`` names all five, so
the K images of a caption differ only in the nuisance variables.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw

from stablerep_fast.generate.models.protocol import GenerationOutput, to_uint8_images

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
VOCABULARY: dict[str, tuple[str, ...]] = {  # in caption word order
    "size": tuple(SIZES),
    "colour": tuple(COLOURS),
    "texture": TEXTURES,
    "shape": SHAPES,
    "background": tuple(BACKGROUNDS),
}
CAPTION_MODES = ("subset", "all")
NAME_PROBABILITY = 0.5  # mode "subset": the chance a caption names each attribute but the shape

# Latent coordinates: centre x, centre y, scale, rotation, colour jitter r/g/b, background
# brightness, texture phase, then one per attribute of VOCABULARY (its value when the caption
# does not name it). Pixel noise is seeded from the latent's bytes.
NUISANCE_DIM = 9
LATENT_DIM = NUISANCE_DIM + len(VOCABULARY)
NOISE_STD = 6.0  # pixel noise, in 0-255 units


@dataclass(frozen=True)
class Attributes:
    size: str
    colour: str
    texture: str
    shape: str
    background: str

    @property
    def caption(self) -> str:
        """The caption that names all five attributes."""
        return describe(vars(self))


def describe(named: dict[str, str]) -> str:
    """The caption naming exactly ``named`` (attribute -> value), e.g. "a red star on a grey
    background" ("a shape" when none of size, colour, texture, shape is named)."""
    words = " ".join(named[name] for name in ("size", "colour", "texture", "shape") if name in named) or "shape"
    caption = ("an " if words[0] in "aeiou" else "a ") + words
    return caption + (f" on a {named['background']} background" if "background" in named else "")


def parse_caption(caption: str) -> dict[str, str]:
    """The attributes ``caption`` names (attribute -> value): the background is the word before
    "background"; each other attribute is the first vocabulary word of its kind."""
    words = caption.lower().replace(",", " ").split()
    named = {}
    if "background" in words and words.index("background") > 0:
        cut = words.index("background") - 1
        if words[cut] in BACKGROUNDS:
            named["background"] = words[cut]
        words = words[:cut]
    for name, choices in VOCABULARY.items():
        found = next((w for w in words if w in choices), None) if name != "background" else None
        if found is not None:
            named[name] = found
    return named


def draw_attributes(named: dict[str, str], latent: np.ndarray) -> Attributes:
    """The named attributes, and the unnamed ones from the latent's attribute coordinates."""
    u = _uniform(np.asarray(latent, dtype=np.float64)[NUISANCE_DIM:])
    picked = {
        name: named.get(name) or choices[min(int(u[i] * len(choices)), len(choices) - 1)]
        for i, (name, choices) in enumerate(VOCABULARY.items())
    }
    return Attributes(**picked)


def make_captions(n: int, seed: int = 0, mode: str = "subset") -> list[str]:
    """``n`` captions, distinct while n <= the number of possible ones (7680 with mode "all",
    12320 with "subset"). "all": every caption names all five attributes, uniformly;
    "subset": the shape always, each other attribute with probability NAME_PROBABILITY."""
    if mode not in CAPTION_MODES:
        raise ValueError(f"mode must be one of {CAPTION_MODES}, got {mode!r}")
    choices = [VOCABULARY[name] + ((None,) if mode == "subset" and name != "shape" else ()) for name in VOCABULARY]
    catalogue = [dict(zip(VOCABULARY, values)) for values in itertools.product(*choices)]
    weights = None
    if mode == "subset":
        weights = np.array([
            math.prod(NAME_PROBABILITY / len(VOCABULARY[k]) if v is not None else 1 - NAME_PROBABILITY
                      for k, v in entry.items() if k != "shape")
            for entry in catalogue
        ])  # fmt: skip
        weights /= weights.sum()
    codes = np.random.default_rng(seed).choice(len(catalogue), size=n, replace=n > len(catalogue), p=weights)
    return [describe({k: v for k, v in catalogue[code].items() if v is not None}) for code in codes]


def _uniform(latent: np.ndarray) -> np.ndarray:
    """Standard-normal coordinates -> uniform on [0, 1) (the normal CDF)."""
    return 0.5 * (1.0 + np.vectorize(math.erf)(latent / math.sqrt(2.0)))


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
    latent = np.asarray(latent, dtype=np.float64)
    attrs = draw_attributes(parse_caption(caption), latent)
    u = _uniform(latent[:NUISANCE_DIM])
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
    default_resolution = 64  # online generation's default (its detail does not grow with pixels)

    def latent_shape(self, resolution: int) -> tuple[int, ...]:
        return (LATENT_DIM,)

    def make_captions(self, n: int, seed: int = 0) -> list[str]:
        """The generator's own caption source (online generation draws from it when no captions
        file is given): ``make_captions(n, seed)``, mode "subset"."""
        return make_captions(n, seed)

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
