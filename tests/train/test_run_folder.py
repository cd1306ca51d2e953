"""What ``train`` does with a run folder that already holds a run: refuse, resume or start over,
and never lose the earlier run to a mistake."""

import logging
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import ListLoader, view_major_batch

from stablerep_fast.errors import CheckpointError, OutputError
from stablerep_fast.train import CHECKPOINT, ConfigError, load_checkpoint, train


def _loader():
    return ListLoader([view_major_batch(4, 2, 16, seed=s) for s in range(3)])


@pytest.fixture
def finished(micro_config):
    """A run folder after 3 steps: its config and the bytes of its checkpoint and config.yaml."""
    config = replace(micro_config, steps=6, stop_at=3)
    train(config, _loader())
    out = Path(config.out)
    return config, (out / CHECKPOINT).read_bytes(), (out / "config.yaml").read_text()


def test_a_run_folder_is_refused_without_resume_or_overwrite(finished):
    config, checkpoint, config_yaml = finished
    with pytest.raises(OutputError, match="--resume to continue it, --overwrite to start over"):
        train(replace(config, stop_at=None, seed=1), _loader())
    out = Path(config.out)
    assert (out / CHECKPOINT).read_bytes() == checkpoint and (out / "config.yaml").read_text() == config_yaml


def test_overwrite_starts_over_and_resume_continues(finished):
    config, _, _ = finished
    again = train(replace(config, stop_at=2, overwrite=True), _loader())
    assert again.step == 2 and load_checkpoint(Path(config.out) / CHECKPOINT)["step"] == 2
    assert len((Path(config.out) / "log.jsonl").read_text().splitlines()) == 2  # a new log, not appended
    resumed = train(replace(config, stop_at=None, resume=True), _loader())
    assert resumed.step == 6 and len(resumed.losses) == 4
    with pytest.raises(ConfigError, match="exclude each other"):
        replace(config, resume=True, overwrite=True).validate()


def test_a_run_that_fails_on_bad_input_leaves_the_folder_as_it_was(finished):
    config, checkpoint, config_yaml = finished
    with pytest.raises(FileNotFoundError):
        train(replace(config, resume=True, data=str(Path(config.out) / "no-such-data")))
    out = Path(config.out)
    assert (out / CHECKPOINT).read_bytes() == checkpoint and (out / "config.yaml").read_text() == config_yaml


@pytest.mark.parametrize(
    "change, names",
    [
        (dict(head_dim=8), "head_dim 8 (checkpoint: 16)"),
        (dict(model_kwargs={"img_size": 16, "patch_size": 8, "depth": 2, "embed_dim": 32, "num_heads": 2}), "model_kwargs"),
        (dict(captions_per_batch=2), "captions_per_batch 2 (checkpoint: 4)"),
        (dict(images_per_caption=4), "images_per_caption 4 (checkpoint: 2)"),
    ],
)
def test_resume_refuses_another_model_or_batch_shape(finished, change, names):
    config, checkpoint, config_yaml = finished
    with pytest.raises(CheckpointError, match="cannot resume") as raised:
        train(replace(config, stop_at=None, resume=True, **change), _loader())
    assert names in str(raised.value)
    out = Path(config.out)
    assert (out / CHECKPOINT).read_bytes() == checkpoint and (out / "config.yaml").read_text() == config_yaml


def test_resume_warns_when_the_run_is_no_longer_an_exact_continuation(finished, caplog):
    config, _, _ = finished
    with caplog.at_level(logging.WARNING, logger="stablerep_fast.train"):
        summary = train(replace(config, stop_at=4, resume=True, base_lr=1e-2, checkpoint_every=1), _loader())
    assert summary.step == 4
    warnings = [r.getMessage() for r in caplog.records if "no longer an exact continuation" in r.getMessage()]
    assert len(warnings) == 1 and "base_lr" in warnings[0] and "checkpoint_every" not in warnings[0], warnings


def test_weights_that_do_not_fit_are_one_error(finished):
    """A checkpoint whose config was edited by hand to another architecture."""
    config, _, _ = finished
    path = Path(config.out) / CHECKPOINT
    state = load_checkpoint(path)
    state["config"]["head_dim"] = 8
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="its weights do not fit the model"):
        train(replace(config, head_dim=8, stop_at=None, resume=True), _loader())
