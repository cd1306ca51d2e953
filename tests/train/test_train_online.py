"""Training on batches generated while training (data="generator:shapes"): the loss falls, and
an interrupted run resumed from its checkpoint sees the same samples as an uninterrupted one."""

import json
from dataclasses import replace

from stablerep_fast.cli import main
from stablerep_fast.train import train

ONLINE = {"num_captions": 64, "resolution": 32, "save_size": 16, "views": "latent-neighbors"}


def test_a_short_online_run_decreases_the_loss(micro_config):
    config = replace(micro_config, data="generator:shapes", online=ONLINE, augment="none", num_workers=0,
                     captions_per_batch=8, images_per_caption=4, steps=16, warmup_steps=2, base_lr=4e-3)  # fmt: skip
    summary = train(config)
    first, last = sum(summary.losses[:3]) / 3, sum(summary.losses[-3:]) / 3
    assert last < first - 0.1, f"loss went from {first:.3f} to {last:.3f}: {summary.losses}"


def test_an_online_run_resumes_with_the_same_samples(micro_config, tmp_path):
    config = replace(micro_config, data="generator:shapes", online=ONLINE, num_workers=1, captions_per_batch=8,
                     steps=6, checkpoint_every=2)  # fmt: skip
    whole = train(replace(config, out=str(tmp_path / "whole")))
    interrupted = replace(config, out=str(tmp_path / "parts"), stop_at=3)
    train(interrupted)
    second = train(replace(interrupted, stop_at=None, resume=True))
    assert second.step == 6 and second.losses == whole.losses[3:]


def test_demo_online_trains_multipos_without_stored_shards(tmp_path):
    assert main(["demo", "--quick", "--online", "--steps", "2", "--out", str(tmp_path), "--no-progress"]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["config"]["online"] is True
    assert not (tmp_path / "seed0" / "data" / "multipos").exists()  # its batches were generated while training
    saved = (tmp_path / "seed0" / "multipos" / "config.yaml").read_text()
    assert "data: generator:digits" in saved and "captions.txt" in saved
    assert 0.0 <= results["summary"]["multipos"]["probe_acc"]["mean"] <= 1.0
