"""The loss suite: every backend's forward + backward against the dense reference."""

import pytest

from stablerep_fast.bench.loss import LossCase, run_case, run_loss_suite


def test_loss_suite_records_every_backend_against_the_reference(check_record):
    records = run_loss_suite(sizes=[64], dims=[8], dtypes=["float32"], device="cpu", repeats=2)
    measured = [r for r in records if not r.get("skipped")]
    assert {r["backend"] for r in measured} >= {"reference", "chunked"}
    for r in measured:
        check_record(r, versions=False)
        assert r["peak_mb"] >= 0 and r["N"] == 64 and r["D"] == 8 and r["device"] == "cpu"
    ref = next(r for r in measured if r["backend"] == "reference")
    assert ref["speedup"] == pytest.approx(1.0)
    for r in measured:
        assert r["speedup"] == pytest.approx(ref["ms"] / r["ms"])
    skipped = {r["backend"]: r["skipped"] for r in records if r.get("skipped")}
    assert "cuda" in skipped and "reference-compiled" in skipped  # GPU-only, and minutes of C++ build on CPU


def test_failed_case_is_recorded_not_raised():
    r = run_case(LossCase("cuda", 8, 4, "float32", "cpu", repeats=1))  # a GPU backend on CPU
    assert r["ms"] is None and "cuda" in r["error"]
