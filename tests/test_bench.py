"""The benchmark harness and the command line (tiny sizes; speed targets live in benchmarks/)."""

import json
import subprocess
import sys

import pytest
import torch

from stablerep_fast.bench.loss import LossCase, run_case, run_loss_suite
from stablerep_fast.bench.timing import peak_memory_mb, time_fn
from stablerep_fast.cli import main

RECORD_KEYS = {"suite", "backend", "N", "D", "dtype", "ms", "peak_mb", "speedup", "device", "gflops", "floor_frac"}


def test_loss_suite_records_every_backend_against_the_reference():
    records = run_loss_suite(sizes=[64], dims=[8], dtypes=["float32"], device="cpu", repeats=2)
    assert {r["backend"] for r in records} >= {"reference", "chunked"}
    for r in records:
        assert RECORD_KEYS <= set(r), set(r) ^ RECORD_KEYS
        assert r["ms"] > 0 and r["peak_mb"] >= 0 and r["N"] == 64 and r["D"] == 8
    ref = next(r for r in records if r["backend"] == "reference")
    assert ref["speedup"] == pytest.approx(1.0)
    for r in records:
        assert r["speedup"] == pytest.approx(ref["ms"] / r["ms"])


def test_cpu_peak_memory_sees_a_large_allocation():
    mb = peak_memory_mb(lambda: torch.ones(64 * 2**20 // 4).sum(), torch.device("cpu"))
    assert 48 <= mb <= 200  # a 64 MiB tensor (plus allocator slack) was touched


def test_time_fn_reports_ordered_quantiles():
    t = time_fn(lambda: sum(range(10_000)), torch.device("cpu"), warmup=1, repeats=7)
    assert 0 < t.p10_ms <= t.median_ms <= t.p90_ms and t.repeats == 7


def test_failed_case_is_recorded_not_raised():
    r = run_case(LossCase("cuda", 8, 4, "float32", "cpu", repeats=1))  # a GPU backend on CPU
    assert r["ms"] is None and "cuda" in r["error"]


def test_bench_command_writes_json(tmp_path, capsys):
    out = tmp_path / "loss.json"
    assert main(["bench", "--suite", "loss", "--device", "cpu", "--sizes", "32", "--dims", "4",
                 "--backends", "reference,chunked", "--repeats", "1", "--json", str(out)]) == 0
    records = json.loads(out.read_text())
    assert [r["backend"] for r in records] == ["reference", "chunked"]
    assert records[0]["env"]["torch"] == torch.__version__
    assert "forward + backward" in capsys.readouterr().out


def test_bench_rejects_unknown_suite(capsys):
    assert main(["bench", "--suite", "nope", "--device", "cpu"]) == 2
    assert "unknown suite" in capsys.readouterr().err


def test_module_entry_point_and_console_script_help():
    for cmd in ([sys.executable, "-m", "stablerep_fast.bench", "--help"], ["stablerep-fast", "--help"]):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert "bench" in proc.stdout or "--suite" in proc.stdout
