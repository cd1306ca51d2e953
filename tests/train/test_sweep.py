"""``stablerep-fast sweep``: a generation parameter over values -> the demo per value -> sweep.json."""

import json
import math

import pytest
from helpers import require_stage

pytest.importorskip("kornia", reason="the demo trains on the memory loader (kornia): pip install 'stablerep_fast[all]'")
pytest.importorskip("sklearn", reason="the demo evaluates on scikit-learn's digit scans: pip install 'stablerep_fast[all]'")
require_stage("demo")

from stablerep_fast.cli import main  # noqa: E402
from stablerep_fast.demo import DemoConfig  # noqa: E402
from stablerep_fast.errors import ConfigError  # noqa: E402
from stablerep_fast.generate.models import digits  # noqa: E402
from stablerep_fast.sweep import run_sweep  # noqa: E402


def test_sweep_of_fidelity_writes_accuracy_and_the_mean_score(tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(["sweep", "--quick", "--out", str(out), "--param", "guidance_scale", "--values", "0,2",
                 "--no-progress"]) == 0  # fmt: skip
    result = json.loads((out / "sweep.json").read_text())
    assert [p["value"] for p in result["points"]] == [0.0, 2.0] and (out / "sweep.png").exists()
    captions = 96 * 4  # DemoConfig.quick: 96 captions x 4 images, every caption naming its digit
    for point in result["points"]:
        # The documented contradiction rate: 9e / (1 + 9e), e = CONTRADICTION ** fidelity.
        e = digits.CONTRADICTION ** point["value"]
        expected = 1 - 9 * e / (1 + 9 * e)
        assert abs(point["mean_score"] - expected) < 5 * math.sqrt(max(expected * (1 - expected), 1e-4) / captions), point
        assert 0.0 <= point["probe_acc"]["mean"] <= 1.0
        # Each value is a demo of its own, on the validation split.
        demo = json.loads((out / f"guidance_scale={point['value']:g}" / "results.json").read_text())
        assert demo["config"]["validation"] is True and demo["summary"]["multipos"]["probe_acc"] == point["probe_acc"]
    assert "mean score" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="cannot be swept"):
        run_sweep(DemoConfig.quick(tmp_path / "x"), "latent_std", [0.1])
