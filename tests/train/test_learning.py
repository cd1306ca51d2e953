"""The trainer learns: with caption ids replaced by a probe attribute (supervised contrastive:
the images of a batch with the same colour are positives), a short CPU run of the demo's recipe
makes that attribute far better decodable on held-out images than a random-init encoder does.

The attribute is colour because it is learnable in seconds; shape is not learned by this recipe
in a test-sized run (benchmarks/RESULTS.md, demo section)."""

from dataclasses import replace

import numpy as np
import torch
from conftest import ListLoader
from helpers import require_stage

require_stage("eval", "generate")  # probe sets are drawn by the shapes generator

from stablerep_fast.data.augment import MEAN, STD  # noqa: E402
from stablerep_fast.eval import ProbeConfig, evaluate, load_probe_data  # noqa: E402
from stablerep_fast.eval.probe_sets import make_probe_set  # noqa: E402
from stablerep_fast.train import build_model, preset, train  # noqa: E402

LABEL, VIEWS, STEPS = "colour", 6, 40
SIZE = preset("cpu").image_size  # the demo recipe's


def _batches(steps: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per step, VIEWS images of each value of LABEL, view-major, labelled by that value."""
    pool = make_probe_set(40, label=LABEL, seed=1000 + seed, resolution=64, size=SIZE)
    pixels = torch.from_numpy(pool.images).permute(0, 3, 1, 2).float() / 255
    images = (pixels - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
    by_class = [np.flatnonzero(pool.labels == c) for c in range(len(pool.class_names))]
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(steps):
        rows = torch.from_numpy(np.stack([rng.choice(rows, VIEWS, replace=False) for rows in by_class], axis=1).reshape(-1))
        batches.append((images[rows], torch.from_numpy(pool.labels)[rows]))
    return batches


def test_supervised_contrastive_run_learns_the_attribute(tmp_path):
    classes = len(make_probe_set(1, label=LABEL, resolution=8).class_names)
    config = replace(preset("cpu"), captions_per_batch=classes, images_per_caption=VIEWS, steps=STEPS, warmup_steps=4,
                     base_lr=4e-3, checkpoint_every=STEPS, progress=False, out=str(tmp_path / "run"))  # fmt: skip
    torch.manual_seed(config.seed)
    random_init = build_model(config).backbone
    summary = train(config, ListLoader(_batches(STEPS)))
    trained = build_model(config)
    trained.load_state_dict(torch.load(summary.checkpoint, weights_only=False)["model"])
    probe = load_probe_data(f"shapes:{LABEL}", image_size=SIZE, per_class=40, seed=7)
    probe_config = ProbeConfig(sweep=(1e-4, 1e-2))
    before = evaluate(random_init, probe, probe_config, image_size=SIZE)
    after = evaluate(trained.backbone, probe, probe_config, image_size=SIZE)
    message = f"{LABEL}: random init probe {before['probe_acc']:.3f} knn {before['knn_acc']:.3f}, trained {after}"
    assert after["probe_acc"] > 0.65 and after["probe_acc"] > before["probe_acc"] + 0.15, message
    assert after["knn_acc"] > before["knn_acc"] + 0.2, message
