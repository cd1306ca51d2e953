"""Optional dependencies: each stage needs its extra, and says which in one line when it is missing.

``pip install stablerep_fast`` installs only what the loss needs (torch, numpy, triton on Linux,
the compiled extension). The stages come with extras (see pyproject.toml): ``generate``,
``data``, ``train`` (which includes ``data``), ``all``. A stage calls ``require_extra`` before
its imports, so importing it without its extra raises ``MissingExtraError``, an ImportError
whose message is one line naming the extra to install.
"""

from __future__ import annotations

import importlib.util

# The third-party modules each stage imports (module name -> the distribution pip installs).
STAGE_MODULES = {
    "generate": {"diffusers": "diffusers", "transformers": "transformers", "PIL": "pillow", "tqdm": "tqdm"},
    "data": {"torchvision": "torchvision", "PIL": "pillow"},
    "train": {"timm": "timm", "open_clip": "open_clip_torch", "yaml": "pyyaml", "tqdm": "tqdm",
              "torchvision": "torchvision", "PIL": "pillow"},
}  # fmt: skip
STAGE_MODULES["all"] = {k: v for stage in ("generate", "data", "train") for k, v in STAGE_MODULES[stage].items()}


class MissingExtraError(ImportError):
    """A stage imported without its extra; the message is one line: what is missing and the pip command."""


def missing_modules(extra: str) -> list[str]:
    """The distributions of ``extra`` that cannot be imported here."""
    missing = []
    for module, dist in STAGE_MODULES[extra].items():
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a parent package that fails to import, or a broken spec
            found = False
        if not found:
            missing.append(dist)
    return missing


def require_extra(stage: str, extra: str | None = None) -> None:
    """Raise MissingExtraError unless the modules of ``extra`` (default: the stage's name) import."""
    extra = extra or stage
    missing = missing_modules(extra)
    if missing:
        raise MissingExtraError(
            f"stablerep_fast.{stage} needs the '{extra}' extra ({', '.join(missing)} not installed): "
            f"pip install 'stablerep_fast[{extra}]'"
        )
