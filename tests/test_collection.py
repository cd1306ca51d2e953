"""Every test module collects whatever extras are missing: a module whose stage or library is not
installed is skipped with a reason naming what to install, never a collection error.

``pytest --collect-only`` runs in processes that see the optional libraries as not installed
(hidden_packages.py), for three sets: all of them (the bare install), the GPU machine's
(``bench.device.ABSENT``), and the libraries no stage's import checks (the stages import). The
three run at once, collection only.
"""

import subprocess
import sys
from pathlib import Path

import pytest
from hidden_packages import hiding_env

from stablerep_fast._deps import STAGE_MODULES, TEXT_TOWER_MODULES
from stablerep_fast.bench.device import ABSENT

ROOT = Path(__file__).resolve().parents[1]
# Optional libraries that no stage checks when it is imported (modules or tests import them).
UNCHECKED = ("kornia", "sklearn", "pyarrow", "accelerate", "fsspec", "matplotlib", "nvidia.dali", "tensorrt", "onnx",
             "onnxscript", "onnxruntime", "webdataset", "tensorboard")  # fmt: skip
STAGE_LIBRARIES = tuple(dict.fromkeys(m for modules in STAGE_MODULES.values() for m in modules)) + tuple(TEXT_TOWER_MODULES)
STAGE_SKIP = "stablerep_fast.{} needs the '{}' extra"
CASES = {
    # hidden modules, and skip reasons the collection must give for them
    "bare": (STAGE_LIBRARIES + UNCHECKED, [STAGE_SKIP.format(stage, extra) for stage, extra in
                                           (("generate", "generate"), ("data", "data"), ("train", "train"),
                                            ("eval", "train"))]),  # fmt: skip
    "gpu machine": (ABSENT, [STAGE_SKIP.format("generate", "generate") + " (diffusers not installed)",
                             "the demo trains on the memory loader (kornia)"]),  # fmt: skip
    "unchecked libraries": (UNCHECKED, ["the memory loader augments with kornia", "the demo trains on the memory loader",
                                        "parquet caption files need pyarrow"]),  # fmt: skip
}


@pytest.fixture(scope="module")
def collections(tmp_path_factory):
    """Per case, the running ``pytest --collect-only`` (output to a file: the pipes of three
    processes read one after another could fill)."""
    started = {}
    for name, (hidden, _) in CASES.items():
        folder = tmp_path_factory.mktemp("hide")
        log = (folder / "collect.log").open("w")
        command = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-rs", "-p", "no:cacheprovider", "tests"]
        proc = subprocess.Popen(command, cwd=ROOT, env=hiding_env(folder, hidden), stdout=log, stderr=subprocess.STDOUT)
        started[name] = (proc, folder / "collect.log")
    yield started
    for proc, _ in started.values():
        proc.kill()
        proc.wait()


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_every_module_collects_or_skips_naming_what_is_missing(collections, case):
    proc, log = collections[case]
    code = proc.wait(timeout=600)
    output = log.read_text()
    summary = output.strip().splitlines()[-1]
    assert code == 0 and " error" not in summary, f"collection with {CASES[case][0]} hidden: {summary}\n{output[-6000:]}"
    skips = [line for line in output.splitlines() if line.startswith("SKIPPED")]
    for reason in CASES[case][1]:  # the packages were hidden, and the guards said so
        assert any(reason in line for line in skips), f"no skip says {reason!r}; skips:\n" + "\n".join(skips)
    assert "tests collected" in summary and int(summary.split()[0]) > 0
