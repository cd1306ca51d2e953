"""Training on batches generated while training (data="generator:shapes"): the loss falls, and
an interrupted run resumed from its checkpoint sees the same samples as an uninterrupted one."""

from dataclasses import replace

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
