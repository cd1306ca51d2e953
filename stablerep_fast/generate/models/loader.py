"""Loading a generator by name: a built-in one, a diffusers model folder, or a user's class.

    load_generator("shapes", device=..., dtype=...)              a built-in (BUILT_IN)
    load_generator("path/to/sd-turbo", device=..., dtype=...)    a diffusers folder (any family)
    load_generator("my_pkg.my_module:MyGenerator", ...)          a plugin, by import path

Built-in generators are named in ``BUILT_IN`` by import path, so adding one is one line and
importing this module imports none of them.
"""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import torch

from stablerep_fast.errors import GenerateError, first_line
from stablerep_fast.generate.models.diffusers_pipeline import load_diffusers_model
from stablerep_fast.generate.models.families import auto_gpu_dtype
from stablerep_fast.generate.models.protocol import Generator

# Built-in generator name -> "module:attribute" of its class (instantiated with no arguments).
BUILT_IN: dict[str, str] = {
    "shapes": "stablerep_fast.generate.models.shapes:ShapesPipeline",
    "digits": "stablerep_fast.generate.models.digits:DigitsPipeline",
}

# "package.module:Attribute" (dots allowed on both sides), the form of --model for a plugin.
_IMPORT_PATH = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


def check_generator(obj: object, name: str) -> Generator:
    """``obj`` if it satisfies the Generator protocol, else GenerateError saying what it lacks."""
    missing = [] if hasattr(obj, "model_id") else ["model_id"]
    missing += [] if callable(getattr(obj, "latent_shape", None)) else ["latent_shape"]
    missing += [] if callable(obj) else ["__call__"]
    if missing:
        raise GenerateError(
            f"{name} is not a generator: {type(obj).__name__} lacks {', '.join(missing)} "
            "(see stablerep_fast.generate.Generator)"
        )
    if not isinstance(obj.model_id, str) or not obj.model_id:
        raise GenerateError(f"{name} is not a generator: its model_id must be a non-empty string, got {obj.model_id!r}")
    return obj  # type: ignore[return-value]


def import_object(path: str, flag: str = "--model") -> object:
    """``"my_pkg.my_module:MyClass"``: import the module, take the attribute and instantiate it
    with no arguments if it is a class; GenerateError naming ``flag`` when any step fails."""
    module_name, _, attr_path = path.partition(":")
    try:
        obj = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - whatever the module raises becomes one line
        raise GenerateError(f"{flag} {path}: cannot import {module_name} ({first_line(exc)}); is it on PYTHONPATH?") from exc
    for attr in attr_path.split("."):
        if not hasattr(obj, attr):
            raise GenerateError(f"{flag} {path}: {getattr(obj, '__name__', module_name)} has no attribute {attr!r}")
        obj = getattr(obj, attr)
    if inspect.isclass(obj):
        try:
            obj = obj()
        except Exception as exc:  # noqa: BLE001 - the user's constructor: one line
            raise GenerateError(f"{flag} {path}: {attr_path}() failed ({first_line(exc)}); it must take no arguments") from exc
    return obj


def import_generator(path: str) -> Generator:
    """``"my_pkg.my_module:MyGenerator"``: ``import_object``, then checked against the protocol."""
    return check_generator(import_object(path), f"--model {path}")


def load_generator(
    model: str | Path | Generator,
    *,
    device: torch.device,
    dtype: torch.dtype,
    backend: str = "auto",
    cache_dir: Path | None = None,
    scheduler: str | None = None,
) -> Generator:
    """The generator ``model`` names: a Generator object (used as is), a name of ``BUILT_IN``
    (e.g. ``"shapes"``, the procedural renderer), an import path ``"pkg.module:Class"``, or a
    diffusers text-to-image folder (any family of ``families.py``) or single-file SD checkpoint
    (run by ``backend``, with ``scheduler`` or the family's). Bad names raise GenerateError (one line)."""
    name = str(model) if isinstance(model, (str, Path)) else None
    if name is not None and name not in BUILT_IN and (Path(name).exists() or not _IMPORT_PATH.fullmatch(name)):
        return load_diffusers_model(model, device=device, dtype=dtype, backend=backend, cache_dir=cache_dir, scheduler=scheduler)
    if name is not None:
        generator = import_generator(BUILT_IN.get(name, name))
    else:
        generator = check_generator(model, f"model {type(model).__name__}")
    if backend not in ("auto", "eager"):
        raise GenerateError(f"the {generator.model_id} generator has no {backend!r} backend; use --backend auto")
    if scheduler is not None:
        raise GenerateError(f"the {generator.model_id} generator has no diffusers scheduler; leave out --scheduler")
    return generator


def resolve_dtype(name: str, device: torch.device, model=None) -> torch.dtype:
    """The dtype ``name`` means for ``model`` on ``device``: "auto" is float16 on GPU (bfloat16
    for a diffusers folder whose family needs it, ``families.auto_gpu_dtype``), float32 on CPU."""
    if name == "auto":
        return auto_gpu_dtype(model) if device.type == "cuda" else torch.float32
    return getattr(torch, name)
