"""The benchmark harness and the command line (tiny sizes; speed targets live in benchmarks/)."""

import contextlib
import dataclasses
import io
import json
import subprocess
import sys

import pytest
import torch

from stablerep_fast import bench
from stablerep_fast.bench.loss import LossCase, run_case, run_loss_suite
from stablerep_fast.bench.plot import plot_records
from stablerep_fast.bench.timing import time_fn
from stablerep_fast.cli import main

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
    "generate": dict(captions=1, images_per_caption=1, steps=2, resolution=32, shapes_resolution=32, repeats=1),
    "data": dict(workers=[0], captions=8, captions_per_batch=4, images_per_caption=2, resolution=64, image_size=32, repeats=1),
    "train": dict(preset="tiny", captions_per_batch=2, repeats=1),  # n >= 2: BN per view
}


def _check_fields(record: dict) -> None:
    expected = COMMON_KEYS | SUITE_KEYS[record["suite"]]
    assert expected <= set(record), f"{record['suite']} {record['backend']} lacks {sorted(expected - set(record))}"
    assert record["ms"] > 0, record
    assert record.get("error") is None, record


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """``stablerep-fast bench`` over every suite once, with TINY defaults, --json and --plot."""
    tmp = tmp_path_factory.mktemp("bench")
    out, plots = tmp / "records.json", tmp / "plots"
    with pytest.MonkeyPatch.context() as mp:
        for name, settings in TINY.items():
            tiny = dataclasses.replace(bench.SUITE_TABLE[name], defaults=lambda device, quick, s=settings: dict(s))
            mp.setitem(bench.SUITE_TABLE, name, tiny)
        stdout = io.StringIO()
        with contextlib.redirect_stdout(stdout):
            code = main(["bench", "--device", "cpu", "--quick", "--json", str(out), "--plot", str(plots)])
    return dict(code=code, stdout=stdout.getvalue(), records=json.loads(out.read_text()), plots=plots)


def test_loss_suite_records_every_backend_against_the_reference():
    records = run_loss_suite(sizes=[64], dims=[8], dtypes=["float32"], device="cpu", repeats=2)
    measured = [r for r in records if not r.get("skipped")]
    assert {r["backend"] for r in measured} >= {"reference", "chunked"}
    for r in measured:
        assert SUITE_KEYS["loss"] | {"suite", "backend", "device", "ms"} <= set(r)
        assert r["ms"] > 0 and r["peak_mb"] >= 0 and r["N"] == 64 and r["D"] == 8 and r["device"] == "cpu"
    ref = next(r for r in measured if r["backend"] == "reference")
    assert ref["speedup"] == pytest.approx(1.0)
    for r in measured:
        assert r["speedup"] == pytest.approx(ref["ms"] / r["ms"])
    skipped = {r["backend"]: r["skipped"] for r in records if r.get("skipped")}
    assert "cuda" in skipped and "reference-compiled" in skipped  # GPU-only, and minutes of C++ build on CPU


def test_cpu_peak_memory_sees_a_large_allocation():
    # In a fresh process, as the CPU harness is meant to be used: threads left behind by
    # other tests could free memory during the call and mask the allocation.
    code = (
        "import torch; from stablerep_fast.bench.timing import peak_memory_mb; "
        "print(peak_memory_mb(lambda: torch.ones(64 * 2**20 // 4).sum(), torch.device('cpu')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    mb = float(out.stdout.split()[-1])
    assert 48 <= mb <= 200  # a 64 MiB tensor (plus allocator slack) was touched


def test_time_fn_reports_ordered_quantiles():
    t = time_fn(lambda: sum(range(10_000)), torch.device("cpu"), warmup=1, repeats=7)
    assert 0 < t.p10_ms <= t.median_ms <= t.p90_ms and t.repeats == 7


def test_failed_case_is_recorded_not_raised():
    r = run_case(LossCase("cuda", 8, 4, "float32", "cpu", repeats=1))  # a GPU backend on CPU
    assert r["ms"] is None and "cuda" in r["error"]


def test_generate_suite_times_tiny_sd_and_shapes():
    records = bench.run_suite("generate", "cpu", **TINY["generate"])
    measured = {r["backend"]: r for r in records if not r.get("skipped")}
    assert set(measured) == {"eager", "shapes"}
    for r in measured.values():
        _check_fields(r)
    eager = measured["eager"]
    assert eager["model"] == "tiny-random" and eager["batch"] == 1 and eager["speedup"] == pytest.approx(1.0)
    assert eager["throughput"] == pytest.approx(1 / (eager["ms"] * 1e-3))
    assert eager.get("floor_frac") is None  # no known FLOP floor on a CPU
    skipped = {r["backend"]: r["skipped"] for r in records if r.get("skipped")}
    assert "compile" in skipped and "C++ build" in skipped["compile"]


def test_data_suite_times_each_loader_against_torch():
    records = bench.run_suite("data", "cpu", **TINY["data"])
    measured = {r["backend"]: r for r in records if not r.get("skipped")}
    assert "torch" in measured
    for r in measured.values():
        _check_fields(r)
        assert r["batches"] == 2 and r["batch"] == 8
        assert r["throughput"] == pytest.approx(r["batch"] / (r["ms"] * 1e-3))
    assert measured["torch"]["speedup"] == pytest.approx(1.0)


def test_train_suite_compares_end_to_end_with_the_model_alone():
    records = bench.run_suite("train", "cpu", **TINY["train"])
    by_variant = {r["backend"]: r for r in records}
    assert set(by_variant) == {"model", "model+loss", "end-to-end", "end-to-end-online"}
    for r in records:
        _check_fields(r)
        assert r["batch"] == 2 * r["images_per_caption"]
        assert r["overhead_frac"] == pytest.approx(1 - r["speedup"])
    assert by_variant["model"]["speedup"] == pytest.approx(1.0)


def test_unavailable_suite_is_skipped_with_its_reason(monkeypatch):
    broken = dataclasses.replace(bench.SUITE_TABLE["generate"], unavailable=lambda: "needs diffusers (not installed)")
    monkeypatch.setitem(bench.SUITE_TABLE, "generate", broken)
    records = bench.run_suite("generate", "cpu")
    assert len(records) == 1 and records[0]["skipped"] == "needs diffusers (not installed)"
    text = bench.format_suite("generate", records, ["backend", "ms"])
    assert "(nothing measured)" in text and "skipped generate *: needs diffusers" in text


def test_bench_command_runs_every_suite(cli_run):
    assert cli_run["code"] == 0
    suites = {r["suite"] for r in cli_run["records"]}
    assert suites == set(bench.SUITES)
    for r in cli_run["records"]:
        if not r.get("skipped"):
            _check_fields(r)
    for name in bench.SUITES:
        assert bench.SUITE_TABLE[name].title in cli_run["stdout"]
    assert f"environment: GPU none in use; torch {torch.__version__}" in cli_run["stdout"]


def test_bench_command_says_what_it_skipped_and_why(cli_run):
    skips = [r for r in cli_run["records"] if r.get("skipped")]
    assert {r["suite"] for r in skips} >= {"generate", "data"}
    for r in skips:
        assert r["ms"] is None and f"  {r['suite']} {r['backend']}: {r['skipped']}" in cli_run["stdout"]
    assert "no GPU in use" in cli_run["stdout"]


def test_bench_json_round_trip(cli_run):
    records = cli_run["records"]
    assert json.loads(json.dumps(records)) == records
    assert all(r["versions"]["torch"] == torch.__version__ for r in records)
    # What was written can be tabled and charted again.
    for name in bench.SUITES:
        suite = bench.SUITE_TABLE[name]
        assert suite.title in bench.format_suite(suite.title, [r for r in records if r["suite"] == name], suite.columns)


def test_bench_plot_writes_pngs(cli_run, tmp_path):
    names = sorted(p.name for p in cli_run["plots"].iterdir())
    assert names == ["data_cpu.png", "generate_cpu.png", "loss_cpu_float32_D4.png", "train_cpu.png"]
    for p in cli_run["plots"].iterdir():
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(plot_records(cli_run["records"], tmp_path)) == 4


def test_bench_command_loss_flags_write_json(tmp_path, capsys):
    out = tmp_path / "loss.json"
    assert main(["bench", "--suite", "loss", "--device", "cpu", "--sizes", "32", "--dims", "4",
                 "--backends", "reference,chunked", "--repeats", "1", "--json", str(out)]) == 0  # fmt: skip
    records = json.loads(out.read_text())
    assert [r["backend"] for r in records] == ["reference", "chunked"]
    assert records[0]["versions"]["torch"] == torch.__version__
    assert "forward + backward" in capsys.readouterr().out


def test_bench_rejects_unknown_suite(capsys):
    assert main(["bench", "--suite", "nope", "--device", "cpu"]) == 2
    assert "unknown suite" in capsys.readouterr().err


def test_module_entry_point_and_console_script_help():
    for cmd in ([sys.executable, "-m", "stablerep_fast.bench", "--help"], ["stablerep-fast", "--help"]):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert "bench" in proc.stdout or "--suite" in proc.stdout


def test_validate_on_cpu_runs_every_stage_and_writes_json_and_markdown(tmp_path, capsys):
    """The one-command check, end to end on CPU (small sizes): the smoke test of the GPU flow."""
    out = tmp_path / "validate.json"
    assert main(["bench", "--device", "cpu", "--validate", "--json", str(out)]) == 0, capsys.readouterr().out
    document = json.loads(out.read_text())
    stages = {s["stage"]: s for s in document["stages"]}
    assert list(stages) == ["build", "tests", "loss", "generate", "data", "train"]
    assert all(s["status"] in ("ok", "skipped") for s in stages.values()), stages
    assert stages["build"]["status"] == "skipped" and "already built" in stages["build"]["detail"]
    assert stages["tests"]["detail"].startswith("0 passed, 0 failed, 0 errors")  # every gpu test skipped on a CPU
    measured = {(r["suite"], r["backend"]) for r in document["records"] if not r.get("skipped") and r.get("ms")}
    assert {("loss", "reference"), ("loss", "chunked"), ("loss", "cpp"), ("generate", "eager"), ("generate", "shapes"),
            ("data", "torch"), ("train", "model"), ("train", "model+loss"), ("train", "end-to-end"),
            ("train", "end-to-end-online")} <= measured  # fmt: skip
    for r in document["records"]:
        if not r.get("skipped") and r["suite"] in SUITE_KEYS:
            _check_fields(r)
    text = out.with_suffix(".md").read_text()
    assert text.startswith("# Validation on cpu") and "| stage | status | seconds | budget_s | detail |" in text
    assert all(f"| {name} | {stages[name]['status']} |" in text for name in stages)
    assert "## loss: forward + backward" in text and "| reference |" in text


def test_validate_stops_a_stage_at_its_budget_and_goes_on(tmp_path):
    from stablerep_fast.bench.validate import validate

    records = validate("cpu", tmp_path / "v.json", stages=["loss", "build"], budgets={"loss": 0.5}, echo=lambda _: None)
    summary = {r["stage"]: r for r in records if r["suite"] == "validate"}
    assert summary["loss"]["status"] == "timeout" and summary["loss"]["seconds"] < 30
    assert summary["build"]["status"] == "skipped"  # the next stage still ran


def test_validate_leaves_out_test_folders_whose_stage_is_missing(monkeypatch):
    from stablerep_fast.bench import report
    from stablerep_fast.bench.validate import SOURCE_ROOT, _test_folders_without_their_stage

    hint = "stablerep_fast.generate needs the 'generate' extra (diffusers not installed): pip install 'stablerep_fast[generate]'"
    monkeypatch.setattr(report, "missing_stage", lambda *stages: hint if "generate" in stages else None)
    ignored = _test_folders_without_their_stage(SOURCE_ROOT / "tests")
    assert set(ignored) == {"data", "eval", "generate", "train"} and set(ignored.values()) == {hint}  # ops/ still runs


def test_generate_suite_times_few_step_families_against_their_counted_flops():
    """The GPU default (SD-Turbo at 1 and 4 steps) runs on CPU at tiny size, with a family that
    runs through diffusers' __call__ (SDXL-Turbo) beside it."""
    few_step = [("sd-turbo", 1), ("sd-turbo", 2), ("sdxl-turbo", 1)]
    records = bench.run_suite("generate", "cpu", **TINY["generate"], few_step=few_step, backends=["eager"])
    measured = {(r["model"], r["steps"]): r for r in records if r["model"] != "tiny-random"}
    assert set(measured) == {("sd-turbo-random", 1), ("sd-turbo-random", 2), ("sdxl-turbo-random", 1)}
    for r in measured.values():
        _check_fields(r)
        assert r["guidance"] == 0.0 and r["floor_frac"] is None  # turbo: no guidance; no known peak on a CPU
        assert r["throughput"] == pytest.approx(r["batch"] / (r["ms"] * 1e-3))
    one, two = measured[("sd-turbo-random", 1)]["flops_per_image"], measured[("sd-turbo-random", 2)]["flops_per_image"]
    assert 0 < one < two < 2 * one  # the second step adds one UNet call, not a second text encoding or decode
