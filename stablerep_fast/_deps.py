"""Optional dependencies: each stage needs its extra, and says which in one line when it is missing.

``pip install stablerep_fast`` installs only what the loss needs (torch, numpy, triton on Linux,
the compiled extension). The stages come with extras (see pyproject.toml): ``generate``,
``data``, ``train`` (which includes ``data``), ``all``. A stage calls ``require_extra`` before
its imports, so importing it without its extra raises ``MissingExtraError``, an ImportError
whose message is one line naming the extra to install.
"""

from __future__ import annotations

import importlib.util

# The third-party modules each stage imports when it is imported (module -> the distribution
# pip installs), and the extra that brings them. The text tower's open_clip is checked when a
# text model is built (``train`` extra too).
STAGE_MODULES = {
    "generate": {"diffusers": "diffusers", "transformers": "transformers", "PIL": "pillow", "tqdm": "tqdm"},
    "data": {"torchvision": "torchvision", "PIL": "pillow"},
    "train": {"timm": "timm", "yaml": "pyyaml", "tqdm": "tqdm"},
    "eval": {"timm": "timm", "yaml": "pyyaml", "PIL": "pillow"},
}
# The demo also augments in memory (kornia, the data extra's) and reads the real digit scans (scikit-learn, train's).
STAGE_MODULES["demo"] = {**{k: v for stage in ("generate", "data", "train") for k, v in STAGE_MODULES[stage].items()},
                         "kornia": "kornia", "sklearn": "scikit-learn"}  # fmt: skip
TEXT_TOWER_MODULES = {"open_clip": "open_clip_torch"}  # train's StableRep+ text tower, when built
STAGE_EXTRA = {"generate": "generate", "data": "data", "train": "train", "eval": "train", "demo": "all"}


class MissingExtraError(ImportError):
    """A stage imported without its extra; the message is one line: what is missing and the pip command."""


def missing_modules(modules: dict[str, str]) -> list[str]:
    """The distributions of ``modules`` (module -> distribution) that cannot be imported here."""
    missing = []
    for module, dist in modules.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a parent package that fails to import, or a broken spec
            found = False
        if not found:
            missing.append(dist)
    return missing


def require_extra(stage: str, modules: dict[str, str] | None = None, extra: str | None = None) -> None:
    """Raise MissingExtraError unless ``modules`` (default: the stage's) import; the message
    names ``extra`` (default: the stage's)."""
    missing = missing_modules(STAGE_MODULES[stage] if modules is None else modules)
    if missing:
        extra = extra or STAGE_EXTRA[stage]
        raise MissingExtraError(
            f"stablerep_fast.{stage} needs the '{extra}' extra ({', '.join(missing)} not installed): "
            f"pip install 'stablerep_fast[{extra}]'"
        )
