"""The README's main command, reduced: generate -> train two encoders -> probe three, over seeds."""

import json

import numpy as np
import pytest

from stablerep_fast.cli import main
from stablerep_fast.demo import ENCODERS, DemoConfig, _summarise
from stablerep_fast.errors import ConfigError


def test_demo_quick_writes_results_and_plot(tmp_path, capsys):
    assert main(["demo", "--quick", "--out", str(tmp_path), "--no-progress"]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert (tmp_path / "probe_vs_step.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    run = results["per_seed"]["0"]
    for name in ENCODERS:
        assert set(run[name]["by_label"]) == {"shape", "texture", "colour"}
        for label, r in run[name]["by_label"].items():
            assert 0.0 <= r["probe_acc"] <= 1.0 and 0.0 <= r["knn_acc"] <= 1.0
        assert run[name]["probe_acc"] == pytest.approx(np.mean([r["probe_acc"] for r in run[name]["by_label"].values()]))
        assert results["summary"][name]["probe_acc"] == {"mean": run[name]["probe_acc"], "std": 0.0}
    assert [p["step"] for p in run["multipos"]["curve"]] == [p["step"] for p in run["simclr"]["curve"]] == [3, 6]
    assert run["multipos"]["curve"][-1]["probe_acc"] == run["multipos"]["probe_acc"]
    assert results["config"]["recipe"]["images_per_caption"] == 4 and not results["config"]["validation"]
    assert results["timings"]["cpu_s"] > 0 and results["timings"]["total_s"] > 0
    table = capsys.readouterr().out
    assert "multipos" in table and "random_init" in table and "held-out test images" in table


def test_summary_is_mean_and_sample_std_over_seeds():
    def run(acc):
        by_label = {"shape": {"probe_acc": acc, "knn_acc": acc / 2}}
        curve = [{"step": 5, "probe_acc": acc, "knn_acc": acc / 2}]
        return {name: {"probe_acc": acc, "knn_acc": acc / 2, "by_label": by_label, **({"curve": curve} if name != "random_init" else {})}
                for name in ENCODERS}  # fmt: skip

    values = [0.5, 0.6, 0.9]
    summary = _summarise({seed: run(v) for seed, v in enumerate(values)})
    expected = {"mean": np.mean(values), "std": np.std(values, ddof=1)}
    assert summary["multipos"]["probe_acc"] == pytest.approx(expected)
    assert summary["simclr"]["by_label"]["shape"]["knn_acc"] == pytest.approx({k: v / 2 for k, v in expected.items()})
    assert summary["multipos"]["curve"][0]["probe_acc"] == pytest.approx(expected) and "curve" not in summary["random_init"]


def test_overrides_cut_the_warm_up_to_the_steps_and_refuse_no_seeds_or_steps(tmp_path):
    config = DemoConfig(out=tmp_path)
    short = config.with_overrides(steps=5, seeds=[1, 2], captions=None, online=True)
    assert (short.recipe.steps, short.recipe.warmup_steps, short.seeds) == (5, 5, (1, 2))
    assert short.online and short.captions == config.captions and short.recipe.model == config.recipe.model
    long = config.with_overrides(steps=10 * config.recipe.steps)
    assert long.recipe.warmup_steps == config.recipe.warmup_steps < long.recipe.steps
    with pytest.raises(ConfigError, match="--seeds needs at least one seed"):
        config.with_overrides(seeds=[])
    with pytest.raises(ConfigError, match="--steps must be >= 1, got 0"):
        config.with_overrides(steps=0)


def test_train_and_probe_commands(tmp_path, capsys):
    data = tmp_path / "demo" / "seed0" / "data" / "multipos"
    assert main(["demo", "--quick", "--out", str(tmp_path / "demo"), "--no-progress", "--steps", "1"]) == 0
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


def test_m_study_keeps_images_per_step(tmp_path, capsys):
    from stablerep_fast.demo import DemoConfig, run_study

    config = DemoConfig.quick(tmp_path, progress=False, curve_points=1)
    rows = run_study(config, "m", values=(2, 8))
    assert [(r["value"], r["method"]) for r in rows] == [(2, "multipos"), ("simclr", "simclr"), (8, "multipos")]
    saved = json.loads((tmp_path / "study-m-2_8.json").read_text())
    assert [r["value"] for r in saved] == [2, "simclr", 8]
    for m in (2, 8):
        recipe = json.loads((tmp_path / f"m-{m}" / "results.json").read_text())["config"]["recipe"]
        assert recipe["images_per_caption"] == m and recipe["captions_per_batch"] * m == config.recipe.batch_images
    assert "m=8 multipos" in capsys.readouterr().out
