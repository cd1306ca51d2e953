"""Mistakes a new user makes with `stablerep-fast train`: one line on stderr naming what and
where, exit code 2, and no run folder written."""

import shutil

import pytest
import torch
from helpers import require_stage

require_stage("generate")  # the tests write shapes shards

from stablerep_fast.cli import main  # noqa: E402
from stablerep_fast.data import open_index  # noqa: E402
from stablerep_fast.errors import DataError  # noqa: E402
from stablerep_fast.generate import GenerateConfig, generate, shapes  # noqa: E402
from stablerep_fast.train import resolve_config  # noqa: E402
from stablerep_fast.train.config import parse_override  # noqa: E402

TRAIN = ["train", "--preset", "tiny", "--no-progress", "--steps", "2", "--warmup-steps", "1", "--captions-per-batch", "4",
         "--images-per-caption", "2", "--image-size", "16", "--device", "cpu"]  # fmt: skip


def one_line_error(capsys, argv: list[str]) -> str:
    """Run the CLI; assert exit 2 and a single ``error:`` line on stderr; return that line."""
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, f"exit {code}, stderr: {err}"
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err, err
    return err


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """Shapes data from one captions file: seed 0 with K=2, seed 0 with K=1, seed 1 with K=2."""
    root = tmp_path_factory.mktemp("data")
    (root / "captions.txt").write_text("\n".join(shapes.make_captions(8)) + "\n")
    for name, seed, k in (("a", 0, 2), ("a-k1", 0, 1), ("b", 1, 2)):
        generate(GenerateConfig(captions=root / "captions.txt", out=root / name, model="shapes", images_per_caption=k,
                                seed=seed, resolution=32, save_size=32, shard_size=4, progress=False))  # fmt: skip
    shutil.copytree(root / "a", root / "a-copy")
    return root


@pytest.mark.parametrize("text, value", [("1e-3", 1e-3), ("2.5E+2", 250.0), (".5e1", 5.0), ("-1e-4", -1e-4), ("3", 3)])
def test_set_reads_floats_in_exponent_form(text, value):
    name, parsed = parse_override(f"base_lr={text}")
    assert name == "base_lr" and parsed == value and type(parsed) is type(value)
    assert resolve_config("tiny", sets=[f"base_lr={text}"]).base_lr == value


def test_a_config_file_reads_floats_in_exponent_form(tmp_path):
    (tmp_path / "run.yaml").write_text("base_lr: 1e-3\nweight_decay: 5E-2\n")
    config = resolve_config("tiny", tmp_path / "run.yaml")
    assert (config.base_lr, config.weight_decay) == (1e-3, 5e-2)


@pytest.mark.parametrize(
    "args, env, message",
    [
        (["--set", "seed=-1"], {}, "seed must be in [0, 2**63), got -1"),
        ([], {"RANK": "0", "WORLD_SIZE": "0"}, "WORLD_SIZE=0, RANK=0"),
        ([], {"RANK": "2", "WORLD_SIZE": "2"}, "WORLD_SIZE=2, RANK=2"),
        (["--device", "nosuch"], {}, "device 'nosuch' is not a torch device"),
        (["--device", "cuda" if not torch.cuda.is_available() else f"cuda:{torch.cuda.device_count()}"], {}, "device 'cuda"),
    ],
)
def test_bad_settings_environment_and_devices(datasets, tmp_path, capsys, monkeypatch, args, env, message):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    err = one_line_error(capsys, [*TRAIN, "--data", str(datasets / "a"), "--out", str(tmp_path / "run"), *args])
    assert message in err
    assert not (tmp_path / "run").exists()


def test_out_holding_the_users_config_and_log(datasets, tmp_path, capsys, monkeypatch):
    """`--out .` in the user's own folder."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.yaml").write_text("mine: 1\n")
    (tmp_path / "log.jsonl").write_text("{}\n")
    err = one_line_error(capsys, [*TRAIN, "--data", str(datasets / "a"), "--out", "."])
    assert "--out . holds files `train` did not write (config.yaml, log.jsonl)" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "log.jsonl"]
    assert (tmp_path / "config.yaml").read_text() == "mine: 1\n"


@pytest.mark.parametrize("second", ["a", "a-copy", "a-k1"])
def test_data_pooling_a_folder_with_the_same_images_is_refused(datasets, tmp_path, capsys, second):
    """The folder twice, its copy, or the same seed generated with another K (image k of a caption
    is the same whatever K: checked below on the bytes)."""
    data = "{" + ",".join([str(datasets / "a"), str(datasets / second)]) + "}"
    err = one_line_error(capsys, [*TRAIN, "--data", data, "--out", str(tmp_path / "run")])
    assert str(datasets / "a") in err and ("given twice" in err if second == "a" else str(datasets / second) in err)
    assert not (tmp_path / "run").exists()


def test_same_seed_gives_the_same_first_images_whatever_k(datasets):
    k2, k1 = open_index(datasets / "a"), open_index(datasets / "a-k1")
    assert [c.images[0].read() for c in k2.captions] == [c.images[0].read() for c in k1.captions]
    assert [c.images[1].read() for c in k2.captions] != [c.images[0].read() for c in k1.captions]


def test_folders_of_other_seeds_pool_and_copies_are_refused(datasets):
    pooled = open_index([datasets / "a", datasets / "b"])
    assert pooled.images_per_caption() == [4] * 8
    with pytest.raises(DataError, match="hold the same images"):
        open_index([datasets / "a", datasets / "a-copy"])
