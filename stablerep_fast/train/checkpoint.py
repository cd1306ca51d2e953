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
from stablerep_fast.train.config import TrainConfig
from stablerep_fast.train.model import StableRepModel, build_model

CHECKPOINT = "checkpoint.pt"


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Write ``state`` to ``path`` so that a crash leaves the previous file intact."""
    with AtomicFile(path) as f:
        torch.save(state, f)


def load_checkpoint(path: str | Path) -> dict:
    """A checkpoint's state dict, on the CPU."""
    return torch.load(path, map_location="cpu", weights_only=False)


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
    model.load_state_dict(state["model"])
    return model.eval(), config
