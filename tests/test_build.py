"""The compiled extension: it is built, reports how, and its pointer-level entry works."""

import os
import platform

import numpy as np
import pytest
import torch

from stablerep_fast import _ext


def test_extension_is_built_and_describes_itself():
    info = _ext.build_info()
    assert info["built"], info.get("error")
    assert isinstance(info["openmp"], bool) and info["omp_max_threads"] >= 1
    if info["cuda"]:
        assert info["cuda_archs"]
        # Safe without a GPU or driver: the count is reported, errors are strings.
        assert int(info["cuda_runtime"]["device_count"]) >= 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("numel", [0, 1, 1000, 200_003])  # the last one crosses the OpenMP threshold
def test_all_finite_agrees_with_torch_isfinite(dtype, numel):
    ext = _ext.extension()
    x = torch.randn(numel).to(dtype)
    assert ext.all_finite(x.data_ptr(), x.numel(), _ext.c_dtype(dtype)) is True
    for bad in (float("nan"), float("inf"), -float("inf")):
        if numel == 0:
            continue
        y = x.clone()
        y[np.random.randint(numel)] = bad
        assert ext.all_finite(y.data_ptr(), y.numel(), _ext.c_dtype(dtype)) is bool(torch.isfinite(y).all())
    # The largest finite value is finite: only a saturated exponent counts.
    big = torch.full((max(numel, 1),), torch.finfo(dtype).max, dtype=dtype)
    assert ext.all_finite(big.data_ptr(), big.numel(), _ext.c_dtype(dtype)) is True


def test_unsupported_dtype_is_a_clear_error():
    with pytest.raises(ValueError, match="do not support dtype torch.int32"):
        _ext.c_dtype(torch.int32)


# What each portable CPU variant needs, as /proc/cpuinfo names the features.
VARIANT_FLAGS = {
    "baseline": set(),
    "avx2": {"avx2", "fma", "f16c"},
    "avx512": {"avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512cd"},
}


def _cpu_flags() -> set[str]:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


@pytest.mark.skipif(not os.path.exists("/proc/cpuinfo"), reason="reads the CPU's features from /proc/cpuinfo")
def test_cpu_variant_follows_the_cpu_features():
    info = _ext.build_info()
    variants = _ext.extension().cpu_variants()
    assert [name for name, _ in variants] == info["cpu_variants"]
    if info["cpu_variants"] == ["native"]:  # STABLEREP_FAST_NATIVE=1: built for this machine only
        assert info["cpu_variant"] == "native"
        return
    flags = _cpu_flags()
    for name, runs in variants:
        assert runs == (VARIANT_FLAGS[name] <= flags), name
    assert info["cpu_variant"] == next(name for name, runs in variants if runs)
    if platform.machine() in ("x86_64", "AMD64"):
        assert info["cpu_variants"] == ["avx512", "avx2", "baseline"]
