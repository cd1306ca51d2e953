"""``validate``: every stage in a fresh process within its budget, JSON and a markdown table."""

import json

from stablerep_fast import bench
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
    measured = {(r["suite"], r["backend"]) for r in document["records"] if not r.get("skipped") and r.get("ms")}
    assert {("loss", "reference"), ("loss", "chunked"), ("loss", "cpp"), ("generate", "eager"), ("generate", "shapes"),
            ("data", "torch"), ("train", "model"), ("train", "model+loss"), ("train", "end-to-end"),
            ("train", "end-to-end-online")} <= measured  # fmt: skip
    for r in document["records"]:
        if not r.get("skipped") and r["suite"] in bench.SUITES:
            check_record(r)
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
