"""Caption-image consistency scores: how well each generated image shows its caption.

A scorer is any callable that takes N captions (one per image) and N images (uint8 [N, H, W, 3])
and returns N float scores, higher meaning more consistent:

    class MyScorer:
        name = "my-scorer"                                  # recorded in dataset.json and KEY.json
        def __call__(self, captions, images): return np.ones(len(captions))

A scorer that sets ``uses_latents = True`` is also given, as keywords, ``latents`` (float32
[N, *latent_shape], each image's initial noise) and ``guidance`` (the run's guidance scale): a
procedural world can then re-derive what it drew instead of classifying the pixels.

``load_scorer`` resolves ``--score``:

    truth                      the procedural world's own truth (``digits``: 1.0 when the drawn
                               digit is the caption's; ``shapes``: the same for the shape)
    digits | shapes            one of those truth scorers by name
    clip:/path/to/folder       OpenCLIP cosine similarity of image and caption embeddings, from a
                               local folder holding open_clip_config.json and its weights
                               (open_clip_pytorch_model.bin or open_clip_model.safetensors)
    pkg.module:Class           a plugin, instantiated with no arguments (or an object: used as is)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from stablerep_fast.errors import GenerateError, first_line
from stablerep_fast.generate.models import digits as digits_world
from stablerep_fast.generate.models import shapes as shapes_world

CLIP_PREFIX = "clip:"
CLIP_CONFIG = "open_clip_config.json"
CLIP_WEIGHTS = ("open_clip_pytorch_model.bin", "open_clip_model.safetensors")


@runtime_checkable
class Scorer(Protocol):
    """N captions and N images (uint8 [N, H, W, 3]) -> N float scores."""

    def __call__(self, captions: list[str], images: np.ndarray) -> np.ndarray: ...


class DigitsTruth:
    """1.0 when the digit the ``digits`` world drew (re-derived from the caption, the image's latent
    and the fidelity, ``digits.draw_parameters``) is the digit its caption names, else 0.0; 1.0
    for a caption naming no digit (nothing to contradict)."""

    name = "digits"
    uses_latents = True

    def __call__(self, captions: list[str], images: np.ndarray, *, latents: torch.Tensor, guidance: float | None) -> np.ndarray:
        fidelity = digits_world.DEFAULT_FIDELITY if guidance is None else guidance
        scores = []
        for caption, latent in zip(captions, latents.reshape(len(captions), -1).numpy()):
            named = digits_world.parse_caption(caption)
            drawn = digits_world.draw_parameters(named, latent, fidelity).digit
            scores.append(float("digit" not in named or drawn == named["digit"]))
        return np.asarray(scores, dtype=np.float64)


class ShapesTruth:
    """1.0 when the shape the ``shapes`` world drew (``shapes.draw_attributes``) is the shape its
    caption names, else 0.0; 1.0 for a caption naming no shape. The shapes world always keeps
    a named attribute, so every image of a caption naming its shape scores 1.0."""

    name = "shapes"
    uses_latents = True

    def __call__(self, captions: list[str], images: np.ndarray, *, latents: torch.Tensor, guidance: float | None) -> np.ndarray:
        scores = []
        for caption, latent in zip(captions, latents.reshape(len(captions), -1).numpy()):
            named = shapes_world.parse_caption(caption)
            drawn = shapes_world.draw_attributes(named, latent).shape
            scores.append(float("shape" not in named or drawn == named["shape"]))
        return np.asarray(scores, dtype=np.float64)


TRUTH = {"digits": DigitsTruth, "shapes": ShapesTruth}


class ClipScorer:
    """Cosine similarity of OpenCLIP image and text embeddings, from local weights only: ``folder``
    holds ``open_clip_config.json`` ({"model_cfg": ..., "preprocess_cfg": ...}, the layout of
    OpenCLIP's hub folders) and the weights. Runs on ``device``, ``batch_size`` images per call."""

    name = "clip"

    def __init__(self, folder: str | Path, device: torch.device | str = "cpu", batch_size: int = 64):
        import open_clip

        folder = Path(folder)
        weights = next((folder / name for name in CLIP_WEIGHTS if (folder / name).is_file()), None)
        if not (folder / CLIP_CONFIG).is_file() or weights is None:
            raise GenerateError(f"--score clip:{folder}: needs a folder holding {CLIP_CONFIG} and {' or '.join(CLIP_WEIGHTS)} "
                                "(an OpenCLIP hub folder downloaded beforehand); weights are never downloaded")  # fmt: skip
        config = json.loads((folder / CLIP_CONFIG).read_text())
        self.model = open_clip.model.CLIP(**config["model_cfg"])
        self.model.load_state_dict(open_clip.factory.load_state_dict(str(weights)))
        self.model.eval().to(device)
        self.device, self.batch_size = torch.device(device), batch_size
        preprocess = config.get("preprocess_cfg", {})
        self.mean = torch.tensor(preprocess.get("mean", open_clip.OPENAI_DATASET_MEAN), device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(preprocess.get("std", open_clip.OPENAI_DATASET_STD), device=self.device).view(1, 3, 1, 1)
        self.image_size = self.model.visual.image_size
        self.image_size = self.image_size if isinstance(self.image_size, int) else self.image_size[0]
        self.context_length = self.model.context_length

    @torch.no_grad()
    def __call__(self, captions: list[str], images: np.ndarray) -> np.ndarray:
        import open_clip

        scores = []
        for start in range(0, len(captions), self.batch_size):
            pixels = torch.from_numpy(images[start : start + self.batch_size]).to(self.device).permute(0, 3, 1, 2).float() / 255
            pixels = torch.nn.functional.interpolate(pixels, size=(self.image_size, self.image_size), mode="bicubic",
                                                     antialias=True, align_corners=False)  # fmt: skip
            image = self.model.encode_image((pixels - self.mean) / self.std, normalize=True)
            tokens = open_clip.tokenize(captions[start : start + self.batch_size], context_length=self.context_length)
            text = self.model.encode_text(tokens.to(self.device), normalize=True)
            scores.append((image * text).sum(-1).float().cpu())
        return torch.cat(scores).double().numpy() if scores else np.zeros(0)


def scorer_name(scorer: object) -> str:
    """What dataset.json and KEY.json record of ``scorer``: its ``name``, else module:class."""
    name = getattr(scorer, "name", None)
    return name if isinstance(name, str) and name else f"{type(scorer).__module__}:{type(scorer).__qualname__}"


def load_scorer(spec: str | object, *, model_id: str, device: torch.device | str = "cpu") -> object:
    """The scorer ``spec`` names (module docstring) for a run of the generator ``model_id``;
    GenerateError (one line) for a name that is none."""
    if not isinstance(spec, str):
        if not callable(spec):
            raise GenerateError(f"scorer {type(spec).__name__} is not callable; give a callable(captions, images) -> scores")
        return spec
    if spec == "truth":
        if model_id not in TRUTH:
            raise GenerateError(f"--score truth: the {model_id} generator has no truth scorer (only {', '.join(TRUTH)}); "
                                "use --score clip:FOLDER or a plugin pkg.module:Class")  # fmt: skip
        return TRUTH[model_id]()
    if spec in TRUTH:
        return TRUTH[spec]()
    if spec == "clip" or spec.startswith(CLIP_PREFIX):
        folder = spec[len(CLIP_PREFIX) :]
        if not folder:
            raise GenerateError("--score clip needs local weights: --score clip:/path/to/folder (holding "
                                f"{CLIP_CONFIG} and {CLIP_WEIGHTS[0]}); nothing is downloaded")  # fmt: skip
        return ClipScorer(folder, device)
    if ":" in spec:
        from stablerep_fast.generate.models.loader import import_object

        obj = import_object(spec, "--score")
        if not callable(obj):
            raise GenerateError(f"--score {spec}: {type(obj).__name__} is not callable; give a callable(captions, images) -> scores")
        return obj
    raise GenerateError(f"--score {spec}: not a scorer; use truth, {', '.join(TRUTH)}, clip:FOLDER or pkg.module:Class")


def score_images(scorer: object, captions: list[str], images: np.ndarray, latents: torch.Tensor, guidance: float | None) -> np.ndarray:
    """``scorer``'s N float64 scores of N ``images`` (uint8 [N, H, W, 3]) and their ``captions``
    (with ``latents`` [N, ...] and ``guidance`` for a scorer that ``uses_latents``); an error it
    raises or a wrong answer is a GenerateError naming it."""
    options = {"latents": latents, "guidance": guidance} if getattr(scorer, "uses_latents", False) else {}
    try:
        scores = np.asarray(scorer(captions, images, **options), dtype=np.float64)
    except Exception as exc:  # noqa: BLE001 - the scorer's own code: one line naming it
        raise GenerateError(f"scorer {scorer_name(scorer)} failed on {len(captions)} images ({first_line(exc)}); fix the scorer") from exc
    if scores.shape != (len(captions),) or not np.isfinite(scores).all():
        raise GenerateError(f"scorer {scorer_name(scorer)} returned scores of shape {scores.shape} (finite: "
                            f"{bool(np.isfinite(scores).all())}); expected {len(captions)} finite floats")  # fmt: skip
    return scores
