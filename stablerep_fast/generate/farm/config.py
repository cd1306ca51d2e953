"""The generation settings, one dataclass; defaults follow the StableRep recipe."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from stablerep_fast.errors import GenerateError
from stablerep_fast.generate.farm.seeds import VIEWS
from stablerep_fast.generate.models.protocol import Generator
from stablerep_fast.generate.runtime.backends import BACKENDS

BACKEND_CHOICES = ("auto", *BACKENDS)
DTYPE_CHOICES = ("auto", "float32", "float16", "bfloat16")
IMAGE_FORMATS = ("jpg", "png")
ASSIGN_CHOICES = ("dynamic", "static")

# Settings that change the images or the layout; recorded in dataset.json and required to
# match on resume. The others (batch size, farm split, device, dtype, backend) only change
# float round-off or who does the work.
DATASET_FIELDS = (
    "model",
    "images_per_caption",
    "steps",
    "guidance",
    "scheduler",
    "resolution",
    "save_size",
    "seed",
    "shard_size",
    "image_format",
    "quality",
    "views",
    "latent_std",
)


@dataclass
class GenerateConfig:
    """Everything ``generate`` needs. ``out``: a folder or an fsspec URL (s3://, gs://, file://);
    ``world_size``/``rank`` None: from torchrun/Slurm env; ``assign``: "dynamic" (ranks claim
    shards, taking over claims whose ``lease`` seconds ran out) or "static" (rank r writes the
    shards s with s % world_size == r); ``device`` None: cuda when available; ``dtype`` "auto":
    float16 on GPU (bfloat16 for the T5 families, ``models/families.auto_gpu_dtype``), float32 on CPU."""

    captions: Path
    out: Path | str
    # "shapes", a diffusers folder, a single-file checkpoint, "my_pkg.my_module:MyGenerator",
    # or a Generator object (see models/protocol.py)
    model: str | Generator = "shapes"
    images_per_caption: int = 10
    # None: the model family's default (models/families.py; SD 1.x/2.x: DDIM, 50 steps, guidance 2)
    steps: int | None = None
    guidance: float | None = None
    scheduler: str | None = None  # a diffusers scheduler class name or alias, "default": the model's own
    resolution: int = 512
    save_size: int = 256
    seed: int = 0
    batch_size: int = 4  # captions per call: B * K images (x2 with guidance) per UNet step
    shard_size: int = 1000  # captions per shard
    world_size: int | None = None
    rank: int | None = None
    assign: str = "dynamic"
    lease: float = 300.0  # seconds; see farm/claims.py
    device: str | None = None
    dtype: str = "auto"
    backend: str = "auto"
    image_format: str = "jpg"
    quality: int = 95  # JPEG quality
    views: str = "independent"
    latent_std: float = 0.5  # sigma of --views latent-neighbors
    caption_column: str | None = None
    progress: bool = True
    engine_cache: Path | None = None  # compiled artefacts and TensorRT engines; None: runtime.networks.default_cache_dir()
    # Caption-image consistency (models/scorers.py): "truth", "digits", "shapes", "clip:FOLDER",
    # "pkg.module:Class" or a callable(captions, images) -> scores; None: no scores
    scorer: str | object | None = None
    regenerate_below: float | None = None  # redraw images scoring below this (farm/scoring.py)
    max_regenerations: int = 1  # attempts per image beyond the first

    def validate(self) -> None:
        """Raise GenerateError naming the first bad setting."""
        checks = [
            (self.images_per_caption >= 1, f"images per caption must be >= 1, got {self.images_per_caption}"),
            (self.steps is None or self.steps >= 1, f"steps must be >= 1, got {self.steps}"),
            (self.guidance is None or self.guidance >= 0, f"guidance must be >= 0, got {self.guidance}"),
            (self.resolution >= 8 and self.resolution % 8 == 0, f"resolution must be a positive multiple of 8, got {self.resolution}"),
            (1 <= self.save_size <= self.resolution, f"save size must be in [1, resolution={self.resolution}], got {self.save_size}"),
            (self.seed >= 0, f"seed must be >= 0, got {self.seed}"),
            (self.batch_size >= 1, f"batch size must be >= 1, got {self.batch_size}"),
            (self.shard_size >= 1, f"shard size must be >= 1, got {self.shard_size}"),
            (self.world_size is None or self.world_size >= 1, f"world size must be >= 1, got {self.world_size}"),
            (self.assign in ASSIGN_CHOICES, f"assign must be one of {ASSIGN_CHOICES}, got {self.assign!r}"),
            (self.lease > 0, f"lease must be > 0 seconds, got {self.lease}"),
            (self.backend in BACKEND_CHOICES, f"backend must be one of {BACKEND_CHOICES}, got {self.backend!r}"),
            (self.dtype in DTYPE_CHOICES, f"dtype must be one of {DTYPE_CHOICES}, got {self.dtype!r}"),
            (self.image_format in IMAGE_FORMATS, f"format must be one of {IMAGE_FORMATS}, got {self.image_format!r}"),
            (1 <= self.quality <= 100, f"quality must be in [1, 100], got {self.quality}"),
            (self.views in VIEWS, f"views must be one of {VIEWS}, got {self.views!r}"),
            (self.latent_std > 0, f"latent std must be > 0, got {self.latent_std}"),
            (self.regenerate_below is None or self.scorer is not None,
             f"regenerate below {self.regenerate_below} needs a scorer: add --score NAME"),
            (self.max_regenerations >= 1, f"max regenerations must be >= 1, got {self.max_regenerations}"),
        ]
        for ok, message in checks:
            if not ok:
                raise GenerateError(message)

    def dataset_fields(self, model_id: str, scorer_name: str | None = None) -> dict:
        """The settings dataset.json records (see DATASET_FIELDS); the model as its generator's
        ``model_id``. With a scorer (named ``scorer_name``) also ``score`` and, when images are
        redrawn, ``regenerate_below`` and ``max_regenerations``: absent otherwise, so folders
        written without scores keep their dataset.json."""
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name in DATASET_FIELDS}
        record = {name: model_id if name == "model" else values[name] for name in DATASET_FIELDS}
        if scorer_name is not None:
            record["score"] = scorer_name
        if self.regenerate_below is not None:
            record.update(regenerate_below=self.regenerate_below, max_regenerations=self.max_regenerations)
        return record
