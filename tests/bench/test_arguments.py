"""Bench flags no suite can run with: one line naming the flag, exit code 2, before any suite runs."""

import pytest

from stablerep_fast import bench
from stablerep_fast.bench.__main__ import main as bench_main
from stablerep_fast.bench.run import BenchError
from stablerep_fast.cli import main


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--suite", "data", "--workers", "2,-3"], "--workers must be >= 0, got 2,-3"),
        (["--suite", "loss", "--dtypes", "float32,float7"], "unknown loss dtype(s) ['float7'] in --dtypes"),
        (["--suite", "loss", "--repeats", "-1"], "--repeats must be >= 1, got -1"),
        (["--suite", "loss", "--repeats", "0"], "--repeats must be >= 1, got 0"),
        (["--suite", "loss", "--sizes", "0"], "--sizes must be >= 1, got 0"),
        (["--suite", "loss", "--dims", "-4"], "--dims must be >= 1, got -4"),
        (["--suite", "generate", "--generate-families", "sd-turbo:0"], "--generate-families steps must be >= 1, got 0"),
    ],
)
@pytest.mark.parametrize("entry", ["stablerep-fast bench", "python -m stablerep_fast.bench"])
def test_a_flag_no_suite_can_run_with_is_one_line(capsys, monkeypatch, entry, flags, message):
    ran = []
    monkeypatch.setattr(bench.run, "run_suite", lambda *args, **kwargs: ran.append(args) or [])
    argv = [*flags, "--device", "cpu"]
    code = main(["bench", *argv]) if entry == "stablerep-fast bench" else bench_main(argv)
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], captured
    assert ran == [] and captured.out == ""  # refused before the environment line and any suite


def test_run_bench_checks_the_same_settings_from_python(monkeypatch):
    monkeypatch.setattr(bench.run, "run_suite", lambda *args, **kwargs: pytest.fail("a suite ran"))
    with pytest.raises(BenchError, match="--workers must be >= 0, got -1"):
        bench.run_bench(["data"], "cpu", overrides={"data": {"workers": [-1]}})
    with pytest.raises(BenchError, match="--repeats must be >= 1"):
        bench.run_bench(["loss"], "cpu", repeats=0)


def test_settings_every_suite_takes_are_accepted(monkeypatch):
    """The boundary values themselves (0 data workers, 1 repetition, every loss dtype) pass the check."""
    ran = []
    monkeypatch.setattr(bench.run, "run_suite", lambda name, *args, **kwargs: ran.append((name, kwargs)) or [])
    overrides = {"loss": {"sizes": [1], "dims": [1], "dtypes": ["float32", "bfloat16", "float16", "float64"]},
                 "data": {"workers": [0]}, "generate": {"few_step": [("sd-turbo", 1)]}}  # fmt: skip
    bench.run_bench(["loss", "data"], "cpu", repeats=1, overrides=overrides, echo=lambda text: None)
    assert [name for name, _ in ran] == ["loss", "data"]
    assert ran[0][1]["dtypes"] == overrides["loss"]["dtypes"] and ran[1][1]["workers"] == [0]
