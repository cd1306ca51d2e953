"""``validate``: every stage in a fresh process within its budget, records written as they come
(a stopped stage keeps them and says where it stopped), JSON and a markdown table."""

import importlib.metadata
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from stablerep_fast import bench
from stablerep_fast.bench import validate as validate_module
from stablerep_fast.bench.__main__ import main as bench_main
from stablerep_fast.bench.__main__ import stage_budgets
from stablerep_fast.bench.validate import BUDGETS_S, STAGES, StageLog, validate
from stablerep_fast.cli import main


def test_validate_on_cpu_runs_every_stage_and_writes_json_and_markdown(tmp_path, capsys, check_record):
    """The one-command check, end to end on CPU (small sizes): the smoke test of the GPU flow."""
    out = tmp_path / "validate.json"
    assert main(["bench", "--device", "cpu", "--validate", "--json", str(out)]) == 0, capsys.readouterr().out
    document = json.loads(out.read_text())
    stages = {s["stage"]: s for s in document["stages"]}
    assert list(stages) == ["build", "tests", "loss", "generate", "data", "train"]
    assert all(s["status"] in ("ok", "skipped") for s in stages.values()), stages
    assert stages["build"]["status"] == "skipped" and "already built" in stages["build"]["detail"]
    assert stages["tests"]["detail"].startswith("0 passed, 0 failed, 0 errors")  # every gpu test skipped on a CPU
    gpu_tests = [r for r in document["records"] if r["suite"] == "tests"]
    assert gpu_tests and all(r["outcome"] == "skipped" and r["detail"] == "needs a CUDA GPU" for r in gpu_tests)
    measured = {(r["suite"], r["backend"]) for r in document["records"] if not r.get("skipped") and r.get("ms")}
    assert {("loss", "reference"), ("loss", "chunked"), ("loss", "cpp"), ("generate", "eager"), ("generate", "shapes"),
            ("data", "torch"), ("train", "model"), ("train", "model+loss"), ("train", "end-to-end"),
            ("train", "end-to-end-online"), ("generate", "score:digits"), ("generate", "score:clip")} <= measured  # fmt: skip
    scorers = [r["backend"] for r in document["records"] if r["suite"] == "generate" and r["backend"].startswith("score:")]
    assert sorted(scorers) == ["score:clip", "score:digits"]  # once, beside eager, not in every generate step
    for r in document["records"]:
        if not r.get("skipped") and r["suite"] in bench.SUITES:
            check_record(r)
    train = {r["backend"]: r for r in document["records"] if r["suite"] == "train"}
    for r in train.values():  # measured in steps, compared with the first step's model
        assert r["speedup"] == pytest.approx(train["model"]["ms"] / r["ms"]) and r["overhead_frac"] == 1 - r["speedup"]
    text = out.with_suffix(".md").read_text()
    assert text.startswith("# Validation on cpu") and "| stage | status | seconds | budget_s | detail |" in text
    assert all(f"| {name} | {stages[name]['status']} |" in text for name in stages)
    assert "## loss: forward + backward" in text and "| reference |" in text
    # The log holds the same records and rows, in the order they came, and a line per step.
    lines = [json.loads(line) for line in out.with_suffix(".jsonl").read_text().splitlines()]
    assert [r for r in lines if r["suite"] != "validate"] == document["records"]
    assert [r for r in lines if "status" in r] == document["stages"]
    assert "loss: dtypes float32, sizes 512" in [r.get("running") for r in lines]


def test_validate_stops_a_stage_at_its_budget_and_goes_on(tmp_path):
    records = validate("cpu", tmp_path / "v.json", stages=["loss", "build"], budgets={"loss": 0.5}, echo=lambda _: None)
    summary = {r["stage"]: r for r in records if r["suite"] == "validate"}
    assert summary["loss"]["status"] == "timeout" and summary["loss"]["seconds"] < 30
    assert summary["loss"]["detail"].startswith("stopped after its budget of 0.5 s")
    assert summary["build"]["status"] == "skipped"  # the next stage still ran


def _two_records_then_hang(device: str, budget: float, log: StageLog) -> None:
    """A stage (run in validate's child process) that measures twice, then starts a step, and a
    process of its own, that never end."""
    for n in (64, 128):
        log.running(f"loss N = {n}")
        log.record({"suite": "loss", "backend": "chunked", "device": device, "N": n, "ms": 1.0 * n})
    log.running("loss N = 256")
    sleeper = subprocess.Popen(["sleep", "600"])
    with open(os.environ["STAND_IN_PID"], "w") as f:
        f.write(str(sleeper.pid))
    time.sleep(600)


def test_a_stopped_stage_keeps_its_records_says_where_and_leaves_nothing_running(tmp_path, monkeypatch):
    monkeypatch.setitem(validate_module.STAGE_FUNCTIONS, "loss", _two_records_then_hang)
    monkeypatch.setenv("STAND_IN_PID", str(tmp_path / "pid"))
    out = tmp_path / "v.json"
    records = validate("cpu", out, stages=["loss"], budgets={"loss": 30}, echo=lambda _: None)
    row = records[-1]
    assert row["status"] == "timeout"
    assert row["detail"] == "stopped after its budget of 30 s while running loss N = 256; kept 2 measured"
    kept = json.loads(out.read_text())["records"]
    assert [(r["N"], r["ms"]) for r in kept] == [(64, 64.0), (128, 128.0)] and records[:-1] == kept
    assert not _running(int((tmp_path / "pid").read_text()))  # the stage's own process was stopped with it


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists and has not ended (an ended one not yet reaped is a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_budget_flag_reaches_validate(tmp_path, monkeypatch, capsys):
    seen = {}

    def fake_validate(device, json_path, *, budgets=None, **_):
        seen.update(device=device, json_path=json_path, budgets=budgets)
        return [{"suite": "validate", "stage": "loss", "status": "ok"}]

    monkeypatch.setattr(validate_module, "validate", fake_validate)
    out = tmp_path / "v.json"
    assert bench_main(["--device", "cpu", "--validate", "--budget", "loss=120,tests=150.5", "--json", str(out)]) == 0
    assert seen == {"device": "cpu", "json_path": out, "budgets": {"loss": 120.0, "tests": 150.5}}
    assert stage_budgets("build=1") == {"build": 1.0}
    for bad, message in (("lss=3", "unknown validate stage 'lss'"), ("loss", "expected STAGE=SECONDS"),
                         ("loss=0", "must be a positive number"), ("loss=soon", "expected STAGE=SECONDS")):  # fmt: skip
        with pytest.raises(SystemExit) as exit_:
            bench_main(["--validate", "--budget", bad])
        assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_gpu_budgets_cover_every_stage_within_nine_minutes():
    assert set(BUDGETS_S["cuda"]) == set(STAGES) and sum(BUDGETS_S["cuda"].values()) <= 9 * 60


def test_build_says_when_setuptools_is_too_old_instead_of_failing_in_setup_py(monkeypatch, tmp_path):
    from stablerep_fast import _ext

    real_version = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "70.3.0" if name == "setuptools" else real_version(name))
    monkeypatch.setattr(_ext, "build_info", lambda: {"built": False, "error": "ImportError: no _C"})
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("setup.py must not run"))
    result = validate_module._build_stage("cpu", 60, StageLog(tmp_path / "log.jsonl", "build"))
    assert result["status"] == "failed"
    assert result["detail"].startswith("cannot build the extension: setuptools 70.3.0 is older than the 77 this "
                                       "checkout's pyproject.toml needs")  # fmt: skip
    assert "python -m stablerep_fast.bench.device" in result["detail"]
