"""Online generation: every batch drawn fresh from a generator while training (GenRep's linked
models), with the same ``(images, labels)`` as the shard loaders and no dataset on disk.

``build_loader(None, n, m, source="shapes")`` (or ``build_loader("generator:shapes", n, m)``,
``train --data generator:shapes``; any generator ``load_generator`` takes: a Generator object, a
Stable Diffusion folder, ``"pkg.module:Class"``) gives an ``OnlineLoader``:

- Captions: a pool of P captions, id = position, from ``OnlineConfig.captions`` (a captions file,
  read as ``generate`` reads it) or, when that is None, from the generator's own caption source
  ``generator.make_captions(P, seed)`` (the shapes generator has one; P = ``num_captions``).
- Batches: the shard loaders' sampler over the pool: every epoch shuffles the pool with the
  seed and splits it over ranks (disjoint), n captions per step; labels are the pool ids,
  view-major; ``caption_texts(ids)`` gives the texts (StableRep+).
- Views: caption c in epoch e gets m initial noises ``initial_noise(epoch_seed(seed, e), [c], m,
  ...)``: independent, or ``views="latent-neighbors"``: m neighbours of one anchor at
  ``latent_std`` (as ``generate --views`` makes them). Each caption is drawn once per epoch over
  all ranks, so every step sees new samples; a batch depends only on (seed, step, rank), so a
  resumed run sees the same samples, whatever the worker count.
- Augmentations: the torch loader's transforms from the same ``Augment``, seeded per batch.
- Where it runs: on a CUDA generator device (``OnlineConfig.device``; default: the training
  GPU) one background thread generates ``prefetch`` batches ahead on its own CUDA stream, so
  generation overlaps the training step (``device="cuda:1"``: another GPU of the node); on the
  CPU, ``num_workers`` DataLoader worker processes each generate whole batches (0: one
  background thread in this process).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2 as T

from stablerep_fast.data.ahead import run_ahead
from stablerep_fast.data.augment import Augment
from stablerep_fast.data.loader import GroupLoader, SkipCounts
from stablerep_fast.data.sampler import GroupBatch, GroupSampler
from stablerep_fast.data.torch_loader import augment_images, build_transform, in_workers, normalize
from stablerep_fast.errors import GenerateError, StableRepError, first_line

if TYPE_CHECKING:
    from stablerep_fast.generate import Generator

PREFIX = "generator:"  # data = "generator:MODEL" means online generation from MODEL


@dataclass(frozen=True)
class OnlineConfig:
    """How batches are generated (in a training config: ``online: {views: latent-neighbors}``)."""

    captions: str | None = None  # captions file; None: the generator's make_captions(num_captions, seed)
    caption_column: str | None = None  # of a table of captions
    num_captions: int = 10_000  # P, when the generator makes the captions
    views: str = "independent"  # or "latent-neighbors": the m noises of a caption around one anchor
    latent_std: float = 0.5  # sigma of latent-neighbors
    resolution: int | None = None  # generated; None: the generator's default_resolution, else 512
    save_size: int | None = None  # images handed to the augmentations; None: min(resolution, 256)
    steps: int | None = None  # denoising steps; None: the generator's default
    guidance: float | None = None  # classifier-free guidance; None: the generator's default
    batch_size: int | None = None  # captions per generator call; None: all n of a step at once
    device: str | None = None  # generator device; None: the training device ("cuda:1": another GPU)
    dtype: str = "auto"  # generator dtype: float16 on GPU, float32 on CPU
    backend: str = "auto"  # generate's --backend
    prefetch: int = 2  # batches generated ahead (per worker process)

    def __post_init__(self):  # views is checked when the loader is built (generate's VIEWS)
        positive = ("num_captions", "resolution", "save_size", "steps", "batch_size", "prefetch")
        for name in positive:
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"online {name} must be >= 1, got {value}")
        if self.latent_std <= 0 or (self.guidance is not None and self.guidance < 0):
            raise ValueError(f"online latent_std must be > 0 and guidance >= 0, got {self.latent_std}, {self.guidance}")

    @classmethod
    def parse(cls, value: OnlineConfig | dict | None) -> OnlineConfig:
        """An OnlineConfig from itself, a mapping of its fields, or None (the defaults)."""
        if value is None or isinstance(value, OnlineConfig):
            return value or cls()
        if not isinstance(value, dict):
            raise ValueError(f"online must be a mapping of OnlineConfig fields, got {value!r}")
        unknown = sorted(set(value) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown online field(s) {unknown}; known: {[f.name for f in fields(cls)]}")
        return cls(**value)

    def to_dict(self) -> dict:
        return asdict(self)


def epoch_seed(seed: int, epoch: int) -> int:
    """The noise seed of ``epoch``'s samples: every (caption, epoch) gets new noise."""
    return int.from_bytes(hashlib.blake2b(f"online/{seed}/{epoch}".encode(), digest_size=8).digest(), "little") >> 1


class _Generate:
    """GroupBatch -> (uint8 images [n*m, 3, S, S] view-major, labels [n*m]): the batch's noise
    from its seeds, the generator B captions at a time. Picklable with its generator."""

    def __init__(self, generator: Generator, texts: list[str], views: int, steps_per_epoch: int, config: OnlineConfig,
                 seed: int, resolution: int, save_size: int):  # fmt: skip
        from stablerep_fast.generate.models.protocol import checked_latent_shape

        self.generator, self.texts, self.m, self.steps_per_epoch = generator, texts, views, steps_per_epoch
        self.config, self.seed, self.resolution, self.save_size = config, seed, resolution, save_size
        self.latent_shape = checked_latent_shape(generator, resolution)
        self.options = {"resolution": resolution, "output_size": save_size}
        if config.steps is not None:
            self.options["num_inference_steps"] = config.steps
        if config.guidance is not None:
            self.options["guidance_scale"] = config.guidance

    @torch.inference_mode()
    def __call__(self, batch: GroupBatch) -> tuple[torch.Tensor, torch.Tensor]:
        from stablerep_fast.generate.farm.seeds import initial_noise
        from stablerep_fast.generate.models.protocol import generated_images

        ids = [int(i) for i in batch.captions]  # pool positions are the caption ids
        noise = initial_noise(epoch_seed(self.seed, batch.step // self.steps_per_epoch), ids, self.m, self.latent_shape,
                              views=self.config.views, latent_std=self.config.latent_std)  # fmt: skip
        chunk = self.config.batch_size or len(ids)
        parts = []
        for start in range(0, len(ids), chunk):
            prompts = [self.texts[i] for i in ids[start : start + chunk]]
            expected = (len(prompts), self.m, self.save_size, self.save_size, 3)
            parts.append(generated_images(self.generator, prompts, noise[start : start + chunk], expected, **self.options))
        images = torch.from_numpy(np.concatenate(parts).swapaxes(0, 1).reshape(-1, self.save_size, self.save_size, 3))
        return images.permute(0, 3, 1, 2), torch.tensor(ids, dtype=torch.int64).repeat(self.m)


class _Augmented(Dataset):
    """The worker processes' part: generate a batch, then augment it. A user-facing error (a
    generator that fails) is handed back as the batch, for the main process to raise as it is
    (torch would wrap it in the worker's traceback)."""

    def __init__(self, make: _Generate, transform: T.Compose):
        self.make, self.transform = make, transform

    def __getitem__(self, batch: GroupBatch) -> tuple[torch.Tensor, torch.Tensor] | StableRepError:
        try:
            images, labels = self.make(batch)
        except StableRepError as exc:
            return exc
        return augment_images(images, self.transform, batch.seed), labels


class OnlineLoader(GroupLoader):
    """A GroupLoader whose batches are generated (see the module docstring); ``generator`` is
    the loaded Generator and ``texts`` the caption pool."""

    def __init__(self, generator: Generator, texts: list[str], sampler: GroupSampler, *, config: OnlineConfig,
                 generator_device: torch.device, seed: int, image_size: int, augment: Augment, device: torch.device,
                 num_workers: int):  # fmt: skip
        super().__init__(None, sampler, image_size=image_size, augment=augment, device=device, num_workers=num_workers)
        self.generator, self.texts, self.config, self.generator_device = generator, texts, config, generator_device
        resolution = config.resolution or getattr(generator, "default_resolution", 512)
        save_size = config.save_size or min(resolution, 256)
        if save_size > resolution:
            raise ValueError(f"online save_size ({save_size}) must be <= resolution ({resolution})")
        self.make = _Generate(generator, texts, sampler.m, len(sampler), config, seed, resolution, save_size)

    def caption_texts(self, caption_ids: Sequence[int]) -> list[str]:
        return [self.texts[i] for i in caption_ids]

    def _run(self, batches: Iterator[GroupBatch]) -> Iterator[tuple[torch.Tensor, torch.Tensor, SkipCounts]]:
        transform = build_transform(self.augment, self.image_size)
        if self.generator_device.type == "cuda" or self.num_workers == 0:
            for batch, images, labels in run_ahead(batches, self.make, self.config.prefetch, self.generator_device):
                with torch.random.fork_rng(devices=[]):  # this thread's RNG is the trainer's: leave it as it was
                    images = augment_images(images, transform, batch.seed)
                yield normalize(images, self.device), labels.to(self.device), SkipCounts()
        else:
            workers = in_workers(_Augmented(self.make, transform), batches, self.num_workers, self.device, self.config.prefetch)
            for made in workers:
                if isinstance(made, StableRepError):
                    raise made
                images, labels = made
                yield normalize(images, self.device), labels.to(self.device, non_blocking=True), SkipCounts()


def caption_pool(generator: Generator, config: OnlineConfig, seed: int) -> list[str]:
    """The captions online batches are drawn from (see the module docstring)."""
    from stablerep_fast.generate.farm.captions import read_captions
    from stablerep_fast.generate.models.protocol import describe

    if config.captions is not None:
        return read_captions(Path(config.captions), config.caption_column).texts
    make = getattr(generator, "make_captions", None)
    if not callable(make):
        raise ValueError(
            f"generator {generator.model_id} has no caption source of its own (make_captions); "
            "set online captions to a captions file (--set online={captions: FILE})"
        )
    try:
        return [str(text) for text in make(config.num_captions, seed)]
    except Exception as exc:  # noqa: BLE001 - the generator's own code: one line naming it
        raise GenerateError(f"generator {describe(generator)}: make_captions({config.num_captions}, {seed}) raised "
                            f"{first_line(exc)}; fix the generator, or set online captions to a captions file") from exc  # fmt: skip


def build_online_loader(
    source: str | Path | Generator,
    captions_per_batch: int,
    images_per_caption: int,
    *,
    config: OnlineConfig,
    device: torch.device,
    seed: int,
    rank: int,
    world_size: int,
    image_size: int,
    augment: Augment,
    num_workers: int,
) -> OnlineLoader:
    """The OnlineLoader of ``source`` (``build_loader(None, ..., source=...)`` calls this)."""
    from stablerep_fast.generate import load_generator
    from stablerep_fast.generate.models.loader import resolve_dtype
    from stablerep_fast.generate.farm.seeds import VIEWS

    if config.views not in VIEWS:
        raise ValueError(f"online views must be one of {VIEWS}, got {config.views!r}")
    generator_device = torch.device(config.device) if config.device is not None else device
    dtype = resolve_dtype(config.dtype, generator_device)
    generator = load_generator(source, device=generator_device, dtype=dtype, backend=config.backend)
    texts = caption_pool(generator, config, seed)
    if len(texts) // world_size < captions_per_batch:
        raise ValueError(
            f"the online caption pool ({len(texts)} captions over {world_size} ranks) cannot fill one batch of "
            f"{captions_per_batch} captions; give more captions (online num_captions or captions file)"
        )
    sampler = GroupSampler([images_per_caption] * len(texts), captions_per_batch, images_per_caption, seed=seed,
                           rank=rank, world_size=world_size)  # fmt: skip
    return OnlineLoader(generator, texts, sampler, config=config, generator_device=generator_device, seed=seed,
                        image_size=image_size, augment=augment, device=device, num_workers=num_workers)  # fmt: skip
