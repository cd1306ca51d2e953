"""What ``train`` does with a run folder that already holds a run: refuse, resume or start over,
and never lose the earlier run to a mistake."""

import logging
import os
import resource
import signal
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ListLoader, view_major_batch

from stablerep_fast.errors import CheckpointError, LockError, OutputError
from stablerep_fast.train import CHECKPOINT, ConfigError, TrainConfig, load_checkpoint, train
from stablerep_fast.train.run_folder import hold_run_folder


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


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("names", [["config.yaml", "log.jsonl"], ["notes.txt"], ["checkpoint.pt.bak"]])
def test_a_folder_of_the_users_files_is_refused_untouched(micro_config, names):
    """``--out .`` in a folder with the user's own config.yaml: nothing is replaced, nothing added."""
    out = Path(micro_config.out)
    out.mkdir()
    for name in names:
        (out / name).write_bytes(b"the user's " + name.encode())
    before = _files(out)
    with pytest.raises(OutputError, match=f"--out {out} holds files `train` did not write"):
        train(micro_config, _loader())
    assert _files(out) == before


def test_a_second_process_is_refused_while_a_run_holds_the_folder(finished):
    """The lock is an flock: a second open file of the lock conflicts even within one process,
    so the holder here stands in for another training process (kill -9 of a real one, which
    must release it, is in test_kill_resume.py)."""
    config, checkpoint, config_yaml = finished
    out = Path(config.out)
    with hold_run_folder(out):
        with pytest.raises(LockError) as raised:
            train(replace(config, stop_at=None, resume=True), _loader())
    message = str(raised.value)
    assert f"run folder {out} is in use" in message and f"PID {os.getpid()}" in message and "\n" not in message
    assert (out / CHECKPOINT).read_bytes() == checkpoint and (out / "config.yaml").read_text() == config_yaml
    assert train(replace(config, stop_at=None, resume=True), _loader()).step == 6  # released with the holder


@pytest.mark.parametrize(
    "change, loader, error",
    [
        (dict(loss_backend="nosuch"), _loader, "unknown backend 'nosuch'"),
        (dict(seed=-1), _loader, "seed must be in"),
        (dict(image_size=48), lambda: ListLoader([view_major_batch(4, 2, 48)]), "48"),  # a crash in the first step
    ],
)
def test_a_failed_resume_leaves_config_checkpoint_and_log_as_they_were(finished, change, loader, error):
    config, _, _ = finished
    out = Path(config.out)
    before = _files(out)
    with pytest.raises(Exception, match=error):
        train(replace(config, stop_at=None, resume=True, **change), loader())
    assert _files(out) == before


def test_a_new_run_that_fails_in_its_first_step_leaves_no_folder(micro_config):
    with pytest.raises(ValueError, match="unknown backend"):
        train(replace(micro_config, loss_backend="nosuch"), _loader())
    assert not Path(micro_config.out).exists()


def test_config_yaml_is_the_checkpoints_config(micro_config):
    """Written with each checkpoint, not at the start: after a run stopped between checkpoints it
    still describes the checkpoint."""
    out = Path(micro_config.out)
    train(replace(micro_config, stop_at=2, checkpoint_every=1), _loader())
    train(replace(micro_config, stop_at=4, resume=True, base_lr=1e-2), _loader())
    assert TrainConfig.load(out / "config.yaml") == TrainConfig.from_dict(load_checkpoint(out / CHECKPOINT)["config"])
    assert TrainConfig.load(out / "config.yaml").base_lr == 1e-2


def _tensor_bytes_offset(raw: bytes, state: dict) -> int:
    """Where the largest weight's bytes start inside the checkpoint file."""
    name, tensor = max(state["model"].items(), key=lambda item: item[1].numel())
    offset = raw.find(tensor.contiguous().numpy().tobytes())
    assert offset >= 0, f"{name}'s bytes not found in the file"
    return offset


def _flip(raw: bytes, offset: int, count: int = 16) -> bytes:
    return raw[:offset] + bytes(b ^ 0xFF for b in raw[offset : offset + count]) + raw[offset + count :]


def test_a_checkpoint_with_flipped_bytes_is_refused(finished):
    config, checkpoint, config_yaml = finished
    path = Path(config.out) / CHECKPOINT
    path.write_bytes(_flip(checkpoint, _tensor_bytes_offset(checkpoint, load_checkpoint(path)) + 64))
    for attempt in (lambda: load_checkpoint(path), lambda: train(replace(config, stop_at=None, resume=True), _loader())):
        with pytest.raises(CheckpointError, match=f"checkpoint {path} is damaged"):
            attempt()
    assert (Path(config.out) / "config.yaml").read_text() == config_yaml


def test_flipped_bytes_anywhere_are_refused_or_change_nothing(finished):
    """Bytes flipped in the zip's padding or unused header fields change no value: then the
    checkpoint loads as written; every other damage is refused, never resumed from."""
    config, checkpoint, _ = finished
    path = Path(config.out) / CHECKPOINT
    original = load_checkpoint(path)
    rng = np.random.default_rng(0)
    refused = 0
    for offset in rng.integers(0, len(checkpoint) - 16, size=40):
        path.write_bytes(_flip(checkpoint, int(offset)))
        try:
            state = load_checkpoint(path)
        except CheckpointError:
            refused += 1
            continue
        assert_same_state(state, original, f"bytes {offset}..{offset + 16}")
    assert refused > 0


def assert_same_state(actual, expected, where: str) -> None:
    """Equal structure and values, tensors bit for bit."""
    assert type(actual) is type(expected), where
    if isinstance(expected, torch.Tensor):
        assert actual.dtype == expected.dtype and actual.shape == expected.shape, where
        assert torch.equal(actual.reshape(-1).view(torch.uint8), expected.reshape(-1).view(torch.uint8)), where
    elif isinstance(expected, dict):
        assert list(actual) == list(expected), where
        for key in expected:
            assert_same_state(actual[key], expected[key], f"{where}: {key}")
    elif isinstance(expected, (list, tuple)):
        assert len(actual) == len(expected), where
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_same_state(a, e, f"{where}: [{i}]")
    elif isinstance(expected, np.ndarray):
        assert np.array_equal(actual, expected), where
    else:
        assert actual == expected, where


def test_resume_without_a_checkpoint_warns_and_starts_at_step_0(micro_config, caplog):
    with caplog.at_level(logging.WARNING, logger="stablerep_fast.train"):
        summary = train(replace(micro_config, resume=True, stop_at=2), _loader())
    assert summary.step == 2 and len(summary.losses) == 2
    assert any("holds no checkpoint.pt, so this run starts at step 0" in r.getMessage() for r in caplog.records)


def test_a_run_removes_the_temporary_files_a_killed_write_left_and_nothing_else(finished):
    config, _, _ = finished
    out = Path(config.out)
    stale = ["checkpoint.pt.4242-deadbeef.srf-tmp", "config.yaml.17-0123abcd.srf-tmp"]
    kept = ["checkpoint.pt.bak", "notes.srf-tmp", "checkpoint.pt.4242-XYZ.srf-tmp", "log.jsonl.4242-deadbeef.srf-tmp.txt"]
    for name in stale + kept:
        (out / name).write_bytes(b"x")
    train(replace(config, stop_at=None, resume=True), _loader())
    names = {p.name for p in out.iterdir()}
    assert not names & set(stale) and set(kept) <= names


def test_a_full_disk_during_a_checkpoint_names_the_file_and_keeps_the_last_one(finished):
    """A real failed write: the process may not grow a file past 8 KiB (RLIMIT_FSIZE), so the
    checkpoint fails part-way, as on a full disk; the log (small) is still written."""
    config, checkpoint, config_yaml = finished
    out = Path(config.out)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (8192, hard))
    try:
        with pytest.raises(OutputError) as raised:
            train(replace(config, stop_at=None, resume=True), _loader())
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)
    message = str(raised.value)
    assert f"cannot write checkpoint {out / CHECKPOINT} (File too large)" in message and "\n" not in message
    assert (out / CHECKPOINT).read_bytes() == checkpoint and (out / "config.yaml").read_text() == config_yaml
    assert not [p.name for p in out.iterdir() if p.name.endswith(".srf-tmp")]
