"""The plugin path end to end, as a user runs it: a generator class of their own, named by
import path on the command line (a module outside the package, found through PYTHONPATH),
generates shards; the tiny preset trains on them; the checkpoint is probed. All on CPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

from helpers import require_stage

require_stage("generate", "train")  # generate, then train and probe on what it wrote

import plugin_generator  # noqa: E402

from stablerep_fast.cli import main  # noqa: E402
from stablerep_fast.data import open_index  # noqa: E402
from stablerep_fast.generate import shapes  # noqa: E402


def test_generate_with_a_user_generator_then_train_and_probe(tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "my_generators.py").write_text(Path(plugin_generator.__file__).read_text())
    captions = tmp_path / "captions.txt"
    captions.write_text("\n".join(shapes.make_captions(32, seed=1)) + "\n")
    data = tmp_path / "data"

    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(plugins), *filter(None, [os.environ.get("PYTHONPATH")])])}  # fmt: skip
    command = [sys.executable, "-m", "stablerep_fast.cli", "generate", "--model", "my_generators:Blobs",
               "--captions", str(captions), "--out", str(data), "--images-per-caption", "4", "--resolution", "32",
               "--save-size", "32", "--shard-size", "16", "--no-progress"]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "128 images of 32 captions in 2 shards" in done.stdout and "blobs-v1, backend custom" in done.stdout
    index = open_index(data)
    assert len(index) == 32 and index.images_per_caption() == [4] * 32
    assert index.configs[0]["model"] == "blobs-v1" and index.captions[7].info()["model"] == "blobs-v1"

    run = tmp_path / "run"
    train = ["train", "--preset", "tiny", "--data", str(data), "--out", str(run), "--steps", "2", "--warmup-steps", "1", "--log-every", "1",
             "--captions-per-batch", "8", "--num-workers", "0", "--no-progress"]  # fmt: skip
    assert main(train) == 0
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2] and all(r["loss"] == r["loss"] for r in log)  # no NaN

    probe = ["probe", "--checkpoint", str(run / "checkpoint.pt"), "--data", "shapes:colour", "--per-class", "4",
             "--sweep", "0.001", "--json", str(tmp_path / "probe.json")]  # fmt: skip
    assert main(probe) == 0
    result = json.loads((tmp_path / "probe.json").read_text())
    assert 0.0 <= result["probe_acc"] <= 1.0 and 0.0 <= result["knn_acc"] <= 1.0
