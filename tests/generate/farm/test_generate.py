"""End to end: the CLI and ``generate`` over caption files, farms, crashes and bad input."""

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from stablerep_fast.cli import main
from stablerep_fast.generate import GenerateConfig, GenerateSummary, generate, initial_noise, noise_seed

TINY_SD = ["--images-per-caption", "2", "--steps", "2", "--resolution", "32", "--save-size", "16", "--format", "png"]


def _cli(*args: str, env: dict | None = None, **popen) -> subprocess.Popen:
    """Run ``stablerep-fast`` in a fresh process (one CPU thread: two may run side by side)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    command = [sys.executable, "-m", "stablerep_fast.cli", "generate", "--no-progress", *args]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def _folder_bytes(out: Path) -> dict[str, bytes]:
    """The shards and indexes of a folder (done markers hold timings, so they are left out)."""
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.suffix in (".tar", ".idx") or p.name == "dataset.json"}


def _images(out: Path) -> dict[str, np.ndarray]:
    images = {}
    for shard in sorted(out.glob("shard-*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".png"):
                    images[member.name] = np.asarray(Image.open(io.BytesIO(tar.extractfile(member).read())))
    return images


def test_each_image_regenerates_from_its_seed_whatever_the_batch(tiny_sd, tiny_sd_dir, captions_file, tmp_path):
    captions = captions_file(5)
    common = dict(captions=captions, model=str(tiny_sd_dir), images_per_caption=2, steps=2, resolution=32,
                  save_size=16, image_format="png", shard_size=3, seed=4, progress=False)  # fmt: skip
    summary = generate(GenerateConfig(out=tmp_path / "b3", batch_size=3, **common))
    assert (summary.shards_written, summary.captions, summary.images) == (2, 5, 10)
    generate(GenerateConfig(out=tmp_path / "b1", batch_size=1, **common))
    by3, by1 = _images(tmp_path / "b3"), _images(tmp_path / "b1")
    assert sorted(by3) == sorted(by1) == [f"{i:09d}.{k}.png" for i in range(5) for k in range(2)]
    for name in by3:
        assert np.abs(by3[name].astype(int) - by1[name]).max() <= 1, name

    # Caption 3, image 1, straight from its seed.
    noise = torch.randn(tiny_sd.latent_shape(32), generator=torch.Generator().manual_seed(noise_seed(4, 3, 1)))
    text = captions.read_text().splitlines()[3]
    direct = tiny_sd([text], noise[None, None], resolution=32, output_size=16, num_inference_steps=2).images[0, 0]
    assert np.abs(by3["000000003.1.png"].astype(int) - direct).max() <= 1
    with tarfile.open(tmp_path / "b3" / "shard-000001.tar") as tar:
        meta = json.loads(tar.extractfile("000000003.json").read())
    assert meta["caption"] == text and meta["caption_index"] == 3 and meta["seeds"][1] == noise_seed(4, 3, 1)
    assert (meta["guidance"], meta["steps"], meta["backend"], meta["model"]) == (2.0, 2, "eager", str(tiny_sd_dir))


def test_latent_neighbor_views_in_the_shards(captions_file, tmp_path):
    config = GenerateConfig(captions=captions_file(2), out=tmp_path / "o", images_per_caption=3, resolution=32,
                            save_size=32, image_format="png", views="latent-neighbors", latent_std=0.2, progress=False)  # fmt: skip
    generate(config)
    from stablerep_fast.generate import shapes

    with tarfile.open(tmp_path / "o" / "shard-000000.tar") as tar:
        meta = json.loads(tar.extractfile("000000001.json").read())
        image = np.asarray(Image.open(io.BytesIO(tar.extractfile("000000001.2.png").read())))
    noise = initial_noise(0, [1], 3, (shapes.LATENT_DIM,), views="latent-neighbors", latent_std=0.2)
    expected = shapes.ShapesPipeline()([meta["caption"]], noise, resolution=32, output_size=32).images[0, 2]
    np.testing.assert_array_equal(image, expected)
    assert meta["views"] == "latent-neighbors" and meta["latent_std"] == 0.2 and meta["anchor_seed"] == noise_seed(0, 1, -1)


def test_two_static_ranks_into_one_folder_equal_one_process(captions_file, tmp_path):
    captions = captions_file(23)
    args = ["--captions", str(captions), "--images-per-caption", "3", "--resolution", "64", "--save-size", "32", "--shard-size", "4"]
    assert main(["generate", *args, "--out", str(tmp_path / "one"), "--assign", "static", "--no-progress"]) == 0
    workers = [_cli(*args, "--assign", "static", "--out", str(tmp_path / "farm"), env={"WORLD_SIZE": "2", "RANK": str(r)})
               for r in (0, 1)]
    for worker in workers:
        _, stderr = worker.communicate(timeout=120)
        assert worker.returncode == 0, stderr
    assert _folder_bytes(tmp_path / "farm") == _folder_bytes(tmp_path / "one")
    ranks = {json.loads(p.read_text())["rank"] for p in (tmp_path / "farm").glob("*.done.json")}
    assert ranks == {0, 1}
    assert len(list((tmp_path / "farm").glob("shard-*.tar"))) == 6


def test_kill_9_then_resume_equals_an_uninterrupted_run(tiny_sd_dir, captions_file, tmp_path):
    args = ["--captions", str(captions_file(16)), "--model", str(tiny_sd_dir), *TINY_SD, "--shard-size", "1"]
    reference = _cli(*args, "--out", str(tmp_path / "whole"))
    crashed = _cli(*args, "--out", str(tmp_path / "crashed"))
    deadline = time.monotonic() + 120
    while len(list((tmp_path / "crashed").glob("*.done.json"))) < 2 and crashed.poll() is None:
        assert time.monotonic() < deadline, "no shard finished in time"
        time.sleep(0.005)
    crashed.send_signal(signal.SIGKILL)
    crashed.wait()
    done_at_kill = len(list((tmp_path / "crashed").glob("*.done.json")))
    assert crashed.returncode == -signal.SIGKILL and done_at_kill < 16, "the run ended before it could be killed"

    resumed = _cli(*args, "--out", str(tmp_path / "crashed"))
    stdout, stderr = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, stderr
    assert f"{done_at_kill} shards already done" in stdout
    _, stderr = reference.communicate(timeout=120)
    assert reference.returncode == 0, stderr
    assert not list((tmp_path / "crashed").glob("*.tmp-*"))
    assert _folder_bytes(tmp_path / "crashed") == _folder_bytes(tmp_path / "whole")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--captions", "{missing}"], "cannot read captions file"),
        (["--captions", "{empty}"], "holds no caption"),
        (["--model", "{tmp}"], "no model_index.json"),
        (["--model", "{tmp}/nothing"], "not 'shapes', a diffusers folder"),
        (["--images-per-caption", "0"], "images per caption must be >= 1"),
        (["--resolution", "100"], "resolution must be a positive multiple of 8"),
        (["--save-size", "128", "--resolution", "64"], "save size must be in"),
        (["--rank", "2", "--world-size", "2"], "rank must be in [0, world size=2)"),
        (["--backend", "tensorrt"], "the shapes generator has no 'tensorrt' backend"),
        (["--images-per-caption", "4"], "different configuration (images_per_caption: 2 there, 4 now)"),
        (["--device", "cuda"] if not torch.cuda.is_available() else ["--device", "cuda:99"], "cuda"),
    ],
)
def test_bad_input_one_line_exit_2(args, message, captions_file, tmp_path, capsys):
    captions = captions_file(3)
    (tmp_path / "empty.txt").write_text("\n\n")
    base = ["generate", "--captions", str(captions), "--images-per-caption", "2", "--resolution", "64", "--save-size", "32"]
    assert main([*base, "--out", str(tmp_path / "out"), "--no-progress"]) == 0  # a folder with a configuration
    capsys.readouterr()
    fill = dict(missing=tmp_path / "missing.txt", empty=tmp_path / "empty.txt", tmp=tmp_path)
    args = [a.format(**fill) for a in args]
    assert main([*base, *args, "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    stderr = capsys.readouterr().err.strip()
    assert len(stderr.splitlines()) == 1 and stderr.startswith("error: ") and message in stderr, stderr


def test_bad_input_from_the_command_line_has_no_traceback(tmp_path):
    process = _cli("--captions", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "out"))
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 2
    assert stderr.strip().startswith("error: cannot read captions file") and "Traceback" not in stderr


def test_summary_for_people_is_its_notes_then_one_line():
    run = dict(out="out", rank=1, world_size=4, model="shapes", backend="eager", shards_written=3, shards_skipped=2,
               captions=30, images=60, seconds=2.0, duplicates=0)  # fmt: skip
    line = "rank 1/4: 60 images of 30 captions in 3 shards, 2.0 s (30.00 images/s, shapes, backend eager); 2 shards already done -> out"
    assert GenerateSummary(**run).format("c.txt") == line
    assert GenerateSummary(**{**run, "duplicates": 2}, blanks=1, lost=1).format("c.txt").splitlines() == [
        "note: 2 duplicate captions (kept, each with its own index)",
        "note: 1 blank or null captions in c.txt (skipped)",
        "note: 0 shards taken over from expired claims, 1 lost to a takeover",
        line,
    ]
