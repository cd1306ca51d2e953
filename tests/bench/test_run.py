"""``run_bench`` through its command lines: ``stablerep-fast bench``, ``python -m
stablerep_fast.bench`` and the benchmark scripts (tiny sizes; speed targets live in benchmarks/)."""

import contextlib
import dataclasses
import io
import json
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from stablerep_fast import bench
from stablerep_fast.bench.__main__ import main as bench_main
from stablerep_fast.bench.plot import plot_records
from stablerep_fast.cli import main

SCRIPTS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, tiny):
    """``stablerep-fast bench`` over every suite once, with tiny defaults, --json and --plot."""
    tmp = tmp_path_factory.mktemp("bench")
    out, plots = tmp / "records.json", tmp / "plots"
    with pytest.MonkeyPatch.context() as mp:
        for name, settings in tiny.items():
            small = dataclasses.replace(bench.SUITE_TABLE[name], defaults=lambda device, quick, s=settings: dict(s))
            mp.setitem(bench.SUITE_TABLE, name, small)
        stdout = io.StringIO()
        with contextlib.redirect_stdout(stdout):
            code = main(["bench", "--device", "cpu", "--quick", "--json", str(out), "--plot", str(plots)])
    return dict(code=code, stdout=stdout.getvalue(), records=json.loads(out.read_text()), plots=plots)


def test_bench_command_runs_every_suite(cli_run, check_record):
    assert cli_run["code"] == 0
    suites = {r["suite"] for r in cli_run["records"]}
    assert suites == set(bench.SUITES)
    for r in cli_run["records"]:
        if not r.get("skipped"):
            check_record(r)
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
    assert bench_main(["--suite", "nope", "--device", "cpu"]) == 2
    assert capsys.readouterr().err.startswith("error: unknown suite(s) ['nope']")


def test_a_benchmark_script_calls_run_bench_with_its_suite_and_the_bench_flags(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(bench, "run_bench", lambda *args, **kwargs: calls.append((args, kwargs)))
    argv = ["--device", "cpu", "--sizes", "32,64", "--workers", "2", "--repeats", "1", "--json", str(tmp_path / "x.json")]
    monkeypatch.setattr(sys, "argv", ["bench_multipos.py", *argv])
    runpy.run_path(str(SCRIPTS / "bench_multipos.py"), run_name="__main__")
    (args, kwargs), = calls
    assert args == (["loss"],) and (kwargs["device"], kwargs["repeats"], kwargs["json_path"]) == ("cpu", 1, tmp_path / "x.json")
    assert kwargs["overrides"]["loss"]["sizes"] == [32, 64] and kwargs["overrides"]["data"]["workers"] == [2]
    monkeypatch.setattr(sys, "argv", ["bench_multipos.py", "--suite", "data"])  # the script's suite is fixed
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(SCRIPTS / "bench_multipos.py"), run_name="__main__")
    assert exit_info.value.code == 2 and "unrecognized arguments: --suite" in capsys.readouterr().err


def test_module_entry_point_and_console_script_help(monkeypatch, capsys):
    # python -m stablerep_fast.bench runs bench/__main__.py as __main__: here in this process.
    monkeypatch.setattr(sys, "argv", ["python -m stablerep_fast.bench", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(Path(bench.__file__).with_name("__main__.py")), run_name="__main__")
    assert exit_info.value.code == 0 and "--suite" in capsys.readouterr().out
    proc = subprocess.run(["stablerep-fast", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "bench" in proc.stdout, proc.stderr
