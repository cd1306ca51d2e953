"""``stablerep-fast sweep``: a generation parameter over values -> the demo per value -> sweep.json."""

import io
import json
import math
import tarfile

import pytest
from helpers import require_stage

pytest.importorskip("kornia", reason="the demo trains on the memory loader (kornia): pip install 'stablerep_fast[all]'")
pytest.importorskip("sklearn", reason="the demo evaluates on scikit-learn's digit scans: pip install 'stablerep_fast[all]'")
require_stage("demo")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

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
    assert "mean_score" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="cannot be swept"):
        run_sweep(DemoConfig.quick(tmp_path / "x"), "steps", [10])


def _samples(folder):
    """Each sample's scores (its KEY.json) and decoded images, read straight from the shard tars."""
    samples = {}
    for tar in sorted(folder.glob("*.tar")):
        with tarfile.open(tar) as archive:
            for member in archive.getmembers():
                key, _, suffix = member.name.partition(".")
                data = archive.extractfile(member).read()
                sample = samples.setdefault(key, {"images": {}})
                if suffix == "json":
                    sample["scores"] = json.loads(data)["scores"]
                elif suffix.endswith("png"):
                    sample["images"][int(suffix.split(".")[0])] = np.asarray(Image.open(io.BytesIO(data)), dtype=np.float64)
    return list(samples.values())


def test_sweep_of_min_score_leaves_out_low_scorers_and_whole_groups(tmp_path):
    out, m = tmp_path / "sweep", 4  # DemoConfig.quick: m = 4 of K = 4 images per caption
    assert main(["sweep", "--quick", "--out", str(out), "--param", "min_score", "--values", "0,1", "--fidelity", "0.5",
                 "--no-progress"]) == 0  # fmt: skip
    kept_all, strict = json.loads((out / "sweep.json").read_text())["points"]
    samples = _samples(out / "min_score=1" / "seed0" / "data" / "images-k4")
    low = [sum(score < 1 for score in sample["scores"]) for sample in samples]
    assert kept_all["images_left_out"] == kept_all["captions_left_out"] == 0
    assert strict["images_left_out"] == sum(low) > 0
    assert strict["captions_left_out"] == sum(m - n_low < m for n_low in low)  # one low image drops its group of 4
    assert strict["mean_score"] == kept_all["mean_score"] == pytest.approx(np.mean([s for x in samples for s in x["scores"]]))


def test_sweep_of_latent_std_draws_latent_neighbours(tmp_path):
    out = tmp_path / "sweep"
    assert main(["sweep", "--quick", "--out", str(out), "--param", "latent_std", "--values", "0.05,2", "--captions", "32",
                 "--steps", "2", "--no-progress"]) == 0  # fmt: skip
    spread = {}
    for value in ("0.05", "2"):
        folder = out / f"latent_std={value}" / "seed0" / "data" / "images-k4"
        dataset = json.loads((folder / "dataset.json").read_text())
        assert dataset["views"] == "latent-neighbors" and dataset["latent_std"] == float(value)
        # How much a caption's 4 images differ: the per-pixel std across them, averaged.
        spread[value] = np.mean([np.std(np.stack(list(s["images"].values())), axis=0).mean() for s in _samples(folder)])
    assert spread["0.05"] < 0.5 * spread["2"], spread
