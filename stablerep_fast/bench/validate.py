"""``validate``: one command checks a machine end to end (``python -m stablerep_fast.bench --validate``).

Stages, in order, each in a fresh process with a wall-clock budget (a stage that runs over is
stopped, with everything it started, and recorded as such; the next one still runs):

  build     the compiled extension: built in place from the source tree when it is missing,
            or lacks CUDA kernels on a GPU machine whose nvcc is found (this GPU's architecture only)
  tests     the tests marked ``gpu`` (pytest), from the source tree's tests/
  loss      fused loss forward + backward: bf16 and fp32, N 8192 and 65536, D 256 (GPU)
  generate  SD 1.5 layout with random weights, eager then torch.compile, 8 images per call, 512 px, 50 steps;
            with eager, the consistency scorers (CLIP ViT-B/32, the digits truth) on 256 images
  data      build_loader images/s: torch, the memory loader and DALI ("mixed" nvJPEG), those installed
  train     a training step of ViT-B/16 at 224 px, end to end vs the model alone

Records are written as they are made, so a stage stopped at its budget keeps what it measured:
every record, and a line naming each step as it starts, goes to ``NAME.jsonl`` beside the JSON
(the tests: one record per test as it ends); a stopped stage's row says which step was running.
After each stage the JSON (every record plus one ``validate`` record per stage) and the markdown
table (``NAME.md``) are rewritten from it. On a GPU the budgets (``BUDGETS_S``, settable per
stage) add up to 9 minutes; ``device="cpu"`` runs the same flow with small sizes as a smoke
test. What cannot run here (a missing extra such as diffusers, no DALI, no nvcc, no source
tree) is a record with ``skipped`` set to the reason, never a crash.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Callable

import stablerep_fast
from stablerep_fast.atomic import atomic_write
from stablerep_fast.bench.generate import SCORERS
from stablerep_fast.errors import first_line

STAGES = ("build", "tests", "loss", "generate", "data", "train")
# Seconds per stage: ceilings, not estimates; a stage that needs less leaves the rest unused.
# GPU: 540 s in all, so that the run, the carried wheels' install (~10 s) and Python's start
# fit one 10-minute command on the machine this was sized for (one H200, 16 CPU cores; see
# bench/device.py). Each stage's process starts Python, torch and CUDA first (~10 s). Measured
# on a 2-core CPU (2026-12-04; the GPU parts are estimates until a GPU run replaces them):
#   build     60: the extension for one architecture (sm_90) took 68 s wall, 29 s of CPU, on
#             2 busy cores; its largest file compiles in ~15 s, so 16 cores need ~20-30 s.
#   tests    150: collecting the suite takes 8-12 s. The gpu tests launch 16 Triton
#             specialisations (counted under Triton's interpreter at sizes of the same class:
#             Triton compiles a kernel per variant and per size class, multiple of 16 or not);
#             a cold compile for sm_90 takes 0.9-2.5 s each (1.8 s mean over the loss stage's
#             20, Triton 3.8 on this CPU): ~30 s. torch.compile of the tiny SD pipeline took
#             ~85 s on this CPU (C++ codegen; on the GPU Triton codegen in 16 workers, assumed
#             <= 60 s). The CUDA kernels' 56 cases are prebuilt: seconds.
#   loss      90: 20 Triton specialisations cold (the first-use checks at two shapes, bf16 and
#             fp32, D = 256; the timed calls reuse them; 4 are cached already if the tests ran
#             first): ~36 s; 16 cases of 1 warm-up + 1 peak-memory run + 5 timed runs, the
#             largest 6.6 TFLOP (N = 65536): seconds each; the dense reference at N = 65536
#             runs out of memory at once (an error record).
#   generate 135: SD 1.5's 1.07 B random weights initialised on the CPU (~15 s), eager: 3
#             calls of 8 images x 50 steps (~2-3 s each at 40% of the fp16 tensor-core peak);
#             the eager records are written by ~45 s. torch.compile (CUDA graphs) of the UNet
#             and VAE decoder gets the rest and may not finish cold: then its step is named.
#             The scorers run after eager: a random ViT-B/32 built on the CPU (~3 s), 256
#             images in a call (tenths of a second).
#   data      45: shapes shards, 128 captions x 10 images at 256 px (~121 images/s per 2 cores
#             here: ~10 s), then 3 epochs per loader.
#   train     60: ViT-B/16 steps at 32 x 6 images in bf16 (~0.2 s each, 8 per variant), 64 x 8
#             shapes images for end to end; the loss at N = 192 takes the dense torch path
#             ("auto" below 2^20 logits): no Triton compile.
# CPU: a smoke test on a shared 2-core machine.
BUDGETS_S = {
    "cuda": {"build": 60, "tests": 150, "loss": 90, "generate": 135, "data": 45, "train": 60},
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
                         backends=["eager", "compile"], repeats=2, few_step=[], score_images=256),  # fmt: skip
        "data": dict(backends=None, workers=[8], captions=128, captions_per_batch=32, repeats=2),
        "train": dict(preset="vit_b16", captions_per_batch=32, repeats=5),
    },
    "cpu": {
        "loss": dict(sizes=[512], dims=[32], dtypes=["float32"], backends=["reference", "chunked", "cpp"], repeats=2),
        "generate": dict(captions=1, images_per_caption=2, steps=2, resolution=32, shapes_resolution=32,
                         backends=["eager", "shapes"], repeats=1, score_images=4),  # fmt: skip
        "data": dict(backends=None, workers=[0], captions=8, captions_per_batch=4, images_per_caption=2, resolution=64,
                     image_size=32, repeats=1),  # fmt: skip
        "train": dict(preset="tiny", captions_per_batch=2, num_workers=0, repeats=1),
    },
}
# The steps a suite runs in: overrides of its settings, one after another, each step's records
# written as it ends (one step for a suite not listed). A loss step holds its own reference.
_TRAIN_STEPS = [dict(variants=["model", "model+loss"]), dict(variants=["end-to-end"]), dict(variants=["end-to-end-online"])]
SUITE_STEPS = {
    device: {
        "loss": [dict(dtypes=[t], sizes=[n]) for t in settings["loss"]["dtypes"] for n in settings["loss"]["sizes"]],
        # The scorers once, beside eager (their overhead is against its time per image).
        "generate": [dict(backends=[b], scorers=list(SCORERS) if b == "eager" else []) for b in settings["generate"]["backends"]],
        "train": _TRAIN_STEPS,
    }
    for device, settings in SUITE_SETTINGS.items()
}
# The baselines of the suites' speed-ups, as each suite sets them, set again over every step's
# records so far: a later step's records are compared with an earlier step's baseline.
SPEEDUP_BASELINES = {"generate": ("eager", ("model", "steps")), "train": ("model", ())}
TABLE_COLUMNS = ["stage", "status", "seconds", "budget_s", "detail"]
SOURCE_ROOT = Path(stablerep_fast.__file__).resolve().parents[1]  # a checkout: setup.py, csrc/, tests/
_STOP_GRACE_S = 5  # after SIGTERM, before SIGKILL


def validate(
    device: str,
    json_path: str | Path,
    *,
    stages: list[str] | None = None,
    budgets: dict[str, float] | None = None,
    echo: Callable[[str], None] | None = None,
) -> list[dict]:
    """Run the validation ``stages`` (default: all) on ``device`` with ``budgets`` (seconds per
    stage, over ``BUDGETS_S``); write the records to ``json_path`` with ``.jsonl`` as they come,
    and after each stage the JSON there and the markdown table beside it (``.md``); return every
    record (the suites' and the tests', then one per stage). ValueError for an unknown stage or
    a budget that is not a positive number."""
    echo = echo or _say
    stages = list(stages or STAGES)
    budgets = {**BUDGETS_S[device], **check_budgets(budgets or {})}
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        raise ValueError(f"unknown validate stage(s) {unknown}; choose from {list(STAGES)}")
    json_path = Path(json_path)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    log_path = json_path.with_suffix(".jsonl")
    log_path.write_text("")
    started = time.perf_counter()
    for stage in stages:
        echo(f"validate: {stage} (budget {budgets[stage]:g} s) ...")
        row = _run_stage(stage, device, budgets[stage], log_path)
        StageLog(log_path, stage).record(row)
        echo(f"validate: {stage}: {row['status']} in {row['seconds']:.0f} s; {row['detail']}")
        document = _document(device, log_path, time.perf_counter() - started, sum(budgets[s] for s in stages))
        atomic_write(json_path, json.dumps(document, indent=1, default=str).encode())
        atomic_write(json_path.with_suffix(".md"), markdown(document).encode())
    echo(f"validate: {document['seconds']:.0f} s in all; wrote {json_path}, {json_path.with_suffix('.md')} and "
         f"{log_path}")  # fmt: skip
    return document["records"] + document["stages"]


def check_budgets(budgets: dict[str, float]) -> dict[str, float]:
    """``budgets`` as given, after checking: known stages, positive seconds (ValueError otherwise)."""
    for stage, seconds in budgets.items():
        if stage not in STAGES:
            raise ValueError(f"unknown validate stage {stage!r} in the budgets; choose from {list(STAGES)}")
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0:
            raise ValueError(f"the budget of stage {stage!r} must be a positive number of seconds, got {seconds!r}")
    return dict(budgets)


def markdown(document: dict) -> str:
    """The validation as markdown: the stages, the tests that failed or were not run and why,
    then each suite's measured and skipped records."""
    from stablerep_fast.bench.report import format_table
    from stablerep_fast.bench.suites import SUITE_TABLE

    lines = [f"# Validation on {document['device']}: {document['seconds']} s (budget {document['budget_s']} s)", ""]
    env = document.get("versions") or {}
    if env:
        lines += [f"GPU {env.get('gpu') or 'none'}; torch {env.get('torch')}, triton {env.get('triton')}, "
                  f"Python {env.get('python')}; extension {json.dumps(env.get('extension'))}", ""]  # fmt: skip
    lines.append(format_table(document["stages"], TABLE_COLUMNS, markdown=True))
    tests = [r for r in document["records"] if r.get("suite") == "tests" and r["outcome"] in ("failed", "error")]
    not_run = [r for r in document["records"] if r.get("suite") == "tests" and r.get("phase") == "collect"
               and r["outcome"] == "skipped"]  # fmt: skip
    if tests or not_run:
        lines += ["", "## tests: failed, and not run", ""]
        lines += [f"- {r['outcome']} `{r['test']}`: {r.get('detail', '')}" for r in tests]
        lines += [f"- not run `{r['test']}`: {r.get('detail', '')}" for r in not_run]
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


class StageLog:
    """The JSONL file a stage writes as it goes (its own process, or one it starts): each record
    as it is made, and a line naming each step as it starts (how a stopped stage is reported).
    One JSON object per line, appended and flushed at once."""

    def __init__(self, path: str | Path, stage: str):
        self.path, self.stage = Path(path), stage

    def record(self, record: dict) -> None:
        """Append one record."""
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, default=str) + "\n")

    def running(self, step: str) -> None:
        """Say that ``step`` starts (the last one named is where a stopped stage was)."""
        self.record({"suite": "validate", "stage": self.stage, "running": step})


def _say(text: str) -> None:
    print(text, flush=True)


def _read_log(path: Path, offset: int = 0) -> list[dict]:
    """The lines of a stage log from byte ``offset``; a line cut short by a killed writer is left out."""
    with open(path, "rb") as f:
        f.seek(offset)
        lines = f.read().decode("utf-8", errors="replace").splitlines()
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def _document(device: str, log_path: Path, seconds: float, budget: float) -> dict:
    """The JSON document from the log: the stage rows, the records (step lines left out), versions."""
    lines = _read_log(log_path)
    stages = [r for r in lines if r.get("suite") == "validate" and "status" in r]
    records = [r for r in lines if r.get("suite") != "validate"]
    versions = next((r["versions"] for r in records if r.get("versions")), {})
    return {"device": device, "seconds": round(seconds, 1), "budget_s": budget, "stages": stages, "records": records,
            "versions": versions}  # fmt: skip


# ---- one stage in a child process ------------------------------------------------------------


def _run_stage(stage: str, device: str, budget: float, log_path: Path) -> dict:
    """Run ``stage`` in a child process within ``budget`` seconds; its ``validate`` row: status
    (ok, skipped, failed, timeout), seconds, budget and a one-line detail."""
    offset = log_path.stat().st_size
    t0 = time.perf_counter()
    outcome = _run_in_child(STAGE_FUNCTIONS[stage], stage, device, budget, log_path)
    seconds = time.perf_counter() - t0
    lines = _read_log(log_path, offset)
    records = [r for r in lines if r.get("suite") != "validate"]
    status, detail = outcome.get("status"), outcome.get("detail")
    if status == "timeout":
        steps = [r["running"] for r in lines if "running" in r]
        where = f"while running {steps[-1]}" if steps else "before its first step"
        detail = f"stopped after its budget of {budget:g} s {where}; kept {_verdict(stage, records)[1]}"
    elif status is None:  # the stage's records are its verdict
        status, detail = _verdict(stage, records)
    return {"suite": "validate", "stage": stage, "device": device, "status": status, "seconds": round(seconds, 1),
            "budget_s": budget, "detail": detail}  # fmt: skip


def _verdict(stage: str, records: list[dict]) -> tuple[str, str]:
    """(status, one-line detail) of a stage from its records: tests by outcome, suites by
    measured, failed and skipped records."""
    if stage == "tests":
        counts = Counter(r["outcome"] for r in records)
        detail = ", ".join(f"{counts[outcome]} {word}" for outcome, word in
                           (("passed", "passed"), ("failed", "failed"), ("error", "errors"), ("skipped", "skipped")))  # fmt: skip
        bad = [f"{r['test']}: {r.get('detail', '')}" for r in records if r["outcome"] in ("failed", "error")]
        not_run = sorted({r["detail"] for r in records if r.get("phase") == "collect" and r["outcome"] == "skipped"})
        detail += f" ({'; '.join(bad)[:600]})" if bad else ""
        detail += f"; modules not run: {'; '.join(not_run)[:400]}" if not_run else ""
        return ("failed" if bad else "ok" if counts["passed"] else "skipped"), detail
    measured = [r for r in records if not r.get("skipped") and r.get("ms") is not None]
    errors = [r for r in records if r.get("error")]
    skips = [r for r in records if r.get("skipped")]
    parts = [f"{len(measured)} measured"]
    if errors:
        parts.append(f"{len(errors)} failed ({'; '.join(sorted({r['error'] for r in errors}))[:300]})")
    if skips:
        parts.append(f"{len(skips)} skipped ({'; '.join(sorted({str(r['skipped']) for r in skips}))[:300]})")
    return ("failed" if errors and not measured else "ok" if measured else "skipped"), ", ".join(parts)


def _run_in_child(function: Callable, stage: str, device: str, budget: float, log_path: Path) -> dict:
    """``function(device, budget, log)`` in a fresh process of its own process group, stopped
    with everything it started after ``budget`` seconds; its result dict (status and detail,
    or empty when its records are the verdict), {"status": "timeout"} when stopped."""
    ctx = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        result_path = Path(tmp) / "result.json"
        proc = ctx.Process(target=_child, args=(function, stage, device, budget, str(log_path), str(result_path)))
        proc.start()
        try:
            proc.join(budget)
            timed_out = proc.is_alive()
        finally:  # also on Ctrl-C: the child's group does not get the terminal's signals
            _stop_group(proc)
        if timed_out:
            return {"status": "timeout"}
        if not result_path.is_file():
            return {"status": "failed", "detail": f"the stage's process ended with exit code {proc.exitcode}"}
        return json.loads(result_path.read_text())


def _stop_group(proc: multiprocessing.Process) -> None:
    """End the child and every process in its group (pytest, the build, loader and compile
    workers): SIGTERM, then SIGKILL after _STOP_GRACE_S; nothing of a stage outlives it."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):  # the group is gone, or the child had not made it yet
            if proc.is_alive() and sig == signal.SIGTERM:
                proc.terminate()
            elif proc.is_alive():
                proc.kill()
        proc.join(_STOP_GRACE_S if sig == signal.SIGTERM else None)


def _child(function: Callable, stage: str, device: str, budget: float, log_path: str, result_path: str) -> None:
    os.setpgrp()  # a group of its own: the parent stops the stage with everything it started
    try:
        result = function(device, budget, StageLog(log_path, stage)) or {}
    except Exception as exc:  # noqa: BLE001 - a stage's failure is its record, the next stage still runs
        result = {"status": "failed", "detail": first_line(exc)}
    atomic_write(result_path, json.dumps(result, default=str).encode())


def _suite_stage(name: str, device: str, budget: float, log: StageLog) -> None:
    """Suite ``name`` in its steps (SUITE_STEPS), each step's records logged as it ends."""
    from stablerep_fast.bench.report import environment, set_speedup
    from stablerep_fast.bench.suites import run_suite

    settings = SUITE_SETTINGS[device][name]
    versions = environment(device)
    records: list[dict] = []
    for step in SUITE_STEPS[device].get(name, [{}]):
        log.running(f"{name}: " + (", ".join(f"{k} {','.join(map(str, v))}" for k, v in step.items()) or "every case"))
        new = run_suite(name, device, versions=versions, **{**settings, **step})
        records += new
        if name in SPEEDUP_BASELINES:
            set_speedup(records, *SPEEDUP_BASELINES[name])
        if name == "train":  # train.py's overhead: the share of the step that is not the model
            for r in records:
                r["overhead_frac"] = None if r.get("speedup") is None else 1 - r["speedup"]
        for r in new:
            log.record(r)


def _nvcc() -> str | None:
    candidates = [os.environ.get("CUDACXX"), shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"]
    return next((c for c in candidates if c and Path(c).is_file()), None)


def setuptools_problem() -> str | None:
    """Why this Python's setuptools cannot build the extension from the checkout (too old for
    its pyproject.toml: the minimum its build-system requirements name), or None (also without
    a checkout: nothing to build)."""
    import importlib.metadata

    pyproject = SOURCE_ROOT / "pyproject.toml"
    if not pyproject.is_file():
        return None
    wanted = re.search(r'"setuptools\s*>=\s*(\d+)', pyproject.read_text())
    try:
        version = importlib.metadata.version("setuptools")
    except importlib.metadata.PackageNotFoundError:
        return "setuptools is not installed"
    if wanted and int(version.split(".")[0]) < int(wanted.group(1)):
        return (f"setuptools {version} is older than the {wanted.group(1)} this checkout's pyproject.toml needs "
                f"(its license field)")  # fmt: skip
    return None


def _build_stage(device: str, budget: float, log: StageLog) -> dict:
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
    problem = setuptools_problem()
    if problem:
        return {"status": "failed", "detail": f"cannot build the extension: {problem}; install a newer one (pip install "
                "'setuptools>=77'; without network: python -m stablerep_fast.bench.device); the cpp and cuda "
                "backends' tests skip"}  # fmt: skip
    kind = f"CUDA (sm_{env['STABLEREP_FAST_CUDA_ARCHS']})" if nvcc else "CPU kernels only"
    log.running(f"setup.py build_ext --inplace, {kind}")
    proc = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=SOURCE_ROOT, env=env,
                          capture_output=True, text=True)  # fmt: skip
    if proc.returncode != 0:
        return {"status": "failed", "detail": f"setup.py build_ext failed: {proc.stderr.strip()[-400:]}"}
    return {"status": "ok", "detail": f"built with {kind}"}


def _tests_stage(device: str, budget: float, log: StageLog) -> dict | None:
    """pytest -m gpu over the source tree's tests/, one record per test as it ends (on a CPU the
    gpu tests are all skipped: a smoke test)."""
    import importlib.util

    tests = SOURCE_ROOT / "tests"
    if not tests.is_dir():
        return {"status": "skipped", "detail": "no tests/ beside the package (a wheel install)"}
    if importlib.util.find_spec("pytest") is None:
        return {"status": "skipped", "detail": "pytest is not installed (pip install 'stablerep_fast[dev]', or carry its wheel)"}
    log.running("pytest -m gpu: collecting")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
                           "-p", "stablerep_fast.bench.pytest_records", f"--records={log.path}", str(tests)],
                          cwd=SOURCE_ROOT, capture_output=True, text=True)  # fmt: skip
    if proc.returncode not in (0, 1, 5) and not any(r.get("suite") == "tests" for r in _read_log(log.path)):
        output = (proc.stdout + proc.stderr).strip()
        return {"status": "failed", "detail": f"pytest exit {proc.returncode}: {output[-400:]}"}
    return None  # 0: passed, 1: some failed, 5: none selected; or collection errors, which are records


STAGE_FUNCTIONS: dict[str, Callable[..., dict | None]] = {
    "build": _build_stage,
    "tests": _tests_stage,
    **{name: partial(_suite_stage, name) for name in ("loss", "generate", "data", "train")},
}
