"""``train(config, loader)``: the training loop (single process, or DDP under torchrun)."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Protocol

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from stablerep_fast.atomic import atomic_write
from stablerep_fast.errors import CheckpointError, ConfigError, OutputError, check_device, env_int
from stablerep_fast.ops import MultiPosConLoss, MultiPosConLossMM
from stablerep_fast.train.checkpoint import (
    CHECKPOINT,
    load_checkpoint,
    load_weights,
    rng_states,
    save_checkpoint,
    set_rng_states,
)
from stablerep_fast.train.config import TrainConfig
from stablerep_fast.train.model import StableRepModel, Tokenizer, build_model
from stablerep_fast.train.optim import build_optimizer, build_scheduler
from stablerep_fast.train.run_folder import CONFIG_FILE, LOG_FILE, check_run_folder, hold_run_folder
# Settings a resumed run must share with its checkpoint: the model's shape, and the batch
# shape that the loader position and the loss depend on.
RESUME_FIXED = ("model", "model_kwargs", "head_hidden", "head_dim", "text", "text_width", "text_layers", "text_heads",
                "context_length", "embed_dim", "captions_per_batch", "images_per_caption")  # fmt: skip
# Settings that do not change what is computed: free to differ on resume, without a warning.
RESUME_FREE = ("out", "resume", "overwrite", "stop_at", "progress", "log_every", "checkpoint_every", "tensorboard",
               "device", "num_workers", "loss_backend")  # fmt: skip

log = logging.getLogger("stablerep_fast.train")


class Loader(Protocol):
    """What the loop reads of a loader (``stablerep_fast.data.build_loader`` gives one):
    iterating yields (images [n*m, 3, S, S], labels [n*m]) view-major from the current
    position to the end of an epoch; the position round-trips through a state dict; and, for
    the text tower only (``config.text``), ``caption_texts(ids)`` gives each caption id's text."""

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...
    def caption_texts(self, caption_ids: Sequence[int]) -> list[str]: ...


@dataclass
class TrainSummary:
    out: Path
    step: int  # the global step reached
    images: int  # images trained on by this run, all ranks
    seconds: float
    losses: list[float] = field(default_factory=list)  # per step of this run, this rank's loss
    checkpoint: Path | None = None

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def format(self) -> str:
        """The run in one line, for people: steps, images, speed, last loss, checkpoint."""
        last = self.losses[-1] if self.losses else float("nan")
        return (f"step {self.step}: {self.images} images in {self.seconds:.1f} s ({self.images_per_second:.1f} images/s); "
                f"last loss {last:.4f} -> {self.checkpoint}")  # fmt: skip


def train(config: TrainConfig, loader: Loader | None = None) -> TrainSummary:
    """Train ``config`` and return a summary; under torchrun every rank calls this. Rank 0 holds
    the run folder ``config.out`` for the whole run (``run_folder.hold_run_folder``).

    loader: this rank's batches (see ``Loader``); None builds one from ``config.data``
            (stablerep_fast.data), whose caption texts come from the shards.
    """
    owns_group = _init_distributed()
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    try:
        # 1. Settings, device; the run folder checked, then held by rank 0 for the whole run.
        config.validate(world)
        device = _device(config)
        check_run_folder(Path(config.out))
        with _held_by_rank_zero(Path(config.out), rank, world):
            return _run(config, loader, device, rank, world)
    finally:
        if owns_group:
            dist.destroy_process_group()


def _run(config: TrainConfig, loader: Loader | None, device: torch.device, rank: int, world: int) -> TrainSummary:
    """``train`` in a held run folder: from the run it holds (or step 0) to ``stop_at``/``steps``."""
    out = Path(config.out)
    state = previous_run(config)  # None: start at step 0
    torch.manual_seed(config.seed)  # the same initial weights on every rank

    # 2. Data, model, optimizer, schedule.
    loader = loader if loader is not None else _build_loader(config, device, rank, world)
    if config.text and not callable(getattr(loader, "caption_texts", None)):
        raise ConfigError("text=True needs a loader with caption_texts(caption_ids) (build_loader's loaders have it)")
    criterion = _criterion(config)
    tokenizer = Tokenizer(config.context_length) if config.text else None
    model = build_model(config).to(device)
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config)
    ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) if world > 1 else model

    # 3. Resume. The run folder gets the log from the first step on, config.yaml with each checkpoint.
    step = 0
    if state is not None:
        load_weights(model, state["model"], out / CHECKPOINT)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        loader.load_state_dict(state["loader"])
        set_rng_states(state["rng"][rank] if rank < len(state["rng"]) else state["rng"][0])
        step = state["step"]

    # 4. The loop.
    last = min(config.steps, config.stop_at or config.steps)
    bf16 = config.precision == "bf16" or (config.precision == "auto" and device.type == "cuda")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    logger = _Logger(out, config, rank, start=step, total=last) if rank == 0 else None
    model.train()
    losses, images_seen, started = [], 0, time.perf_counter()
    batches = _forever(loader)
    while step < last:
        images, labels = next(batches)
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        n = labels.shape[0] // config.images_per_caption
        tokens = tokenizer(loader.caption_texts(labels[:n].tolist())).to(device) if tokenizer else None
        with autocast:
            terms = _loss(criterion, ddp(images, config.images_per_caption, tokens), labels, n)
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        optimizer.step()
        scheduler.step()
        step += 1
        images_seen += labels.shape[0] * world
        losses.append(terms["loss"].detach())
        if logger is not None:
            logger.step(step, terms, scheduler.get_last_lr()[0], labels.shape[0] * world)
        if step % config.checkpoint_every == 0 or step == last:
            _checkpoint(out, model, optimizer, scheduler, loader, step, config, rank, world)
    if logger is not None:
        logger.close()
    skipped = getattr(loader, "skipped", None)
    if skipped is not None and any(vars(skipped).values()):
        log.warning("rank %d: the loader skipped data (%s); each case is named above", rank, skipped)
    seconds = time.perf_counter() - started
    return TrainSummary(out, step, images_seen, seconds, [float(x) for x in losses],
                        out / CHECKPOINT if (out / CHECKPOINT).exists() else None)  # fmt: skip


def previous_run(config: TrainConfig) -> dict | None:
    """The checkpoint ``train(config)`` continues from, or None to start at step 0.

    A run folder holding a checkpoint is refused unless ``config.resume`` (continue it) or
    ``config.overwrite`` (start over) says what to do with it; a checkpoint whose model or
    batch shape differs from ``config`` is refused, and other changed settings are warned
    about (the run goes on, but is no longer an exact continuation)."""
    out = Path(config.out)
    path = out / CHECKPOINT
    if not path.exists():
        if config.resume:
            log.warning("--resume: %s holds no %s, so this run starts at step 0", out, CHECKPOINT)
        return None
    if not config.resume:
        if config.overwrite:
            return None
        raise OutputError(
            f"{out} holds a checkpoint of an earlier run: pass --resume to continue it, --overwrite to start "
            "over (the checkpoint is replaced), or another --out"
        )
    state = load_checkpoint(path)
    saved = TrainConfig.from_dict(state["config"])
    changed = [name for name in RESUME_FIXED if getattr(saved, name) != getattr(config, name)]
    if changed:
        diff = ", ".join(f"{name} {getattr(config, name)!r} (checkpoint: {getattr(saved, name)!r})" for name in changed)
        raise CheckpointError(
            f"cannot resume {path} with {diff}: the model or batch would differ; use the checkpoint's values, "
            "or --overwrite / another --out to start over"
        )
    changed = [f.name for f in fields(TrainConfig) if f.name not in RESUME_FREE
               and getattr(saved, f.name) != getattr(config, f.name)]  # fmt: skip
    if changed:
        log.warning("resuming %s with changed %s: the run goes on, but is no longer an exact continuation",
                    path, ", ".join(f"{n} ({getattr(saved, n)!r} -> {getattr(config, n)!r})" for n in changed))  # fmt: skip
    return state


def _criterion(config: TrainConfig) -> MultiPosConLoss | MultiPosConLossMM:
    """The public loss module of the run: image-image, or (StableRep+) with the image-text term."""
    if config.text:
        return MultiPosConLossMM(config.temperature, config.image_loss_weight, config.text_loss_weight,
                                 backend=config.loss_backend)  # fmt: skip
    return MultiPosConLoss(config.temperature, backend=config.loss_backend)


def _loss(criterion, outputs: dict, labels: torch.Tensor, n: int) -> dict:
    """The criterion's terms for the log (the first view's labels are the texts' caption ids)."""
    if isinstance(criterion, MultiPosConLoss):
        return {"loss": criterion(outputs["feats"], labels)["loss"]}
    terms = criterion({"image_feats": outputs["feats"], "image_emb": outputs["image_emb"], "text_emb": outputs["text_emb"],
                       "image_labels": labels, "text_labels": labels[:n], "logit_scale": outputs["logit_scale"]})  # fmt: skip
    return {**terms, "logit_scale": outputs["logit_scale"]}


def _forever(loader: Iterable) -> Iterator:
    while True:
        yield from loader


@contextmanager
def _held_by_rank_zero(out: Path, rank: int, world: int) -> Iterator[None]:
    """Rank 0 holds the run folder (``hold_run_folder``) while the block runs; when it cannot
    (another process holds it, the folder cannot be created), every rank raises, so that no rank
    is left waiting for a peer that stopped."""
    with ExitStack() as held:
        error = None
        if rank == 0:
            try:
                held.enter_context(hold_run_folder(out))
            except (OutputError, OSError) as exc:
                error = exc
        if world > 1:
            message = [None if error is None else str(error)]
            dist.broadcast_object_list(message, src=0)
            if error is None and message[0] is not None:
                error = OutputError(message[0])
        if error is not None:
            raise error
        yield


def _init_distributed() -> bool:
    """Join torchrun's process group (NCCL on GPU, gloo on CPU) unless one exists; True if created here."""
    world, rank, local_rank = (env_int(name, default) for name, default in (("WORLD_SIZE", 1), ("RANK", 0), ("LOCAL_RANK", 0)))
    if world < 1 or not 0 <= rank < world or local_rank < 0:
        raise ConfigError(f"environment variables WORLD_SIZE={world}, RANK={rank}, LOCAL_RANK={local_rank} do not describe "
                          "a process of a job (WORLD_SIZE >= 1, 0 <= RANK < WORLD_SIZE); unset them, or launch with torchrun")  # fmt: skip
    if dist.is_initialized() or world <= 1:
        return False
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return True


def _device(config: TrainConfig) -> torch.device:
    """``config.device``, or cuda when available; ConfigError for a device (or online generator
    device) that is no torch device or that this machine does not have."""
    if config.online.device is not None:
        check_device(config.online.device, "online device")
    if config.device is not None:
        return check_device(config.device)
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _build_loader(config: TrainConfig, device: torch.device, rank: int, world: int):
    from stablerep_fast.data import build_loader

    if not config.data:
        raise ConfigError("no training data: set data to a shard folder written by `stablerep-fast generate`, "
                          "or to generator:MODEL (e.g. generator:shapes) to generate while training")  # fmt: skip
    return build_loader(
        config.data, config.captions_per_batch // world, config.images_per_caption, config.image_size,
        backend=config.loader_backend, device=device, seed=config.seed, rank=rank, world_size=world,
        num_workers=config.num_workers, augment=config.augment, online=config.online, min_score=config.min_score,
    )  # fmt: skip


def _checkpoint(out: Path, model: StableRepModel, optimizer, scheduler, loader, step: int, config: TrainConfig,
                rank: int, world: int) -> None:  # fmt: skip
    """Every rank's RNG states are gathered; rank 0 writes the checkpoint, then config.yaml (its
    settings), so config.yaml never describes a run that has no checkpoint."""
    rng = rng_states()
    states = [None] * world
    if world > 1:
        dist.all_gather_object(states, rng)
    else:
        states = [rng]
    if rank == 0:
        save_checkpoint(out / CHECKPOINT, {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "loader": loader.state_dict(), "rng": states, "step": step, "config": config.to_dict(),
        })  # fmt: skip
        config.save(out / CONFIG_FILE)


def _record_step(line: str) -> float:
    """The step of a log line; infinity for a line that is not a record of this package."""
    try:
        step = json.loads(line).get("step")
    except (ValueError, AttributeError):
        return math.inf
    return step if isinstance(step, int) else math.inf


class _Logger:
    """Rank 0's progress bar (images/s, loss), JSONL scalars and optional TensorBoard. The log
    is opened after the first step (a run that fails before leaves the old log as it was): a new
    run starts a new log, a resumed one keeps the records up to its checkpoint's step."""

    def __init__(self, out: Path, config: TrainConfig, rank: int, *, start: int, total: int):
        self.every, self.path, self.start = config.log_every, out / LOG_FILE, start
        self.file = None
        self.bar = tqdm(total=total, initial=start, unit="step", disable=not config.progress, dynamic_ncols=True)
        self.tb = None
        if config.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                raise ConfigError("tensorboard logging needs: pip install 'stablerep_fast[tensorboard]'") from exc
            self.tb = SummaryWriter(out / "tensorboard")
        self.window_images, self.window_start = 0, time.perf_counter()

    def step(self, step: int, terms: dict, lr: float, images: int) -> None:
        if self.file is None:
            self.file = self._open()
        self.bar.update(1)
        self.window_images += images
        if step % self.every:
            return
        now = time.perf_counter()
        record = {"step": step, **{k: v.item() for k, v in terms.items()}, "lr": lr,
                  "images_per_s": self.window_images / (now - self.window_start)}  # fmt: skip
        self.window_images, self.window_start = 0, now
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        self.bar.set_postfix(loss=f"{record['loss']:.4f}", img_s=f"{record['images_per_s']:.0f}")
        if self.tb is not None:
            for key, value in record.items():
                if key != "step":
                    self.tb.add_scalar(f"train/{key}", value, step)

    def _open(self):
        """The log, for appending this run's records; a killed run's records past the resumed
        checkpoint (and a line cut off by the kill) are dropped first."""
        if not self.start or not self.path.exists():
            return open(self.path, "w")
        kept = [line for line in self.path.read_text().splitlines(keepends=True)
                if line.endswith("\n") and _record_step(line) <= self.start]  # fmt: skip
        atomic_write(self.path, "".join(kept).encode())
        return open(self.path, "a")

    def close(self) -> None:
        self.bar.close()
        if self.file is not None:
            self.file.close()
        if self.tb is not None:
            self.tb.close()
