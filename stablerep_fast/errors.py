"""The package's errors: one hierarchy, so the command line turns any of them into one line.

Library functions raise these for problems with the user's input or environment; each message
says what is wrong, where (the file, setting or variable) and what to do. ``stablerep-fast``
prints ``error: <message>`` and exits with code 2, without a traceback.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


class StableRepError(Exception):
    """Base of every user-facing error of the package."""


class ConfigError(StableRepError, ValueError):
    """A bad setting: a flag, a config file, a ``--set`` override or an environment variable."""


class DataError(StableRepError, ValueError):
    """Input that cannot be used as it is: a caption file, a dataset, probe data."""


class CheckpointError(DataError):
    """A checkpoint that cannot be read, or that does not fit the run resuming from it."""


class OutputError(StableRepError):
    """An output folder the package refuses to write into (it holds something else)."""


class LockError(OutputError):
    """Another process holds the lock on the files this process was about to write."""


class GenerateError(StableRepError):
    """A problem with generation's input or environment: a setting, a model, a captions file, an output folder."""


def first_line(exc: BaseException) -> str:
    """An exception as one line: its type and the first line of its message."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def env_int(name: str, default: int, env: dict | None = None) -> int:
    """The integer environment variable ``name`` (``default`` when unset); ConfigError when it is
    not an integer (launchers such as torchrun and Slurm set RANK, WORLD_SIZE, ...)."""
    value = (os.environ if env is None else env).get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} is not an integer; unset it or fix it") from None


def check_device(name: str, setting: str = "device") -> torch.device:
    """``torch.device(name)``; ConfigError naming ``setting`` when ``name`` is no torch device or
    names a GPU this machine does not have."""
    import torch  # here: the errors stay importable without torch

    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"{setting} {name!r} is not a torch device; use cpu, cuda or cuda:INDEX") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{setting} {name!r}: no CUDA GPU is visible to torch here; use cpu, or run on a machine with a GPU")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"{setting} {name!r}: this machine has {torch.cuda.device_count()} GPU(s); "
                          "choose cuda:0 to cuda:N-1")  # fmt: skip
    return device
