"""The README's main command, reduced: generate -> train two encoders -> probe three."""

import json

from stablerep_fast.cli import main


def test_demo_quick_writes_results(tmp_path, capsys):
    assert main(["demo", "--quick", "--out", str(tmp_path), "--no-progress"]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    for name in ("multipos", "simclr", "random_init"):
        assert 0.0 <= results[name]["probe_acc"] <= 1.0
        assert set(results[name]["probe_acc_by_label"]) == {"shape", "texture", "colour"}
    assert results["multipos"]["steps"] == results["simclr"]["steps"]
    assert {"generate_s", "train_multipos_s", "train_simclr_s", "probe_s", "total_s"} <= results["timings"].keys()
    table = capsys.readouterr().out
    assert "multipos" in table and "random_init" in table


def test_train_and_probe_commands(tmp_path, capsys):
    data = tmp_path / "demo" / "data" / "multipos"
    assert main(["demo", "--quick", "--out", str(tmp_path / "demo"), "--no-progress", "--steps", "1"]) == 0
    run = tmp_path / "run"
    args = ["train", "--preset", "tiny", "--data", str(data), "--out", str(run), "--steps", "2", "--warmup-steps", "1",
            "--captions-per-batch", "8", "--num-workers", "0", "--no-progress", "--set", "head_hidden=64"]
    assert main(args) == 0
    assert "head_hidden: 64" in (run / "config.yaml").read_text()
    probe = ["probe", "--checkpoint", str(run / "checkpoint.pt"), "--data", "shapes:colour", "--per-class", "6",
             "--sweep", "0.001", "--json", str(tmp_path / "probe.json")]
    assert main(probe) == 0
    assert 0 <= json.loads((tmp_path / "probe.json").read_text())["probe_acc"] <= 1
    assert main(["train", "--preset", "tiny", "--set", "stepz=3"]) == 2
    assert "unknown setting" in capsys.readouterr().err
