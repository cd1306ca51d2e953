"""What the bench tests share: settings that make each suite take seconds on a 2-core CPU, and
the check of the fields every measured record of a suite has."""

import pytest

# Fields every measured record of a suite has (suite, backend, device, sizes, ms, ...).
COMMON_KEYS = {"suite", "backend", "device", "ms", "versions"}
SUITE_KEYS = {
    "loss": {"N", "D", "dtype", "peak_mb", "speedup", "gflops", "floor_frac"},
    "generate": {"dtype", "model", "batch", "steps", "resolution", "throughput", "unet_step_ms", "peak_mb", "speedup"},
    "data": {"workers", "batch", "resolution", "image_size", "batches", "throughput", "speedup"},
    "train": {"dtype", "model", "image_size", "batch", "throughput", "speedup", "overhead_frac"},
}
# Settings that make each suite take seconds on a 2-core CPU (in place of its --quick defaults).
TINY = {
    "loss": dict(sizes=[32], dims=[4], dtypes=["float32"], backends=["reference", "chunked"], repeats=1),
    "generate": dict(captions=1, images_per_caption=1, steps=2, resolution=32, shapes_resolution=32, repeats=1, score_images=2),
    "data": dict(workers=[0], captions=8, captions_per_batch=4, images_per_caption=2, resolution=64, image_size=32, repeats=1),
    "train": dict(preset="tiny", captions_per_batch=2, repeats=1),  # n >= 2: BN per view
}


def _check_record(record: dict, *, versions: bool = True) -> None:
    """A measured record of a suite: every field of its suite, a positive time, no error;
    ``versions=False``: a suite's own record, before ``run_suite`` adds the versions."""
    expected = COMMON_KEYS | SUITE_KEYS[record["suite"]]
    if not versions:
        expected = expected - {"versions"}
    assert expected <= set(record), f"{record['suite']} {record['backend']} lacks {sorted(expected - set(record))}"
    assert record["ms"] > 0, record
    assert record.get("error") is None, record


@pytest.fixture(scope="session")
def tiny() -> dict[str, dict]:
    """Per suite, settings that take seconds on a 2-core CPU (copy before changing)."""
    return TINY


@pytest.fixture(scope="session")
def check_record():
    """The check of a measured record of a suite (loss, generate, data or train)."""
    return _check_record
