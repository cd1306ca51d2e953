"""The generate suite: images/s of tiny SD-shaped models and the shapes generator on a CPU."""

import pytest

from stablerep_fast import bench


def test_generate_suite_times_tiny_sd_shapes_and_the_scorers(tiny, check_record):
    records = bench.run_suite("generate", "cpu", **tiny["generate"])
    measured = {r["backend"]: r for r in records if not r.get("skipped")}
    assert set(measured) == {"eager", "shapes", "score:digits", "score:clip"}
    for r in measured.values():
        check_record(r)
    # A scorer's overhead: its time per image over that of the generator it scores (clip: SD eager).
    clip = measured["score:clip"]
    assert clip["model"] == "ViT-B-32-random" and clip["batch"] == tiny["generate"]["score_images"]
    assert clip["overhead"] == pytest.approx((clip["ms"] / clip["batch"]) / (measured["eager"]["ms"] / measured["eager"]["batch"]))
    assert measured["score:digits"]["overhead"] > 0
    eager = measured["eager"]
    assert eager["model"] == "tiny-random" and eager["batch"] == 1 and eager["speedup"] == pytest.approx(1.0)
    assert eager["throughput"] == pytest.approx(1 / (eager["ms"] * 1e-3))
    assert eager.get("floor_frac") is None  # no known FLOP floor on a CPU
    skipped = {r["backend"]: r["skipped"] for r in records if r.get("skipped")}
    assert "compile" in skipped and "C++ build" in skipped["compile"]


def test_generate_suite_times_few_step_families_against_their_counted_flops(tiny, check_record):
    """The GPU default (SD-Turbo at 1 and 4 steps) runs on CPU at tiny size, with a family that
    runs through diffusers' __call__ (SDXL-Turbo) beside it."""
    few_step = [("sd-turbo", 1), ("sd-turbo", 2), ("sdxl-turbo", 1)]
    records = bench.run_suite("generate", "cpu", **tiny["generate"], few_step=few_step, backends=["eager"], scorers=[])
    measured = {(r["model"], r["steps"]): r for r in records if r["model"] != "tiny-random"}
    assert set(measured) == {("sd-turbo-random", 1), ("sd-turbo-random", 2), ("sdxl-turbo-random", 1)}
    for r in measured.values():
        check_record(r)
        assert r["guidance"] == 0.0 and r["floor_frac"] is None  # turbo: no guidance; no known peak on a CPU
        assert r["throughput"] == pytest.approx(r["batch"] / (r["ms"] * 1e-3))
    one, two = measured[("sd-turbo-random", 1)]["flops_per_image"], measured[("sd-turbo-random", 2)]["flops_per_image"]
    assert 0 < one < two < 2 * one  # the second step adds one UNet call, not a second text encoding or decode
