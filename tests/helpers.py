"""The assertion helper that says where and by how much tensors differ, the loaders' contract,
and the guard that skips tests whose stage cannot be imported here."""

import importlib

import pytest
import torch


def assert_close(actual, expected, *, rtol: float, atol: float, name: str = "value") -> None:
    """Like torch.testing.assert_close, but reports the worst index, NaN/inf mismatches and counts."""
    actual = torch.as_tensor(actual).detach().double().cpu()
    expected = torch.as_tensor(expected).detach().double().cpu()
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    nan_mismatch = torch.isnan(actual) != torch.isnan(expected)
    assert not nan_mismatch.any(), f"{name}: NaN mismatch at {nan_mismatch.nonzero()[:5].tolist()}"
    finite = torch.isfinite(expected) & torch.isfinite(actual)
    inf_mismatch = ~finite & ~torch.isnan(expected) & (actual != expected)
    assert not inf_mismatch.any(), f"{name}: inf mismatch at {inf_mismatch.nonzero()[:5].tolist()}"
    err = (actual - expected).abs().where(finite, torch.zeros(()))
    bad = err > atol + rtol * expected.abs()
    if bad.any():
        worst = int(torch.argmax(err - rtol * expected.abs()))
        idx = torch.unravel_index(torch.tensor(worst), expected.shape) if expected.dim() else ()
        idx = tuple(int(i) for i in idx)
        raise AssertionError(
            f"{name}: {int(bad.sum())}/{bad.numel()} elements out of tolerance (rtol={rtol}, atol={atol}); "
            f"worst at {idx}: actual {actual.flatten()[worst].item():.10g} vs expected "
            f"{expected.flatten()[worst].item():.10g} (abs err {err.flatten()[worst].item():.3g})"
        )


def check_epoch(loader, n: int, m: int, size: int) -> list:
    """One epoch of ``loader`` (from step 0), checked against the loaders' contract: len() batches
    of float32 images [n*m, 3, size, size] and int64 view-major labels of n distinct captions."""
    batches = list(loader)
    assert len(batches) == len(loader) and loader.step == len(loader) and loader.epoch == 1
    for images, labels in batches:
        assert images.shape == (n * m, 3, size, size) and images.dtype == torch.float32
        assert labels.dtype == torch.int64 and torch.equal(labels, labels[:n].repeat(m))
        assert len(set(labels[:n].tolist())) == n
    return batches


def require_stage(*stages: str) -> None:
    """Skip the calling test module (called from a conftest.py: its whole folder) unless each
    ``stablerep_fast.<stage>`` imports; the skip's reason is the stage's one-line message naming
    the extra to install. Only a missing extra skips: any other import error still fails."""
    from stablerep_fast._deps import MissingExtraError

    __tracebackhide__ = True  # the skip is reported at the caller's line
    for stage in stages:
        try:
            importlib.import_module(f"stablerep_fast.{stage}")
        except MissingExtraError as exc:
            pytest.skip(str(exc), allow_module_level=True)
