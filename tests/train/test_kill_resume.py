"""kill -9 at random points of `stablerep-fast train` (while it starts, between steps, in the
middle of writing a checkpoint), then `--resume` until it finishes: the final checkpoint equals
an uninterrupted run's bit for bit, and nothing the kills left behind survives.

The runs are `stablerep_fast.cli.main(argv)` in processes forked from one helper process that
imported the package but ran no torch operation (so forking is safe), which saves the import
time of a fresh interpreter per run; each run is killed with SIGKILL, as `kill -9` would.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import require_stage

require_stage("generate")  # the tests write shapes shards

from stablerep_fast.generate import GenerateConfig, generate, shapes  # noqa: E402
from stablerep_fast.train import CHECKPOINT, load_checkpoint  # noqa: E402

TRIALS = 20
STEPS = 8
MICRO = "{img_size: 16, patch_size: 8, depth: 1, embed_dim: 32, num_heads: 2}"

# Runs the reference and the trials; prints one line per trial ("trial" and a JSON record). Trial i
# kills one or two runs (seeded by i): as soon as the n-th checkpoint's temporary file appears
# (mid-write), or at a random time: during the start (before the reference's first checkpoint)
# or in the loop (between it and the reference's end); then it resumes until a run exits.
HELPER = r"""
import json, os, random, signal, sys, time
import stablerep_fast.train  # every import now: the forked runs start at once
from stablerep_fast.cli import main

base, root, trials, steps = json.loads(sys.argv[1])

def start(argv):
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = main(argv)
        finally:
            os._exit(code)
    return pid

def watch(pid, out, *, deadline=float("inf"), writes=0, first=None):
    # SIGKILL at the deadline or once ``writes`` checkpoint temporary files were seen, whichever
    # comes first; the exit code (-9 when killed). ``first``: a list to get the time (from now)
    # at which checkpoint.pt appeared.
    tick, seen = time.perf_counter(), set()
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if first is not None and not first and os.path.exists(os.path.join(out, "checkpoint.pt")):
            first.append(time.perf_counter() - tick)
        if writes and os.path.isdir(out):
            seen.update(n for n in os.listdir(out) if n.startswith("checkpoint.pt.") and n.endswith(".srf-tmp"))
        if time.perf_counter() >= deadline or (writes and len(seen) >= writes):
            os.kill(pid, signal.SIGKILL)
            return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])

first, tick = [], time.perf_counter()
reference = os.path.join(root, "reference")
assert watch(start(base + ["--out", reference]), reference, first=first) == 0
duration = time.perf_counter() - tick
for trial in range(trials):
    rng, out = random.Random(trial), os.path.join(root, f"trial{trial}")
    record = {"trial": trial, "kills": [], "left": []}
    for kill in range(rng.choice([1, 2])):
        how = rng.choice(["write", "start", "loop"])
        pid = start(base + ["--out", out] + (["--resume"] if kill else []))
        if how == "write":
            code = watch(pid, out, writes=rng.randint(1, steps))
        else:
            at = rng.uniform(0.0, first[0]) if how == "start" else rng.uniform(first[0], duration)
            code = watch(pid, out, deadline=time.perf_counter() + at)
        record["kills"].append({"how": how, "code": code})
        record["left"] += sorted(n for n in os.listdir(out) if n.endswith(".srf-tmp")) if os.path.isdir(out) else []
    record["final"] = watch(start(base + ["--out", out, "--resume"]), out)
    print("trial", json.dumps(record), flush=True)
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("kill")
    (root / "captions.txt").write_text("\n".join(shapes.make_captions(8)) + "\n")
    generate(GenerateConfig(captions=root / "captions.txt", out=root / "data", model="shapes", images_per_caption=2,
                            resolution=32, save_size=32, shard_size=4, progress=False))  # fmt: skip
    return root / "data"


def _bits(value):
    """A state's tensors as bytes, nested like the state (bit-for-bit comparison, NaN included)."""
    if isinstance(value, torch.Tensor):
        return (str(value.dtype), tuple(value.shape), value.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    if isinstance(value, dict):
        return {key: _bits(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_bits(item) for item in value]
    return value


def _log(path: Path) -> list[tuple]:
    """The log's records without the timing (steps, losses, learning rates)."""
    return [(r["step"], r["loss"], r["lr"]) for r in map(json.loads, path.read_text().splitlines())]


@pytest.mark.slow  # about 40 s on 2 CPU cores
def test_kill_9_anywhere_then_resume_equals_an_uninterrupted_run(data, tmp_path):
    base = ["train", "--preset", "tiny", "--data", str(data), "--device", "cpu", "--no-progress", "--image-size", "16",
            "--captions-per-batch", "4", "--images-per-caption", "2", "--steps", str(STEPS), "--warmup-steps", "2",
            "--checkpoint-every", "1", "--log-every", "1", "--set", f"model_kwargs={MICRO}", "--set", "head_hidden=32",
            "--set", "head_dim=16"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", HELPER, json.dumps([base, str(tmp_path), TRIALS, STEPS])],
                          capture_output=True, text=True, timeout=600, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    trials = [json.loads(line.split(" ", 1)[1]) for line in done.stdout.splitlines() if line.startswith("trial ")]
    assert len(trials) == TRIALS, done.stderr[-3000:]

    reference = load_checkpoint(tmp_path / "reference" / CHECKPOINT)
    assert reference["step"] == STEPS
    for trial in trials:
        out = tmp_path / f"trial{trial['trial']}"
        assert trial["final"] == 0, (trial, done.stderr[-3000:])
        state = load_checkpoint(out / CHECKPOINT)
        for key in ("step", "model", "optimizer", "scheduler", "loader"):
            assert _bits(state[key]) == _bits(reference[key]), (trial, key)
        assert _log(out / "log.jsonl") == _log(tmp_path / "reference" / "log.jsonl"), trial
        assert not [p.name for p in out.iterdir() if p.name.endswith(".srf-tmp")], trial
    kills = [kill for trial in trials for kill in trial["kills"]]
    assert sum(kill["code"] == -9 for kill in kills) >= TRIALS, "most runs must be killed, not finish first"
    assert any(trial["left"] for trial in trials), "no kill hit a checkpoint being written"
