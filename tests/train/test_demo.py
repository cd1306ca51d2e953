"""The README's main command, reduced: generate digits -> train three encoders -> evaluate five on
real digits (and the shapes world), over seeds; the studies that choose the recipe."""

import json

import numpy as np
import pytest
from helpers import require_stage

pytest.importorskip("kornia", reason="the demo trains on the memory loader (kornia): pip install 'stablerep_fast[all]'")
pytest.importorskip("sklearn", reason="the demo evaluates on scikit-learn's digit scans: pip install 'stablerep_fast[all]'")
require_stage("demo")

from stablerep_fast.cli import main  # noqa: E402
from stablerep_fast.demo import ENCODERS, DemoConfig, run_study, summarise  # noqa: E402
from stablerep_fast.errors import ConfigError  # noqa: E402
from stablerep_fast.eval.probe_sets import real_digits  # noqa: E402

DIGIT_ENCODERS = ["multipos", "simclr", "simclr_real", "random_init", "raw_pixels"]


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 0
    return out


def test_demo_quick_writes_results_and_plot(quick_demo, capsys):
    results = json.loads((quick_demo / "results.json").read_text())
    assert (quick_demo / "probe_vs_step.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    run = results["per_seed"]["0"]
    assert [name for name in ENCODERS if name in run] == DIGIT_ENCODERS
    for name in DIGIT_ENCODERS:
        for key in ("fewshot_acc", "probe_acc", "knn_acc"):
            assert 0.0 <= run[name][key] <= 1.0
            assert results["summary"][name][key] == {"mean": run[name][key], "std": 0.0}
    for name in ("multipos", "simclr", "simclr_real"):
        assert [p["step"] for p in run[name]["curve"]] == [3, 6]
        assert run[name]["curve"][-1]["fewshot_acc"] == run[name]["fewshot_acc"]
    assert results["config"]["recipe"]["images_per_caption"] == 4 and not results["config"]["validation"]
    assert results["config"]["world"] == "digits" and results["timings"]["cpu_s"] > 0


def test_raw_pixel_row_matches_an_independent_logistic_regression(quick_demo):
    """The raw-pixel row is a linear probe on the real scans' pixels: scikit-learn's logistic
    regression on the same split lands within a few test images of it."""
    from sklearn.linear_model import LogisticRegression

    run = json.loads((quick_demo / "results.json").read_text())["per_seed"]["0"]
    data = real_digits(DemoConfig.quick(quick_demo).recipe.image_size)
    flat = lambda x: x[..., 0].reshape(len(x), -1) / 255  # noqa: E731
    reference = LogisticRegression(C=1.0, max_iter=2000).fit(flat(data.train.x), data.train.y)
    accuracy = reference.score(flat(data.test.x), data.test.y)
    assert accuracy > 0.9 and abs(run["raw_pixels"]["probe_acc"] - accuracy) < 0.03


def test_an_earlier_demo_is_not_overwritten_without_asking(quick_demo, capsys):
    before = (quick_demo / "results.json").read_bytes()
    assert main(["demo", "--quick", "--out", str(quick_demo), "--no-progress", "--steps", "1"]) == 2
    assert "holds the results of an earlier demo" in capsys.readouterr().err
    assert (quick_demo / "results.json").read_bytes() == before


def test_shapes_world_keeps_its_probes(tmp_path, capsys):
    config = DemoConfig.quick(tmp_path, world="shapes", progress=False, curve_points=1)
    assert config.methods == ("multipos", "simclr") and config.recipe.image_size == 64
    from stablerep_fast.demo import run_demo

    run = run_demo(config)["per_seed"]["0"]
    assert "simclr_real" not in run and "raw_pixels" not in run
    assert set(run["multipos"]["by_label"]) == {"shape", "texture", "colour"}
    assert run["multipos"]["probe_acc"] == pytest.approx(np.mean([r["probe_acc"] for r in run["multipos"]["by_label"].values()]))
    assert "held-out test images" in capsys.readouterr().out


def test_summary_is_mean_and_sample_std_over_seeds():
    def run(acc):
        curve = [{"step": 5, "fewshot_acc": acc, "probe_acc": acc, "knn_acc": acc / 2}]
        return {name: {"fewshot_acc": acc, "probe_acc": acc, "knn_acc": acc / 2,
                       **({"curve": curve} if name not in ("random_init", "raw_pixels") else {})}
                for name in DIGIT_ENCODERS}  # fmt: skip

    values = [0.5, 0.6, 0.9]
    summary = summarise({seed: run(v) for seed, v in enumerate(values)})
    expected = {"mean": np.mean(values), "std": np.std(values, ddof=1)}
    assert summary["multipos"]["fewshot_acc"] == pytest.approx(expected)
    assert summary["simclr_real"]["knn_acc"] == pytest.approx({k: v / 2 for k, v in expected.items()})
    assert summary["multipos"]["curve"][0]["probe_acc"] == pytest.approx(expected) and "curve" not in summary["raw_pixels"]


def test_overrides_cut_the_warm_up_and_a_new_world_brings_its_defaults(tmp_path):
    config = DemoConfig(out=tmp_path)
    short = config.with_overrides(steps=5, seeds=[1, 2], captions=None, online=True)
    assert (short.recipe.steps, short.recipe.warmup_steps, short.seeds) == (5, 5, (1, 2))
    assert short.online and short.captions == config.captions and short.recipe.model == config.recipe.model
    long = config.with_overrides(steps=10 * config.recipe.steps)
    assert long.recipe.warmup_steps == config.recipe.warmup_steps < long.recipe.steps
    shapes = config.with_overrides(world="shapes", steps=7)
    assert (shapes.recipe.image_size, shapes.resolution, shapes.methods, shapes.recipe.steps) == (64, 64, ("multipos", "simclr"), 7)
    with pytest.raises(ConfigError, match="--seeds needs at least one seed"):
        config.with_overrides(seeds=[])
    with pytest.raises(ConfigError, match="--steps must be >= 1, got 0"):
        config.with_overrides(steps=0)
    with pytest.raises(ConfigError, match="--world must be one of"):
        DemoConfig(out=tmp_path, world="faces")


def test_m_study_keeps_images_per_step_and_evaluates_on_validation(tmp_path, capsys):
    config = DemoConfig.quick(tmp_path, progress=False, curve_points=1, methods=("multipos", "simclr"))
    rows = run_study(config, "m", values=(2, 8))
    assert [(r["value"], r["method"]) for r in rows if r["method"] != "raw_pixels"] == [
        (2, "multipos"), (2, "simclr"), (2, "random_init"), (8, "multipos"), (8, "random_init")]  # fmt: skip
    assert json.loads((tmp_path / "study-m-2_8.json").read_text()) == json.loads(json.dumps(rows))
    for m in (2, 8):
        saved = json.loads((tmp_path / f"m-{m}" / "results.json").read_text())["config"]
        assert saved["validation"] and saved["recipe"]["images_per_caption"] == m
        assert saved["recipe"]["captions_per_batch"] * m == config.recipe.batch_images
    assert "m=8 multipos" in capsys.readouterr().out


def test_train_and_probe_commands(quick_demo, tmp_path, capsys):
    data = quick_demo / "seed0" / "data" / "images-k4"
    run = tmp_path / "run"
    args = ["train", "--preset", "tiny", "--data", str(data), "--out", str(run), "--steps", "2", "--warmup-steps", "1",
            "--captions-per-batch", "8", "--num-workers", "0", "--no-progress", "--set", "head_hidden=64",
            "--set", "augment={crop_scale: [0.5, 1], blur_p: 0}"]
    assert main(args) == 0
    saved = (run / "config.yaml").read_text()
    assert "head_hidden: 64" in saved and "- 0.5" in saved and "blur_p: 0" in saved
    probe = ["probe", "--checkpoint", str(run / "checkpoint.pt"), "--data", "shapes:colour", "--per-class", "6",
             "--sweep", "0.001", "--json", str(tmp_path / "probe.json")]
    assert main(probe) == 0
    assert 0 <= json.loads((tmp_path / "probe.json").read_text())["probe_acc"] <= 1
    assert main(["train", "--preset", "tiny", "--set", "stepz=3"]) == 2
    assert "unknown setting" in capsys.readouterr().err
    assert main(["train", "--preset", "tiny", "--set", "augment=strong"]) == 2
    assert "unknown augment 'strong'" in capsys.readouterr().err
    assert main(["demo", "--out", str(tmp_path / "x"), "--seeds", ","]) == 2
    assert "--seeds needs at least one seed" in capsys.readouterr().err
