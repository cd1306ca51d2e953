"""``validate``: one command checks a machine end to end (``python -m stablerep_fast.bench --validate``).

Stages, in order, each in a fresh process with a wall-clock budget (a stage that runs over is
stopped and recorded as such; the next one still runs):

  build     the compiled extension: built in place from the source tree when it is missing,
            or lacks CUDA kernels on a GPU machine whose nvcc is found
  tests     the tests marked ``gpu`` (pytest), from the source tree's tests/
  loss      fused loss forward + backward: bf16 and fp32, N 8192 and 65536, D 256 (GPU)
  generate  SD 1.5 layout with random weights, eager vs torch.compile, 8 images per call, 512 px, 50 steps
  data      build_loader images/s, DALI ("mixed" nvJPEG) vs torch
  train     a training step of ViT-B/16 at 224 px, end to end vs the model alone

On a GPU the sizes above run in under 8 minutes on an H100/H200 (``BUDGETS_S`` adds up to
``TOTAL_BUDGET_S``); ``device="cpu"`` runs the same flow with small sizes as a smoke test. What
cannot run here (a missing extra such as diffusers, no DALI, no nvcc, no source tree) is a
record with ``skipped`` set to the reason, never a crash. The result is one JSON file (every
record plus one ``validate`` record per stage) and a markdown table.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Callable

import stablerep_fast
from stablerep_fast._deps import STAGE_EXTRA
from stablerep_fast.atomic import atomic_write

STAGES = ("build", "tests", "loss", "generate", "data", "train")
# Seconds per stage (a ceiling, not an estimate). GPU: about 8 minutes at most in all on an
# H100/H200, the extension build included; CPU: a smoke test on a shared 2-core machine.
BUDGETS_S = {
    "cuda": {"build": 120, "tests": 60, "loss": 45, "generate": 150, "data": 30, "train": 45},
    "cpu": {"build": 300, "tests": 300, "loss": 300, "generate": 300, "data": 300, "train": 300},
}
TOTAL_BUDGET_S = {device: sum(b.values()) for device, b in BUDGETS_S.items()}
# What each suite measures (the settings of bench.run_suite).
SUITE_SETTINGS = {
    "cuda": {
        # The fused backends and the dense reference (the compiled reference is left out: a compile
        # per shape would take most of the budget).
        "loss": dict(sizes=[8192, 65536], dims=[256], dtypes=["bfloat16", "float32"],
                     backends=["reference", "chunked", "triton", "cuda"], repeats=5),  # fmt: skip
        # Without the few-step families: their compile warm-ups would not fit the stage's budget.
        "generate": dict(captions=2, images_per_caption=4, steps=50, resolution=512, output_size=256, dtype="float16",
                         backends=["eager", "compile"], repeats=2, few_step=[]),  # fmt: skip
        "data": dict(backends=None, workers=[8], captions=128, captions_per_batch=32, repeats=2),
        "train": dict(preset="vit_b16", captions_per_batch=32, repeats=5),
    },
    "cpu": {
        "loss": dict(sizes=[512], dims=[32], dtypes=["float32"], backends=["reference", "chunked", "cpp"], repeats=2),
        "generate": dict(captions=1, images_per_caption=2, steps=2, resolution=32, shapes_resolution=32,
                         backends=["eager", "shapes"], repeats=1),  # fmt: skip
        "data": dict(backends=None, workers=[0], captions=8, captions_per_batch=4, images_per_caption=2, resolution=64,
                     image_size=32, repeats=1),  # fmt: skip
        "train": dict(preset="tiny", captions_per_batch=2, num_workers=0, repeats=1),
    },
}
TABLE_COLUMNS = ["stage", "status", "seconds", "budget_s", "detail"]
SOURCE_ROOT = Path(stablerep_fast.__file__).resolve().parents[1]  # a checkout: setup.py, csrc/, tests/


def validate(
    device: str,
    json_path: str | Path,
    *,
    stages: list[str] | None = None,
    budgets: dict[str, float] | None = None,
    echo: Callable[[str], None] | None = None,
) -> list[dict]:
    """Run the validation ``stages`` (default: all) on ``device``; write the JSON to ``json_path``
    and the markdown table beside it (same name, ``.md``); return every record (the suites'
    records, then one per stage)."""
    echo = echo or _say
    json_path = Path(json_path)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    md_path = json_path.with_suffix(".md")
    budgets = {**BUDGETS_S[device], **(budgets or {})}
    summary, records = [], []
    started = time.perf_counter()
    for stage in stages or STAGES:
        echo(f"validate: {stage} (budget {budgets[stage]:.0f} s) ...")
        t0 = time.perf_counter()
        result = _run_in_child(stage, device, budgets[stage])
        seconds = time.perf_counter() - t0
        records += result.get("records", [])
        row = {"suite": "validate", "stage": stage, "device": device, "status": result["status"],
               "seconds": round(seconds, 1), "budget_s": budgets[stage], "detail": result.get("detail", "")}  # fmt: skip
        summary.append(row)
        echo(f"validate: {stage}: {row['status']} in {seconds:.0f} s; {row['detail']}")
    total = time.perf_counter() - started
    versions = next((r["versions"] for r in records if r.get("versions")), {})
    document = {"device": device, "seconds": round(total, 1), "budget_s": sum(budgets[s] for s in stages or STAGES),
                "stages": summary, "records": records, "versions": versions}  # fmt: skip
    json_path.write_text(json.dumps(document, indent=1, default=str))
    md_path.write_text(markdown(document))
    echo(f"validate: {total:.0f} s in all; wrote {json_path} and {md_path}")
    return records + summary


def markdown(document: dict) -> str:
    """The validation as markdown: the stages, then each suite's measured and skipped records."""
    from stablerep_fast.bench.report import format_table
    from stablerep_fast.bench.suites import SUITE_TABLE

    lines = [f"# Validation on {document['device']}: {document['seconds']} s (budget {document['budget_s']} s)", ""]
    env = document.get("versions") or {}
    if env:
        lines += [f"GPU {env.get('gpu') or 'none'}; torch {env.get('torch')}, triton {env.get('triton')}, "
                  f"Python {env.get('python')}; extension {json.dumps(env.get('extension'))}", ""]  # fmt: skip
    lines.append(format_table(document["stages"], TABLE_COLUMNS, markdown=True))
    for name, suite in SUITE_TABLE.items():
        rows = [r for r in document["records"] if r.get("suite") == name]
        if not rows:
            continue
        lines += ["", f"## {suite.title}", ""]
        measured = [r for r in rows if not r.get("skipped")]
        if measured:
            lines.append(format_table(measured, suite.columns, markdown=True))
        lines += [f"- skipped {r['backend']}: {r['skipped']}" for r in rows if r.get("skipped")]
    return "\n".join(lines) + "\n"


def _say(text: str) -> None:
    print(text, flush=True)


# ---- one stage in a child process ------------------------------------------------------------


def _run_in_child(stage: str, device: str, budget: float) -> dict:
    """``_stage(stage, device)`` in a fresh process, stopped after ``budget`` seconds; its result
    dict (status, detail, records) comes back through a file."""
    ctx = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        result_path = Path(tmp) / "result.json"
        proc = ctx.Process(target=_child, args=(stage, device, budget, str(result_path)))
        proc.start()
        proc.join(budget)
        if proc.is_alive():
            proc.terminate()
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join()
            partial = json.loads(result_path.read_text()) if result_path.is_file() else {}
            return {"status": "timeout", "detail": f"stopped after its budget of {budget:.0f} s",
                    "records": partial.get("records", [])}  # fmt: skip
        if not result_path.is_file():
            return {"status": "failed", "detail": f"the stage's process ended with exit code {proc.exitcode}"}
        return json.loads(result_path.read_text())


def _child(stage: str, device: str, budget: float, result_path: str) -> None:
    def save(result: dict) -> None:  # also partial results, kept if the stage runs over its budget
        atomic_write(result_path, json.dumps(result, default=str).encode())

    try:
        result = STAGE_FUNCTIONS[stage](device, budget, save)
    except Exception as exc:  # noqa: BLE001 - a stage's failure is its record, the next stage still runs
        from stablerep_fast.errors import first_line

        result = {"status": "failed", "detail": first_line(exc)}
    save(result)


def _suite_stage(name: str) -> Callable[[str, float, Callable[[dict], None]], dict]:
    def run(device: str, budget: float, save: Callable[[dict], None]) -> dict:
        """The suite backend by backend where it has a list of them, saving records as they come."""
        from stablerep_fast.bench.report import set_speedup
        from stablerep_fast.bench.suites import run_suite

        settings = dict(SUITE_SETTINGS[device][name])
        records: list[dict] = []
        if name == "generate" and settings.get("backends"):
            for backend in settings.pop("backends"):
                records += run_suite(name, device, backends=[backend], **settings)
                save({"records": records})
            set_speedup(records, "eager", same=("model",))
        else:
            records = run_suite(name, device, **settings)
        measured = [r for r in records if not r.get("skipped") and r.get("ms") is not None]
        errors = [r for r in records if r.get("error")]
        skips = [r for r in records if r.get("skipped")]
        parts = [f"{len(measured)} measured"]
        if errors:
            parts.append(f"{len(errors)} failed ({'; '.join(sorted({r['error'] for r in errors}))[:300]})")
        if skips:
            parts.append(f"{len(skips)} skipped ({'; '.join(sorted({str(r['skipped']) for r in skips}))[:300]})")
        status = "failed" if errors and not measured else "ok" if measured else "skipped"
        return {"status": status, "detail": ", ".join(parts), "records": records}

    return run


def _nvcc() -> str | None:
    candidates = [os.environ.get("CUDACXX"), shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"]
    return next((c for c in candidates if c and Path(c).is_file()), None)


def _build_stage(device: str, budget: float, save=None) -> dict:
    """Build ``stablerep_fast._C`` in place when it is missing, or lacks CUDA on a GPU machine."""
    from stablerep_fast import _ext

    info = _ext.build_info()
    gpu = device == "cuda"
    if info["built"] and (info.get("cuda") or not gpu):
        return {"status": "skipped", "detail": f"already built (CUDA kernels: {bool(info.get('cuda'))})"}
    if not (SOURCE_ROOT / "setup.py").is_file() or not (SOURCE_ROOT / "csrc").is_dir():
        reason = "not built" if not info["built"] else "built without CUDA kernels"
        return {"status": "skipped", "detail": f"extension {reason} and no source tree beside the package to build from"}
    env = dict(os.environ)
    nvcc = _nvcc() if gpu else None
    if nvcc is None:
        env["STABLEREP_FAST_NO_CUDA"] = "1"
        if info["built"]:
            return {"status": "skipped", "detail": "built without CUDA kernels and no nvcc found: the cuda backend is skipped"}
    else:
        import torch

        major, minor = torch.cuda.get_device_capability()
        env.setdefault("STABLEREP_FAST_CUDA_ARCHS", f"{major}{minor}")  # this GPU only: a faster build
        env["CUDACXX"] = nvcc
    proc = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=SOURCE_ROOT, env=env,
                          capture_output=True, text=True, timeout=max(1.0, budget - 5))  # fmt: skip
    if proc.returncode != 0:
        return {"status": "failed", "detail": f"setup.py build_ext failed: {proc.stderr.strip()[-400:]}"}
    return {"status": "ok", "detail": f"built with {'CUDA (' + env['STABLEREP_FAST_CUDA_ARCHS'] + ')' if nvcc else 'CPU kernels only'}"}


def _tests_stage(device: str, budget: float, save=None) -> dict:
    """pytest -m gpu over the source tree's tests/ (on a CPU they are all skipped: a smoke test)."""
    import importlib.util

    tests = SOURCE_ROOT / "tests"
    if not tests.is_dir():
        return {"status": "skipped", "detail": "no tests/ beside the package (a wheel install)"}
    if importlib.util.find_spec("pytest") is None:
        return {"status": "skipped", "detail": "pytest is not installed (pip install 'stablerep_fast[dev]', or carry its wheel)"}
    ignored = _test_folders_without_their_stage(tests)
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "junit.xml"
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
                               f"--junitxml={junit}", *[f"--ignore={tests / f}" for f in ignored], str(tests)],
                              cwd=SOURCE_ROOT, capture_output=True, text=True, timeout=max(1.0, budget - 5))  # fmt: skip
        if not junit.is_file():
            return {"status": "failed", "detail": f"pytest exit {proc.returncode}: {proc.stdout.strip()[-400:]}"}
        suite = ET.parse(junit).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    detail = f"{passed} passed, {counts['failures']} failed, {counts['errors']} errors, {counts['skipped']} skipped"
    detail += "".join(f"; not collected tests/{folder}: {reason}" for folder, reason in ignored.items())
    if counts["failures"] or counts["errors"]:
        failed = [line for line in proc.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
        return {"status": "failed", "detail": detail + ": " + "; ".join(failed)[:600]}
    return {"status": "ok" if passed else "skipped", "detail": detail}


def _test_folders_without_their_stage(tests: Path) -> dict[str, str]:
    """tests/STAGE folders whose stage cannot be imported here (their modules import it), with the
    reason; the stages' tests write shapes shards, so all but ops/ also need ``generate``."""
    from stablerep_fast.bench.report import missing_stage

    ignored = {}
    for folder in sorted(p.name for p in tests.iterdir() if p.is_dir() and p.name in STAGE_EXTRA):
        reason = missing_stage(folder, "generate")
        if reason:
            ignored[folder] = reason
    return ignored


STAGE_FUNCTIONS: dict[str, Callable[..., dict]] = {
    "build": _build_stage,
    "tests": _tests_stage,
    **{name: _suite_stage(name) for name in ("loss", "generate", "data", "train")},
}
