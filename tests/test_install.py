"""The light install: the loss needs only torch, numpy and triton; each stage names its extra.

The bare install is simulated in a subprocess whose import system refuses the stage libraries
(no second torch download): the loss and the drop-in modules must import and run forward and
backward, and each stage must fail to import with one line naming the extra to install.
"""

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import assert_close

import reference
import stablerep_fast
from stablerep_fast._deps import STAGE_EXTRA, STAGE_MODULES, TEXT_TOWER_MODULES

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(stablerep_fast.__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text()) if (ROOT / "pyproject.toml").is_file() else None
# What a stage may import and the bare install must not: the stages' heavy libraries, as
# import names (the hook below refuses them and everything under them).
BLOCKED = ["diffusers", "transformers", "timm", "open_clip", "torchvision", "nvidia.dali", "webdataset"]
F64 = dict(rtol=1e-4, atol=1e-5)  # float32 loss against the float64 reference


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _extra(name: str, seen=()) -> set[str]:
    """The distributions an extra installs, self-references ("stablerep_fast[data]") followed."""
    names = set()
    for req in PYPROJECT["project"]["optional-dependencies"][name]:
        if _name(req) == "stablerep-fast":
            inner = req[req.index("[") + 1 : req.index("]")].split(",")
            names |= set().union(*(_extra(e.strip(), seen + (name,)) for e in inner if e.strip() not in seen))
        else:
            names.add(_name(req))
    return names


needs_pyproject = pytest.mark.skipif(PYPROJECT is None, reason="not a source checkout")


@needs_pyproject
def test_base_requirements_name_no_stage_library():
    base = {_name(r) for r in PYPROJECT["project"]["dependencies"]}
    assert base == {"torch", "triton", "numpy"}, base
    stage_libraries = _extra("all") | _extra("dali") | _extra("tensorrt") | _extra("dev")
    assert not base & (stage_libraries - {"torch", "numpy"}), base & stage_libraries


@needs_pyproject
def test_each_stage_extra_installs_what_its_hint_checks():
    """The one-line hint names an extra: that extra must install every module the stage checks."""
    checks = [(STAGE_EXTRA[stage], modules) for stage, modules in STAGE_MODULES.items()] + [("train", TEXT_TOWER_MODULES)]
    for extra, modules in checks:
        installs = _extra(extra)
        for module, dist in modules.items():
            assert dist.replace("_", "-") in installs, f"the '{extra}' extra does not install {dist} ({module})"
    assert _extra("dev") >= _extra("all") | {"pytest"}


_CHILD = r"""
import importlib, importlib.abc, io, json, sys, contextlib
BLOCKED = json.loads(sys.argv[1])

class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if any(name == b or name.startswith(b + ".") for b in BLOCKED):
            raise ImportError(f"{name} is blocked (a bare install)")
        return None

sys.meta_path.insert(0, Refuse())
import torch
from stablerep_fast import MultiPosConLoss, MultiPosConLossMM, multipos_clip_loss, multipos_con_loss

inputs = torch.load(sys.argv[2])
out = {}
feats = inputs["feats"].clone().requires_grad_()
loss = multipos_con_loss(feats, inputs["labels"], 0.1)
loss.backward()
out["loss"], out["grad"] = loss.detach(), feats.grad.clone()
feats.grad = None
module_out = MultiPosConLoss(temperature=0.1)({"feats": feats, "labels": inputs["labels"]})
module_out["loss"].backward()
out["module_loss"], out["module_grad"] = module_out["loss"].detach(), feats.grad.clone()
image_emb = inputs["image_emb"].clone().requires_grad_()
mm = MultiPosConLossMM(temperature=0.1, w1=1.0, w2=1.0)({
    "image_feats": feats, "image_emb": image_emb, "text_emb": inputs["text_emb"],
    "image_labels": inputs["labels"], "text_labels": inputs["text_labels"], "logit_scale": 10.0})
mm["loss"].backward()
out["mm_loss"], out["mm_img_txt"], out["mm_image_grad"] = mm["loss"].detach(), mm["img_txt_loss"].detach(), image_emb.grad
torch.save(out, sys.argv[3])

hints = {}
for stage in json.loads(sys.argv[4]):
    try:
        importlib.import_module("stablerep_fast." + stage)
        hints[stage] = None
    except ImportError as exc:
        hints[stage] = [type(exc).__name__, str(exc)]

from stablerep_fast import bench
from stablerep_fast.cli import main
skips = {name: bench.run_suite(name, "cpu", versions={})[0].get("skipped") for name in ("generate", "data", "train")}
err = io.StringIO()
with contextlib.redirect_stderr(err):
    code = main(["train", "--data", "nowhere"])
leaked = sorted(m for m in sys.modules if any(m == b or m.startswith(b + ".") for b in BLOCKED))
print(json.dumps({"hints": hints, "skips": skips, "cli": [code, err.getvalue()], "leaked": leaked}))
"""


def test_bare_install_runs_the_loss_and_names_each_stage_extra(tmp_path):
    n, d = 24, 8
    labels = torch.arange(n) // 3
    inputs = dict(feats=torch.randn(n, d), labels=labels, image_emb=torch.randn(n, d), text_emb=torch.randn(n // 3, d),
                  text_labels=torch.arange(n // 3))  # fmt: skip
    torch.save(inputs, tmp_path / "inputs.pt")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(BLOCKED), str(tmp_path / "inputs.pt"), str(tmp_path / "out.pt"),
         json.dumps(list(STAGE_EXTRA))],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["leaked"] == [], f"a blocked library was imported: {result['leaked']}"

    # The loss and the drop-in modules ran forward and backward, with the reference's values.
    out = torch.load(tmp_path / "out.pt")
    f = inputs["feats"].double().requires_grad_()
    ref = reference.multipos_con_loss(f, labels, 0.1)
    ref.backward()
    assert_close(out["loss"], ref, **F64, name="loss")
    assert_close(out["grad"], f.grad, **F64, name="grad")
    assert_close(out["module_loss"], ref, **F64, name="MultiPosConLoss")
    assert_close(out["module_grad"], f.grad, **F64, name="MultiPosConLoss grad")
    v = inputs["image_emb"].double().requires_grad_()
    img_txt = reference.multipos_clip_loss(v, inputs["text_emb"].double(), labels, inputs["text_labels"], 10.0)
    img_txt.backward()
    assert_close(out["mm_img_txt"], img_txt, **F64, name="img_txt_loss")
    assert_close(out["mm_loss"], ref + img_txt, **F64, name="MultiPosConLossMM")
    assert_close(out["mm_image_grad"], v.grad, **F64, name="image_emb grad")

    # Each stage: one line naming its extra and the pip command.
    for stage, extra in STAGE_EXTRA.items():
        kind, message = result["hints"][stage]
        assert kind == "MissingExtraError", (stage, kind, message)
        assert "\n" not in message and f"pip install 'stablerep_fast[{extra}]'" in message, (stage, message)
    # The bench records the suites it cannot run, and the CLI prints the hint as one line, exit 2.
    assert all("extra" in reason for reason in result["skips"].values()), result["skips"]
    code, stderr = result["cli"]
    assert code == 2 and stderr.count("\n") == 1 and "stablerep_fast[train]" in stderr, stderr


def test_no_module_imports_the_cli():
    """cli.py is the top of the package: nothing imports it (``python -m stablerep_fast.bench`` and
    the benchmark scripts included), so every stage is callable without argv."""
    offenders = []
    for path in [*(ROOT / "stablerep_fast").rglob("*.py"), *(ROOT / "benchmarks").glob("*.py")]:
        if path.name == "cli.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            if any(n == "stablerep_fast.cli" for n in names):
                offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []
