"""The table of suites: a suite that cannot run here is one skipped record with its reason."""

import dataclasses

from stablerep_fast import bench


def test_unavailable_suite_is_skipped_with_its_reason(monkeypatch):
    broken = dataclasses.replace(bench.SUITE_TABLE["generate"], unavailable=lambda: "needs diffusers (not installed)")
    monkeypatch.setitem(bench.SUITE_TABLE, "generate", broken)
    records = bench.run_suite("generate", "cpu")
    assert len(records) == 1 and records[0]["skipped"] == "needs diffusers (not installed)"
    text = bench.format_suite("generate", records, ["backend", "ms"])
    assert "(nothing measured)" in text and "skipped generate *: needs diffusers" in text
