"""The training settings, one dataclass; its defaults are the ViT-B/16 recipe of docs/method.md.

``PRESETS["tiny"]`` trains a small ViT at 32 px in seconds on a CPU (tests), ``PRESETS["cpu"]``
is the demo's recipe (the same ViT at 64 px);
``PRESETS["vit_b16"]`` is the recipe. Configs round-trip through YAML (``save``/``load``);
``resolve_config`` layers preset, YAML file, "FIELD=YAML" overrides and explicit settings.
"""

from __future__ import annotations

import copy
import re
import types
import typing
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Sequence

import yaml

from stablerep_fast.atomic import atomic_write
from stablerep_fast.data.augment import Augment
from stablerep_fast.data.online import OnlineConfig
from stablerep_fast.errors import ConfigError

PRECISIONS = ("auto", "bf16", "fp32")  # auto: bf16 autocast on GPU, fp32 on CPU
REFERENCE_BATCH = 256  # lr = base_lr * global images per step / REFERENCE_BATCH


@dataclass
class TrainConfig:
    # Data: shards written by stablerep_fast.generate (folder, list of folders or brace pattern), or
    # "generator:MODEL" (shapes, a diffusers folder, pkg.module:Class): batches generated while training,
    # as ``online`` says (OnlineConfig fields: captions, views, latent_std, resolution, device, ...).
    data: str | list[str] = ""
    online: OnlineConfig | dict = field(default_factory=OnlineConfig)
    captions_per_batch: int = 1344  # n, over all ranks (x m = 8064 images per step)
    images_per_caption: int = 6  # m, drawn from each caption's K
    image_size: int = 224
    augment: Augment | str | dict = field(default_factory=Augment)  # a preset name ("stablerep", "none") or fields
    loader_backend: str = "auto"
    num_workers: int | None = None  # None: min(8, CPUs)
    min_score: float | None = None  # leave out images scoring below it (shards from `generate --score`)
    # Model: any timm name, random init; model_kwargs go to timm.create_model (img_size, patch_size, depth, ...).
    model: str = "vit_base_patch16_224"
    model_kwargs: dict = field(default_factory=dict)
    head_hidden: int = 4096
    head_dim: int = 256
    # StableRep+: a CLIP text tower and the image-text loss (weights w1, w2 of docs/method.md).
    text: bool = False
    text_width: int = 512
    text_layers: int = 12
    text_heads: int = 8
    context_length: int = 77
    embed_dim: int = 512
    image_loss_weight: float = 1.0
    text_loss_weight: float = 1.0
    # Loss and optimisation.
    temperature: float = 0.1
    loss_backend: str = "auto"
    steps: int = 40_000
    warmup_steps: int = 2_000
    base_lr: float = 2e-4  # per REFERENCE_BATCH images
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.98)
    precision: str = "auto"
    seed: int = 0
    device: str | None = None  # None: cuda when available
    # Run: outputs, logging, checkpoints.
    out: str = "runs/stablerep"
    checkpoint_every: int = 1_000
    log_every: int = 10
    tensorboard: bool = False
    progress: bool = True
    resume: bool = False  # continue from out/checkpoint.pt (when there is none: a warning, and step 0)
    overwrite: bool = False  # start over in an out folder that holds a checkpoint (else refused)
    stop_at: int | None = None  # stop after this step (a job's time slice); the schedule still spans ``steps``

    def __post_init__(self):
        try:
            self.augment = Augment.parse(self.augment)  # a preset name or a mapping of fields
            self.online = OnlineConfig.parse(self.online)
        except (TypeError, ValueError) as exc:
            raise ConfigError(str(exc)) from exc

    @property
    def batch_images(self) -> int:
        """Images per step over all ranks."""
        return self.captions_per_batch * self.images_per_caption

    @property
    def lr(self) -> float:
        """Peak learning rate: ``base_lr * batch_images / 256``."""
        return self.base_lr * self.batch_images / REFERENCE_BATCH

    def validate(self, world_size: int = 1) -> None:
        """Raise ConfigError naming the first bad setting."""
        checks = [
            (self.captions_per_batch >= 1, f"captions_per_batch must be >= 1, got {self.captions_per_batch}"),
            (self.captions_per_batch % world_size == 0,
             f"captions_per_batch ({self.captions_per_batch}) must divide over {world_size} ranks"),
            (self.images_per_caption >= 2, f"images_per_caption must be >= 2 (positives), got {self.images_per_caption}"),
            (self.steps >= 1, f"steps must be >= 1, got {self.steps}"),
            (0 <= self.warmup_steps <= self.steps, f"warmup_steps must be in [0, steps={self.steps}], got {self.warmup_steps}"),
            (self.base_lr > 0, f"base_lr must be > 0, got {self.base_lr}"),
            (self.temperature > 0, f"temperature must be > 0, got {self.temperature}"),
            (self.precision in PRECISIONS, f"precision must be one of {PRECISIONS}, got {self.precision!r}"),
            (self.checkpoint_every >= 1 and self.log_every >= 1, "checkpoint_every and log_every must be >= 1"),
            (self.stop_at is None or self.stop_at >= 1, f"stop_at must be >= 1, got {self.stop_at}"),
            (0 <= self.seed < 2**63, f"seed must be in [0, 2**63), got {self.seed}"),
            (not (self.resume and self.overwrite), "resume and overwrite exclude each other: pick one"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    def to_dict(self) -> dict:
        """Plain values (lists, dicts), for YAML and checkpoints."""
        return {**asdict(self), "augment": self.augment.to_dict(), "online": self.online.to_dict(), "betas": list(self.betas)}

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """A config from plain values (YAML, a checkpoint); ConfigError for an unknown setting or
        a value of the wrong type."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown setting(s) {unknown}; see TrainConfig for the fields")
        hints = typing.get_type_hints(cls)
        for name, value in values.items():
            if not _fits(value, hints[name]):
                raise ConfigError(f"setting {name} must be {_type_name(hints[name])}, got {value!r}; fix its value")
        values = dict(values)
        if "betas" in values:
            values["betas"] = tuple(values["betas"])
        return cls(**values)

    def save(self, path: str | Path) -> None:
        """Write the config as YAML (atomically: an interrupted save leaves the old file)."""
        atomic_write(path, yaml.safe_dump(self.to_dict(), sort_keys=False).encode())

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        return cls.from_dict(read_settings(path))


def read_settings(path: str | Path) -> dict:
    """The settings a YAML config file holds (a mapping of TrainConfig fields); ConfigError
    naming the file when it is missing, not YAML or not a mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path}: no such file")
    try:
        values = yaml.load(path.read_text(), Loader=_YamlLoader)
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid YAML ({_one_line(exc)}); fix the file") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} holds a {type(values).__name__}, not a mapping of settings (FIELD: VALUE)")
    return values


def parse_override(item: str) -> tuple[str, object]:
    """``FIELD=YAML`` (a ``--set`` override) -> (field, value); ConfigError naming the item."""
    name, sep, text = item.partition("=")
    if not sep or not name.strip():
        raise ConfigError(f"--set expects FIELD=VALUE, got {item!r}")
    try:
        return name.strip(), yaml.load(text, Loader=_YamlLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {item!r}: the value is not valid YAML ({_one_line(exc)})") from None


class _YamlLoader(yaml.SafeLoader):
    """yaml.safe_load, but reading floats as YAML 1.2 and Python do: ``1e-3`` is a float, not a string."""


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


def _fits(value, kind) -> bool:
    """Whether ``value`` (as YAML reads it) fits the field type ``kind``."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (types.UnionType, typing.Union):
        return any(_fits(value, arg) for arg in args)
    if kind is type(None):
        return value is None
    if kind in (int, float):  # an int fits a float field; a bool is neither
        return isinstance(value, (int, float) if kind is float else int) and not isinstance(value, bool)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)) or (origin is tuple and len(value) != len(args)):
            return False
        return all(_fits(v, args[0]) for v in value)
    return isinstance(value, origin or kind)


def _type_name(kind) -> str:
    return getattr(kind, "__name__", None) if typing.get_origin(kind) is None else str(kind).replace("typing.", "")


PRESETS: dict[str, TrainConfig] = {
    "vit_b16": TrainConfig(),
    # ViT-tiny width, 4 blocks, 4-px patches at 32 px: about 180 images/s of training on 2 CPU cores.
    "tiny": TrainConfig(
        captions_per_batch=32,
        images_per_caption=4,
        image_size=32,
        model="vit_tiny_patch16_224",
        model_kwargs={"img_size": 32, "patch_size": 4, "depth": 4},
        head_hidden=512,
        head_dim=128,
        text_width=64,
        text_layers=2,
        text_heads=2,
        context_length=32,
        embed_dim=128,
        steps=100,
        warmup_steps=10,
        base_lr=1e-3,
        checkpoint_every=50,
        out="runs/tiny",
    ),
}

# The demo's recipe (stablerep-fast demo): the tiny ViT at 64 px with 8-px patches (the same 64
# tokens, so the same cost per step as 32 px with 4-px patches), 32 captions x 4 images for 150
# steps, augmentation at strength 0.25. The ViT was chosen over a small ResNet, and the
# augmentation strength per method, on the probe's validation split (benchmarks/RESULTS.md, "Demo").
PRESETS["cpu"] = replace(PRESETS["tiny"], image_size=64, model_kwargs={"img_size": 64, "patch_size": 8, "depth": 4},
                         steps=150, warmup_steps=15, checkpoint_every=150, augment=Augment.at_strength(0.25),
                         out="runs/cpu")  # fmt: skip
# The digits demo's recipe: the same ViT on 16-px digits with 4-px patches (16 tokens), 32 captions x 4
# images, no flips (a mirrored digit is another glyph); chosen on the real scans' validation split
# (benchmarks/RESULTS.md, "Demo").
PRESETS["digits"] = replace(PRESETS["cpu"], image_size=16, model_kwargs={"img_size": 16, "patch_size": 4, "depth": 4},
                            steps=300, warmup_steps=30, checkpoint_every=300,
                            augment=replace(Augment.at_strength(0.25), flip_p=0.0), out="runs/digits")  # fmt: skip


def preset(name: str, **overrides) -> TrainConfig:
    """A copy of ``PRESETS[name]`` with ``overrides`` applied."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {list(PRESETS)}")
    return replace(copy.deepcopy(PRESETS[name]), **overrides)


def resolve_config(
    preset_name: str = "vit_b16",
    config_file: str | Path | None = None,
    sets: Sequence[str] = (),
    **settings,
) -> TrainConfig:
    """The settings of a run, each layer over the one before: the preset, then the YAML file
    (only the fields it names), then ``sets`` ("FIELD=YAML" strings, e.g. "model_kwargs={depth: 4}",
    as ``stablerep-fast train --set`` takes them), then ``settings`` (None values ignored).
    ConfigError names the first bad layer or field."""
    values = preset(preset_name).to_dict()
    if config_file is not None:
        values.update(read_settings(config_file))  # only the fields the file sets
    values.update(parse_override(item) for item in sets)
    values.update({name: value for name, value in settings.items() if value is not None})
    return TrainConfig.from_dict(values)

