"""What a generator is: the protocol every image generator satisfies, and loading one by name.

A generator turns B captions and their initial noise into B x K images. ``generate`` (and,
later, anything else that draws images) only calls what ``Generator`` names, so the Stable
Diffusion pipeline, the procedural ``shapes`` renderer and a user's own class are used the
same way: per-(caption, k) seeds, shards, resume, the farm split and latent-neighbour views
all work for any of them.

    class MyGenerator:
        model_id = "my-generator"                      # recorded in dataset.json and KEY.json
        def latent_shape(self, resolution): return (4, resolution // 8, resolution // 8)
        def __call__(self, prompts, latents, *, resolution, output_size, **options):
            ...                                        # latents: [B, K, *latent_shape]
            return GenerationOutput(images)            # uint8 [B, K, output_size, output_size, 3]

``load_generator("my_pkg.my_module:MyGenerator")`` imports the class and instantiates it with
no arguments (``--model`` on the command line). Online generation (``data/online.py``) also
uses two optional attributes: ``make_captions(n, seed)`` (the generator's own captions) and
``default_resolution``.
"""

from __future__ import annotations

import importlib
import inspect
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F

from stablerep_fast.generate.config import GenerateError


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


# "package.module:Attribute" (dots allowed on both sides), the form of --model for a plugin.
_IMPORT_PATH = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


def check_generator(obj: object, name: str) -> Generator:
    """``obj`` if it satisfies the Generator protocol, else GenerateError saying what it lacks."""
    missing = [attr for attr in ("model_id", "latent_shape") if not hasattr(obj, attr)]
    missing += [] if callable(obj) else ["__call__"]
    if missing:
        raise GenerateError(
            f"{name} is not a generator: {type(obj).__name__} lacks {', '.join(missing)} "
            "(see stablerep_fast.generate.Generator)"
        )
    if not isinstance(obj.model_id, str) or not obj.model_id:
        raise GenerateError(f"{name} is not a generator: its model_id must be a non-empty string, got {obj.model_id!r}")
    return obj  # type: ignore[return-value]


def import_generator(path: str) -> Generator:
    """``"my_pkg.my_module:MyGenerator"``: import the module, take the attribute, instantiate it
    with no arguments if it is a class, and check the result against the protocol."""
    module_name, _, attr_path = path.partition(":")
    try:
        obj = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - whatever the module raises becomes one line
        raise GenerateError(f"--model {path}: cannot import {module_name} ({first_line(exc)}); is it on PYTHONPATH?") from exc
    for attr in attr_path.split("."):
        if not hasattr(obj, attr):
            raise GenerateError(f"--model {path}: {getattr(obj, '__name__', module_name)} has no attribute {attr!r}")
        obj = getattr(obj, attr)
    if inspect.isclass(obj):
        try:
            obj = obj()
        except Exception as exc:  # noqa: BLE001 - the user's constructor: one line
            raise GenerateError(f"--model {path}: {attr_path}() failed ({first_line(exc)}); it must take no arguments") from exc
    return check_generator(obj, f"--model {path}")


def first_line(exc: BaseException) -> str:
    """An exception as one line: its type and the first line of its message."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def load_generator(
    model: str | Path | Generator,
    *,
    device: torch.device,
    dtype: torch.dtype,
    backend: str = "auto",
    cache_dir: Path | None = None,
    scheduler: str | None = None,
) -> Generator:
    """The generator ``model`` names: a Generator object (used as is), ``"shapes"`` (the
    procedural renderer), an import path ``"pkg.module:Class"``, or a diffusers text-to-image
    folder (any family of ``families.py``) or single-file SD checkpoint (run by ``backend``, with
    ``scheduler`` or the family's). Bad names raise GenerateError (one line)."""
    if isinstance(model, (str, Path)) and str(model) != "shapes" and (Path(model).exists() or not _IMPORT_PATH.fullmatch(str(model))):
        from stablerep_fast.generate.diffusers_pipeline import load_diffusers_model

        return load_diffusers_model(model, device=device, dtype=dtype, backend=backend, cache_dir=cache_dir, scheduler=scheduler)
    if model == "shapes":
        from stablerep_fast.generate.shapes import ShapesPipeline

        generator: Generator = ShapesPipeline()
    elif isinstance(model, str):
        generator = import_generator(model)
    else:
        generator = check_generator(model, f"model {type(model).__name__}")
    if backend not in ("auto", "eager"):
        raise GenerateError(f"the {generator.model_id} generator has no {backend!r} backend; use --backend auto")
    if scheduler is not None:
        raise GenerateError(f"the {generator.model_id} generator has no diffusers scheduler; leave out --scheduler")
    return generator
