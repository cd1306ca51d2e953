"""Checkpoints: written atomically (temporary file, fsync, rename), restored exactly.

A checkpoint holds the model, optimizer, scheduler, loader position, RNG states, step and
config, so ``resume`` continues as if the run had never stopped.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from stablerep_fast.atomic import AtomicFile
from stablerep_fast.errors import CheckpointError
from stablerep_fast.train.config import TrainConfig
from stablerep_fast.train.model import StableRepModel, build_model

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_KEYS = ("model", "config", "step")  # what every checkpoint of ``train`` holds (see loop.py)


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Write ``state`` to ``path`` so that a crash leaves the previous file intact."""
    with AtomicFile(path) as f:
        torch.save(state, f)


def load_checkpoint(path: str | Path) -> dict:
    """A checkpoint's state dict, on the CPU; CheckpointError naming the file when it is
    missing, damaged or not a checkpoint of this package."""
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
    return state


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
