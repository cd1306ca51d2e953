"""Access to the compiled extension ``stablerep_fast._C``.

The extension never links against libtorch: callers pass raw data pointers, sizes and a
``_C.DType``. This module maps torch tensors onto that convention and reports, rather than
hides, why the extension is missing when it is.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import torch

_C: ModuleType | None
try:
    _C = importlib.import_module("stablerep_fast._C")
    _IMPORT_ERROR: str | None = None
except ImportError as exc:  # a source checkout that was never built
    _C = None
    _IMPORT_ERROR = f"{type(exc).__name__}: {exc}"


def extension() -> ModuleType:
    """The compiled module; raises RuntimeError saying why when it is not importable."""
    if _C is None:
        raise RuntimeError(
            "stablerep_fast._C is not built; reinstall with `pip install -e .` "
            f"({_IMPORT_ERROR})"
        )
    return _C


def is_built() -> bool:
    return _C is not None


def c_dtype(dtype: torch.dtype):
    """The extension's DType for a torch floating dtype; ValueError for others."""
    ext = extension()
    table = {
        torch.float32: ext.DType.float32,
        torch.float64: ext.DType.float64,
        torch.float16: ext.DType.float16,
        torch.bfloat16: ext.DType.bfloat16,
    }
    if dtype not in table:
        raise ValueError(f"the compiled kernels do not support dtype {dtype}")
    return table[dtype]


def build_info() -> dict:
    """How the extension was compiled, plus what its CUDA runtime sees (if compiled with CUDA)."""
    if _C is None:
        return {"built": False, "error": _IMPORT_ERROR}
    info = {"built": True, **_C.build_info()}
    if info["cuda"]:
        info["cuda_runtime"] = _C.cuda_runtime_info()
    return info
