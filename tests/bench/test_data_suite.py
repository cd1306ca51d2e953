"""The data suite: images/s of each loader backend against the torch loader."""

import pytest

from stablerep_fast import bench


def test_data_suite_times_each_loader_against_torch(tiny, check_record):
    records = bench.run_suite("data", "cpu", **tiny["data"])
    measured = {r["backend"]: r for r in records if not r.get("skipped")}
    assert "torch" in measured
    for r in measured.values():
        check_record(r)
        assert r["batches"] == 2 and r["batch"] == 8
        assert r["throughput"] == pytest.approx(r["batch"] / (r["ms"] * 1e-3))
    assert measured["torch"]["speedup"] == pytest.approx(1.0)
