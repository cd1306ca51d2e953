"""Checkpoints: written atomically (temporary file, fsync, rename), checked and restored exactly.

A checkpoint holds the model, optimizer, scheduler, loader position, RNG states, step and
config, so ``resume`` continues as if the run had never stopped, and a sha256 of all of it
(``CHECKSUM``), so a damaged file is refused instead of resumed from.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import random
from pathlib import Path

import numpy as np
import torch

from stablerep_fast.atomic import AtomicFile
from stablerep_fast.errors import CheckpointError, OutputError
from stablerep_fast.train.config import TrainConfig
from stablerep_fast.train.model import StableRepModel, build_model

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_KEYS = ("model", "config", "step")  # what every checkpoint of ``train`` holds (see loop.py)
CHECKSUM = "sha256"  # the key of the contents' checksum (``state_checksum``) in a saved state


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Write ``state`` and its checksum to ``path`` so that a crash leaves the previous file
    intact. OutputError naming the file when it cannot be written (a full disk)."""
    path = Path(path)
    buffer = io.BytesIO()  # serialised first: the file is then written by plain writes, whose errors say why
    torch.save({**state, CHECKSUM: state_checksum(state)}, buffer)
    try:
        with AtomicFile(path) as f:
            f.write(buffer.getbuffer())
    except OSError as exc:
        raise OutputError(f"cannot write checkpoint {path} ({exc.strerror or exc}); free some space or choose another "
                          "--out, then continue with --resume (the last checkpoint written is left as it was)") from None  # fmt: skip


def load_checkpoint(path: str | Path) -> dict:
    """A checkpoint's state dict, on the CPU; CheckpointError naming the file when it is
    missing, damaged (its checksum does not match) or not a checkpoint of this package.
    Checkpoints written before checksums were recorded are read unchecked."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch.load raises many kinds for a damaged file
        raise CheckpointError(
            f"checkpoint {path} is damaged or not a torch checkpoint ({type(exc).__name__}); "
            "restore it from a copy, or start over with --overwrite"
        ) from None
    missing = [key for key in CHECKPOINT_KEYS if not isinstance(state, dict) or key not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} is not a stablerep_fast training checkpoint (no {missing})")
    expected = state.pop(CHECKSUM, None)
    if expected is not None and expected != state_checksum(state):
        raise CheckpointError(f"checkpoint {path} is damaged: its contents do not match the checksum written with them; "
                              "restore it from a copy, or start over with --overwrite")  # fmt: skip
    return state


def state_checksum(state: dict) -> str:
    """sha256 over everything ``state`` holds, in order: tensors and arrays by dtype, shape and
    bytes, containers item by item, other values pickled. Equal for a state and its reload."""
    digest = hashlib.sha256()

    def add(value) -> None:
        if isinstance(value, torch.Tensor):
            tensor = value.detach().cpu().contiguous()
            digest.update(f"tensor {tensor.dtype} {tuple(tensor.shape)}".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
        elif isinstance(value, np.ndarray):
            digest.update(f"array {value.dtype.str} {value.shape}".encode())
            digest.update(np.ascontiguousarray(value).tobytes())
        elif isinstance(value, dict):
            digest.update(f"{type(value).__name__} {len(value)}".encode())
            for key, item in value.items():
                add(key)
                add(item)
        elif isinstance(value, (list, tuple)):
            digest.update(f"{type(value).__name__} {len(value)}".encode())
            for item in value:
                add(item)
        else:
            digest.update(pickle.dumps(value, protocol=4))

    add(state)
    return digest.hexdigest()


def rng_states() -> dict:
    states = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def load_model(path: str | Path) -> tuple[StableRepModel, TrainConfig]:
    """The trained model of a checkpoint (eval mode, CPU) and its config."""
    state = load_checkpoint(path)
    config = TrainConfig.from_dict(state["config"])
    model = build_model(config)
    load_weights(model, state["model"], path)
    return model.eval(), config


def load_weights(model: StableRepModel, weights: dict, path: str | Path) -> None:
    """``model.load_state_dict(weights)``; CheckpointError naming ``path`` when they do not fit."""
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
        raise CheckpointError(f"checkpoint {path}: its weights do not fit the model ({first})") from None
