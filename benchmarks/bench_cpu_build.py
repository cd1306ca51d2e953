"""The portable CPU build against a native one: ``cpp`` backend, float32 forward + backward at
N = 8192, D = 256.

Builds a wheel of this checkout with STABLEREP_FAST_NATIVE=1 (-march=native, CPU only) into a
temporary folder and alternates the loss suite of the bench harness between that build and
the one this interpreter imports (the portable build picks its variant at run time), each
run in a fresh process. Alternating keeps drifts in a shared machine's load out of the
comparison; the medians over all rounds are printed last.

    python benchmarks/bench_cpu_build.py
"""

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import stablerep_fast

ROUNDS = 4
ROOT = Path(__file__).resolve().parents[1]
CASE = ["--suite", "loss", "--device", "cpu", "--backends", "cpp", "--sizes", "8192", "--dims", "256",
        "--dtypes", "float32", "--repeats", "3"]


def build_native(tmp: Path) -> Path:
    """A copy of the installed package whose extension was built with -march=native."""
    env = {**os.environ, "STABLEREP_FAST_NATIVE": "1", "STABLEREP_FAST_NO_CUDA": "1"}
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-w", str(tmp / "wheel")],
                   env=env, check=True)
    package = tmp / "native" / "stablerep_fast"
    shutil.copytree(Path(stablerep_fast.__file__).parent, package, ignore=shutil.ignore_patterns("_C*", "__pycache__"))
    with zipfile.ZipFile(next((tmp / "wheel").glob("stablerep_fast-*.whl"))) as wheel:
        (so,) = [n for n in wheel.namelist() if n.startswith("stablerep_fast/_C")]
        (package / Path(so).name).write_bytes(wheel.read(so))
    return package.parent


def run_case(pythonpath: str | None, out: Path) -> dict:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    # cwd: not this checkout, whose package `python -m` would import first.
    subprocess.run([sys.executable, "-m", "stablerep_fast.bench", *CASE, "--json", str(out)], env=env, check=True,
                   cwd=out.parent)
    (record,) = json.loads(out.read_text())
    return record


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-cpu-build-") as tmp:
        tmp = Path(tmp)
        builds = {"portable": os.environ.get("PYTHONPATH"), "native": str(build_native(tmp))}
        ms = {name: [] for name in builds}
        variant = {}
        for r in range(ROUNDS):
            for name, path in builds.items():
                record = run_case(path, tmp / f"{name}-{r}.json")
                ms[name].append(record["ms"])
                variant[name] = record["versions"]["extension"]["cpu_variant"]
                assert (variant[name] == "native") == (name == "native"), f"{name} build runs {variant[name]}"
                print(f"round {r}: {name} ({variant[name]}) {record['ms']:.0f} ms", flush=True)
    median = {name: statistics.median(v) for name, v in ms.items()}
    print("\nbuild     variant   median_ms  runs (each the median of 3 after a warm-up)")
    for name in builds:
        runs = ", ".join(f"{m:.0f}" for m in ms[name])
        print(f"{name:<9} {variant[name]:<9} {median[name]:>9.0f}  {runs}")
    print(f"portable / native: {median['portable'] / median['native']:.3f}")


if __name__ == "__main__":
    main()
