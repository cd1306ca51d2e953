"""How much shape can an encoder learn in the demo's budget, with labels? A ceiling for the demo.

Supervised cross-entropy on the shapes generator's shape label (8 classes), fresh images every
step (no image seen twice, so no overfitting), at the ``cpu`` recipe's image size, images per
step, optimizer and warm-up + cosine schedule; accuracy on 800 held-out images at a few steps.
If an encoder does not learn shape here, neither self-supervised method of the demo can be
expected to. Prints one JSON line per encoder and a markdown table for benchmarks/RESULTS.md:

    python benchmarks/shape_learnability.py                      # the recipe's ViT
    python benchmarks/shape_learnability.py --models cpu,resnet10t,regnetx_002 --steps 300
"""

import argparse
import json
import time
from dataclasses import replace

import torch

from stablerep_fast.data.torch_loader import normalize
from stablerep_fast.eval.probe_sets import make_probe_set
from stablerep_fast.generate import shapes
from stablerep_fast.train import preset
from stablerep_fast.train.model import build_backbone
from stablerep_fast.train.optim import build_optimizer, build_scheduler


def labelled_shapes(per_class: int, seed: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``per_class`` normalised images of each shape (every other attribute drawn at random) and their shape ids."""
    probe_set = make_probe_set(per_class, label="shape", seed=seed, resolution=size)
    images = torch.from_numpy(probe_set.images).permute(0, 3, 1, 2)  # uint8 [N, 3, S, S]
    return normalize(images, torch.device("cpu")), torch.from_numpy(probe_set.labels)


def learn_shape(model: str, steps: int, points: int, seed: int) -> dict:
    """Train ``model`` ("cpu": the recipe's encoder; else a timm name at the recipe's settings) on shape labels."""
    config = preset("cpu", steps=steps, warmup_steps=max(1, steps // 10))
    if model != "cpu":
        config = replace(config, model=model, model_kwargs={})
    classes = len(shapes.SHAPES)
    torch.manual_seed(seed)
    backbone = build_backbone(config)
    classifier = torch.nn.Sequential(backbone, torch.nn.Linear(backbone.num_features, classes))
    optimizer = build_optimizer(classifier, config)
    scheduler = build_scheduler(optimizer, config)
    test_x, test_y = labelled_shapes(100, seed=10**6 + seed, size=config.image_size)  # apart from training's seeds
    curve, train_s = [], 0.0
    for step in range(1, steps + 1):
        x, y = labelled_shapes(config.batch_images // classes, seed=seed * steps + step, size=config.image_size)
        tick = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(classifier(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        train_s += time.perf_counter() - tick
        if step % max(1, steps // points) == 0 or step == steps:
            classifier.eval()
            with torch.no_grad():
                accuracy = (classifier(test_x).argmax(1) == test_y).float().mean().item()
            classifier.train()
            curve.append((step, round(accuracy, 3), round(loss.item(), 3)))
    return {"model": config.model if model != "cpu" else "cpu recipe", "steps": steps, "lr": config.lr,
            "s_per_step": round(train_s / steps, 3), "curve": curve}  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="cpu", help="comma-separated: cpu (the recipe's encoder) or timm names")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--points", type=int, default=3, help="evaluations along training")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.models.split(","):
        rows.append(learn_shape(name, args.steps, args.points, args.seed))
        print(json.dumps(rows[-1]), flush=True)
    print("\n| encoder | s/step | " + " | ".join(f"step {s}" for s, _, _ in rows[0]["curve"]) + " |")
    print("|---|---|" + "---|" * len(rows[0]["curve"]))
    for row in rows:
        print(f"| {row['model']} | {row['s_per_step']} | " + " | ".join(f"{a:.3f} (loss {l:.2f})" for _, a, l in row["curve"]) + " |")
