"""The train suite: a training step end to end against the model alone."""

import pytest

from stablerep_fast import bench


def test_train_suite_compares_end_to_end_with_the_model_alone(tiny, check_record):
    records = bench.run_suite("train", "cpu", **tiny["train"])
    by_variant = {r["backend"]: r for r in records}
    assert set(by_variant) == {"model", "model+loss", "end-to-end", "end-to-end-online"}
    for r in records:
        check_record(r)
        assert r["batch"] == 2 * r["images_per_caption"]
        assert r["overhead_frac"] == pytest.approx(1 - r["speedup"])
    assert by_variant["model"]["speedup"] == pytest.approx(1.0)
