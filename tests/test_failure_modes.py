"""Every user error at the command line is one line on stderr, exit code 2, no traceback.

Each case is a mistake a new user makes (a file where a folder goes, a full disk, a damaged
checkpoint, broken YAML, bad probe data, ...); the message must name what and where.
"""

import errno
import json
import pickle

import numpy as np
import pytest
from helpers import require_stage

require_stage("generate", "train")  # the mistakes are made at generate, train and probe

import yaml  # noqa: E402  (the train extra's)

from stablerep_fast.cli import main  # noqa: E402
from stablerep_fast.generate import shapes  # noqa: E402

GENERATE = ["generate", "--model", "shapes", "--images-per-caption", "2", "--resolution", "32", "--save-size", "32",
            "--shard-size", "2", "--no-progress"]  # fmt: skip
TRAIN = ["train", "--preset", "tiny", "--no-progress", "--set", "steps=2", "--set", "warmup_steps=1"]


def one_line_error(capsys, argv: list[str]) -> str:
    """Run the CLI; assert exit 2 and a single ``error:`` line on stderr; return that line."""
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, f"exit {code}, stderr: {err}"
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err, err
    return err


@pytest.fixture
def captions(tmp_path):
    path = tmp_path / "captions.txt"
    path.write_text("\n".join(shapes.make_captions(5)) + "\n")
    return path


def test_generate_into_a_file(tmp_path, captions, capsys):
    (tmp_path / "file").write_text("mine")
    err = one_line_error(capsys, [*GENERATE, "--captions", str(captions), "--out", str(tmp_path / "file")])
    assert str(tmp_path / "file") in err and "folder" in err
    assert (tmp_path / "file").read_text() == "mine"


def test_train_into_a_file(tmp_path, capsys):
    (tmp_path / "file").write_text("mine")
    err = one_line_error(capsys, [*TRAIN, "--data", str(tmp_path), "--out", str(tmp_path / "file")])
    assert str(tmp_path / "file") in err and "folder" in err
    assert (tmp_path / "file").read_text() == "mine"


@pytest.mark.parametrize("code, advice", [(errno.ENOSPC, "free some space"), (errno.EROFS, "read-only")])
def test_generate_on_a_full_or_read_only_disk(tmp_path, captions, capsys, monkeypatch, code, advice):
    """The shard writer's first write fails as a full disk or a read-only mount would (simulated:
    the tests run as root, for whom permissions do not stop writes): one line, and no temporary
    file is left behind."""
    import tarfile

    def fail(*args, **kwargs):
        raise OSError(code, "simulated", str(tmp_path / "out"))

    monkeypatch.setattr(tarfile.TarFile, "addfile", fail)
    err = one_line_error(capsys, [*GENERATE, "--captions", str(captions), "--out", str(tmp_path / "out")])
    assert advice in err and str(tmp_path / "out") in err
    leftovers = [p.name for p in (tmp_path / "out").iterdir() if "tmp" in p.name]
    assert leftovers == [], leftovers


def test_farm_variables_that_are_not_numbers(tmp_path, captions, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "abc")
    err = one_line_error(capsys, [*GENERATE, "--captions", str(captions), "--out", str(tmp_path / "out")])
    assert "RANK='abc'" in err
    monkeypatch.delenv("WORLD_SIZE")
    err = one_line_error(capsys, [*TRAIN, "--data", str(tmp_path), "--out", str(tmp_path / "run")])
    assert "RANK='abc'" in err
    assert not (tmp_path / "run").exists()


def test_jsonl_names_the_bad_line(tmp_path, capsys):
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps({"caption": c}) + "\n" for c in ["a", "b", "c"]) + '{"caption": "d",,}\n')
    err = one_line_error(capsys, [*GENERATE, "--captions", str(path), "--out", str(tmp_path / "out")])
    assert f"{path}, line 4" in err


@pytest.mark.parametrize(
    "config, sets, message",
    [
        ("steps: [1, 2\n", [], "is not valid YAML"),
        ("- steps: 3\n", [], "holds a list, not a mapping"),
        (None, ["steps=abc"], "setting steps must be int, got 'abc'"),
        (None, ["model_kwargs={depth: 2"], "is not valid YAML"),
        (None, ["betas=[0.9]"], "setting betas must be tuple[float, float]"),
        (None, ["stepz=3"], "unknown setting(s) ['stepz']"),
    ],
)
def test_train_settings(tmp_path, capsys, config, sets, message):
    argv = [*TRAIN, "--data", str(tmp_path), "--out", str(tmp_path / "run")]
    if config is not None:
        (tmp_path / "my.yaml").write_text(config)
        argv += ["--config", str(tmp_path / "my.yaml")]
    for item in sets:
        argv += ["--set", item]
    err = one_line_error(capsys, argv)
    assert message in err
    if config is not None:
        assert str(tmp_path / "my.yaml") in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("content", [b"", b"not a checkpoint", pickle.dumps([1, 2, 3]), b"PK\x03\x04garbage"])
def test_damaged_checkpoint_on_resume_and_in_probe(tmp_path, capsys, content):
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(content)
    (run / "config.yaml").write_text("mine: 1\n")
    err = one_line_error(capsys, [*TRAIN, "--data", str(tmp_path), "--out", str(run), "--resume"])
    assert str(run / "checkpoint.pt") in err
    assert (run / "checkpoint.pt").read_bytes() == content and (run / "config.yaml").read_text() == "mine: 1\n"
    err = one_line_error(capsys, ["probe", "--checkpoint", str(run / "checkpoint.pt"), "--data", "shapes"])
    assert str(run / "checkpoint.pt") in err


def _features(rng, n, d=4, classes=3):
    return rng.normal(size=(n, d)).astype(np.float32), np.arange(n) % classes


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: a["x_train"].__setitem__((1, 2), np.nan), "1 train feature rows hold NaN or inf"),
        (lambda a: a["y_test"].__setitem__(0, -1), "negative labels"),
        (lambda a: a.update(x_test=a["x_test"][:, :3]), "same feature width"),
        (lambda a: a.update(y_train=a["y_train"] + 0.5), "not whole numbers"),
        (lambda a: a.update(x_train=a["x_train"][:0], y_train=a["y_train"][:0]), "at least one row"),
        (lambda a: a.pop("y_test"), "missing arrays ['y_test']"),
        (lambda a: a.update(y_train=a["y_train"] % 2), "test classes [2] have no training rows"),
    ],
)
def test_probe_refuses_bad_features(tmp_path, capsys, change, message):
    rng = np.random.default_rng(0)
    (x_train, y_train), (x_test, y_test) = _features(rng, 12), _features(rng, 6)
    arrays = dict(x_train=x_train, y_train=y_train.astype(np.float64), x_test=x_test, y_test=y_test)
    change(arrays)
    np.savez(tmp_path / "f.npz", **arrays)
    err = one_line_error(capsys, ["probe", "--data", str(tmp_path / "f.npz")])
    assert message in err and str(tmp_path / "f.npz") in err


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "is not a .npz file"),
        (b"garbage", "is not a .npz file"),
        (b"x_train,y_train\n0.5,1\n", "is not a .npz file"),  # a text file named .npz
        (b"PK\x05\x06" + bytes(18), "missing arrays"),  # an empty zip archive
    ],
)
def test_probe_refuses_an_empty_or_fake_npz(tmp_path, capsys, content, message):
    (tmp_path / "f.npz").write_bytes(content)
    err = one_line_error(capsys, ["probe", "--data", str(tmp_path / "f.npz")])
    assert str(tmp_path / "f.npz") in err and message in err


@pytest.mark.parametrize("damage", ["cut in half", "cut after its first header", "a member's bytes overwritten"])
def test_probe_refuses_a_truncated_or_damaged_npz(tmp_path, capsys, damage):
    rng = np.random.default_rng(0)
    (x_train, y_train), (x_test, y_test) = _features(rng, 12), _features(rng, 6)
    np.savez(tmp_path / "whole.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    data = bytearray((tmp_path / "whole.npz").read_bytes())
    if damage == "cut in half":
        data = data[: len(data) // 2]
    elif damage == "cut after its first header":
        data = data[:40]
    else:
        data[100:140] = bytes(40)  # inside x_train.npy: its CRC no longer matches
    (tmp_path / "f.npz").write_bytes(bytes(data))
    err = one_line_error(capsys, ["probe", "--data", str(tmp_path / "f.npz")])
    assert f"{tmp_path / 'f.npz'} cannot be read as a .npz" in err and "truncated or damaged" in err


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--knn-k", "0"], "knn_k (--knn-k) must be >= 1 (the neighbours that vote), got 0"),
        (["--epochs", "0", "--method", "sgd"], "epochs (--epochs) must be >= 1, got 0"),
        (["--sweep=-1,0"], "must be > 0, got [-1.0, 0.0]"),
        (["--batch-size", "0"], "batch_size (--batch-size) must be >= 1, got 0"),
        (["--device", "cuda"], "device 'cuda': no CUDA GPU is visible to torch here"),
        (["--device", "gpu"], "device 'gpu' is not a torch device"),
    ],
)
def test_probe_refuses_settings_that_cannot_work(tmp_path, capsys, monkeypatch, flags, message):
    """Each used to print accuracies (a kNN of 0 neighbours, 0 epochs, a negative learning rate)
    with exit code 0, or a traceback."""
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)  # the same on a machine with a GPU
    rng = np.random.default_rng(0)
    (x_train, y_train), (x_test, y_test) = _features(rng, 12), _features(rng, 6)
    np.savez(tmp_path / "f.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    err = one_line_error(capsys, ["probe", "--data", str(tmp_path / "f.npz"), *flags])
    assert message in err


def test_probe_shapes_per_class_below_one(capsys):
    err = one_line_error(capsys, ["probe", "--data", "shapes", "--per-class", "0"])
    assert "per_class (--per-class) must be >= 1 (shapes: training images per class), got 0" in err


@pytest.mark.parametrize("captions", ["-5", "0"])
def test_demo_captions_below_one(tmp_path, capsys, captions):
    err = one_line_error(capsys, ["demo", "--quick", "--out", str(tmp_path / "demo"), "--captions", captions])
    assert f"--captions must be >= 1, got {captions}" in err
    assert not (tmp_path / "demo").exists()


def test_train_online_device_without_a_gpu(tmp_path, capsys, monkeypatch):
    """The generator's own device, checked with the training device: before the run folder exists."""
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    argv = [*TRAIN, "--device", "cpu", "--data", "generator:shapes", "--out", str(tmp_path / "run")]
    err = one_line_error(capsys, [*argv, "--set", "online={device: cuda}"])
    assert "online device 'cuda': no CUDA GPU is visible to torch here" in err
    err = one_line_error(capsys, [*argv, "--set", "online={device: gpu0}"])
    assert "online device 'gpu0' is not a torch device" in err
    assert not (tmp_path / "run").exists()
