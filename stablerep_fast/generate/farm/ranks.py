"""Where a process stands in a farm: world size, rank and device from torchrun or Slurm.

With ``--assign static`` shard s belongs to rank s % world_size (``shards_for_rank``); with
the default dynamic split ranks claim shards (``claims.py``) and the rank only says where in the
shard list a rank starts. Ranks share nothing but the output folder, so one command launched on
many GPUs and nodes (``torchrun --nproc-per-node 8 ...`` or ``srun ...``) splits the work.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch

from stablerep_fast.errors import GenerateError, env_int

# (world size, rank, local rank) variables, in the order they are looked for.
LAUNCHERS = (
    ("WORLD_SIZE", "RANK", "LOCAL_RANK"),  # torchrun
    ("SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID"),  # srun
)


def farm_from_env(env: Mapping[str, str] | None = None) -> tuple[int, int, int]:
    """(world size, rank, local rank) set by torchrun or Slurm; (1, 0, 0) when neither is."""
    env = os.environ if env is None else env
    for world, rank, local in LAUNCHERS:
        if world in env and rank in env:
            return env_int(world, 1, env), env_int(rank, 0, env), env_int(local, 0, env)
    return 1, 0, 0


def resolve_farm(world_size: int | None, rank: int | None, env: Mapping[str, str] | None = None) -> tuple[int, int, int]:
    """The farm position: explicit values win over the environment; checked."""
    env_world, env_rank, local_rank = farm_from_env(env)
    world_size = env_world if world_size is None else world_size
    rank = env_rank if rank is None else rank
    if not 0 <= rank < world_size:
        raise GenerateError(f"rank must be in [0, world size={world_size}), got {rank}")
    return world_size, rank, local_rank


def shards_for_rank(num_shards: int, world_size: int, rank: int) -> list[int]:
    """The shards rank ``rank`` owns: s with s % world_size == rank."""
    return list(range(rank, num_shards, world_size))


def resolve_device(device: str | None, local_rank: int) -> torch.device:
    """``device`` (None: cuda when available); a bare "cuda" means this process's GPU on the
    node (local rank modulo the GPUs seen)."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise GenerateError(f"bad device {device!r}: {exc}") from exc
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise GenerateError("--device cuda but torch sees no CUDA device")
        if resolved.index is None:
            resolved = torch.device("cuda", local_rank % torch.cuda.device_count())
        if resolved.index >= torch.cuda.device_count():
            raise GenerateError(f"--device {device}: torch sees {torch.cuda.device_count()} CUDA devices")
    return resolved
