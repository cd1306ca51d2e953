"""``python -m stablerep_fast.bench.device``: the recipe for a GPU machine without network, and
its command's plumbing run here on CPU with that machine's packages (the stage libraries it
lacks hidden, a stand-in wheel carried, tiny budgets)."""

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from hidden_packages import hiding_env

from stablerep_fast.bench import device
from stablerep_fast.bench.validate import SOURCE_ROOT, STAGES


def test_recipe_names_the_wheels_and_the_one_command(capsys):
    assert device.main(["--out", "results", "--budget", "generate=90"]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    download = next(line for line in lines if " pip download " in line)
    assert download.endswith("-d wheels diffusers==0.42.1 kornia==0.9.0 kornia_rs==0.2.0 setuptools==84.2.1")
    assert "--only-binary=:all: --python-version 3.12 --implementation cp" in download
    for name in [*device.CARRIED, *device.LEFT_OUT]:
        assert f"#   {name} " in text or f"#   left out: {name}: " in text
    command = next(line for line in lines if line.startswith("set -o pipefail"))
    assert ("python3 -m pip install -q --no-index --no-deps --no-compile --find-links wheels --target /tmp/stablerep-site "
            "diffusers==0.42.1 kornia==0.9.0 kornia_rs==0.2.0 setuptools==84.2.1 && ") in command  # fmt: skip
    assert "export PYTHONPATH=/tmp/stablerep-site${PYTHONPATH:+:$PYTHONPATH}" in command
    assert ("python3 -m stablerep_fast.bench --device cuda --validate --json results/validate-cuda.json "
            "--budget generate=90; } 2>&1 | tee results/validate-cuda.log") in command  # fmt: skip
    assert not set(device.ABSENT) & {"torch", "triton", "timm", "transformers", "torchvision", "pytest"}


def test_check_fails_in_one_line_for_a_missing_or_shadowed_package(capsys):
    assert device.main(["--check", "srf-not-installed==1.0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("error: srf-not-installed is not installed: install the carried wheels first "
                   "(python -m stablerep_fast.bench.device prints how)")  # fmt: skip
    assert device.main(["--check", "pytest==0.0.1"]) == 2
    assert "is found before the carried 0.0.1: put the carried wheels' folder first on PYTHONPATH" in capsys.readouterr().err


def _stand_in_wheel(folder: Path) -> str:
    """A one-module wheel in ``folder`` (what the recipe carries, as far as pip and the check can
    tell); its pin."""
    folder.mkdir(parents=True)
    info = "srf_stand_in-1.0.dist-info"
    files = {"srf_stand_in/__init__.py": "",
             f"{info}/METADATA": "Metadata-Version: 2.1\nName: srf-stand-in\nVersion: 1.0\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}  # fmt: skip
    with zipfile.ZipFile(folder / "srf_stand_in-1.0-py3-none-any.whl", "w") as wheel:
        for path, text in files.items():
            wheel.writestr(path, text)
        wheel.writestr(f"{info}/RECORD", "".join(f"{path},,\n" for path in [*files, f"{info}/RECORD"]))
    return "srf-stand-in"


@pytest.mark.slow
def test_device_command_runs_with_the_gpu_machines_packages(tmp_path):
    """The printed command, on CPU: installs the carried wheel into its own folder, checks it
    from there, validates with tiny budgets and leaves the JSON, JSONL, markdown and log in the
    output folder. The GPU machine's missing libraries (less those carried) are hidden from every
    process, pytest's collection inside the tests stage included."""
    name = _stand_in_wheel(tmp_path / "wheels")
    site, out = tmp_path / "site", tmp_path / "out"
    budgets = {"build": 120, "tests": 180, **{stage: 1 for stage in ("loss", "generate", "data", "train")}}
    command = device.device_command(str(tmp_path / "wheels"), str(out), str(site), device="cpu", budgets=budgets,
                                    carried={name: ("1.0", "a stand-in")}, python=sys.executable)  # fmt: skip
    hidden = [m for m in device.ABSENT if m not in ("diffusers", "kornia")]  # the carried stage libraries are there
    env = hiding_env(tmp_path / "hide", hidden)
    proc = subprocess.run(["bash", "-c", command], cwd=SOURCE_ROOT, env=env, capture_output=True, text=True, timeout=900)
    log = (out / "validate-cpu.log").read_text()
    assert proc.returncode == 1, log  # the four 1-second stages ran over: validate's exit status came through
    assert log.startswith(f"carried: {name} 1.0 from {site}\n")
    assert proc.stdout == log  # tee: the same on the terminal
    document = json.loads((out / "validate-cpu.json").read_text())
    stages = {row["stage"]: row for row in document["stages"]}
    assert list(stages) == list(STAGES) and {row["budget_s"] for row in document["stages"]} == {120, 180, 1}
    for stage in ("loss", "generate", "data", "train"):
        assert stages[stage]["status"] == "timeout" and stages[stage]["detail"].startswith("stopped after its budget of 1 s")
    tests = stages["tests"]
    assert tests["status"] == "skipped" and tests["detail"].startswith("0 passed, 0 failed, 0 errors"), tests
    assert "the demo evaluates on scikit-learn's digit scans" in tests["detail"]  # sklearn was hidden from pytest
    lines = (out / "validate-cpu.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines if '"status"' in line] == document["stages"]
    assert (out / "validate-cpu.md").read_text().startswith("# Validation on cpu")
