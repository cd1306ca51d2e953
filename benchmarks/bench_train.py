"""Training throughput: end-to-end ``train`` images/s vs the model's forward + backward alone.

Three measurements on one device, same model, batch and precision (bf16 autocast on GPU):
  model      forward + backward + AdamW step on one fixed in-memory batch, a trivial loss;
  +loss      the same with the multi-positive loss (the fused backend "auto" picks);
  train      ``stablerep_fast.train.train`` on generated shapes shards with the real loader
             (images/s of the last log window, after warm-up).
The issue's target: loss + data add under 10% to the model's step (train >= 0.9 x model).
GPU numbers (ViT-B/16 at 224, n x m = 64 x 6 per GPU) are not measured yet; on a CPU the
tiny preset runs.

    python benchmarks/bench_train.py                          # tiny preset on CPU
    python benchmarks/bench_train.py --preset vit_b16 --captions-per-batch 64   # on a GPU
"""

import argparse
import json
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

from stablerep_fast import multipos_con_loss
from stablerep_fast.bench.timing import time_fn
from stablerep_fast.generate import GenerateConfig, generate, shapes
from stablerep_fast.train import build_model, preset, train
from stablerep_fast.train.optim import build_optimizer


def make_data(folder: Path, captions: int, size: int) -> Path:
    if not (folder / "dataset.json").exists():
        folder.parent.mkdir(parents=True, exist_ok=True)
        captions_file = folder.with_suffix(".txt")
        captions_file.write_text("\n".join(shapes.make_captions(captions)) + "\n")
        generate(GenerateConfig(captions=captions_file, out=folder, model="shapes", resolution=max(64, size),
                                save_size=max(64, size), progress=False))  # fmt: skip
    return folder


def model_step_ms(config, device: torch.device, with_loss: bool, repeats: int) -> float:
    model = build_model(config).to(device).train()
    optimizer = build_optimizer(model, config)
    n, m = config.captions_per_batch, config.images_per_caption
    images = torch.randn(n * m, 3, config.image_size, config.image_size, device=device)
    labels = torch.arange(n, device=device).repeat(m)
    bf16 = device.type == "cuda"

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            feats = model(images, m)["feats"]
            loss = multipos_con_loss(feats, labels, config.temperature) if with_loss else feats.float().square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return time_fn(step, device, warmup=2, repeats=repeats).median_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="vit_b16" if torch.cuda.is_available() else "tiny")
    parser.add_argument("--captions-per-batch", type=int, default=None, help="n on this device (default: the preset's)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "stablerep_fast_bench_train" / "shapes")
    parser.add_argument("--captions", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=30, help="train steps (the last half is timed)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--num-workers", type=int, default=None)
    parser.add_argument("--json", type=Path, help="also write the record here")
    args = parser.parse_args()

    device = torch.device(args.device)
    config = preset(args.preset, device=args.device, num_workers=args.num_workers, progress=False)
    if args.captions_per_batch:
        config = replace(config, captions_per_batch=args.captions_per_batch)
    batch = config.batch_images
    model_ms = model_step_ms(config, device, False, args.repeats)
    loss_ms = model_step_ms(config, device, True, args.repeats)
    data = make_data(args.data, args.captions, config.image_size)
    with tempfile.TemporaryDirectory() as out:
        run = replace(config, data=str(data), out=out, steps=args.steps, warmup_steps=1,
                      log_every=args.steps // 2, checkpoint_every=args.steps)  # fmt: skip
        summary = train(run)
        last = json.loads((Path(out) / "log.jsonl").read_text().splitlines()[-1])
    record = dict(
        suite="train", device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        model=config.model, image_size=config.image_size, batch=batch, precision="bf16" if device.type == "cuda" else "fp32",
        model_images_per_s=batch / model_ms * 1e3, loss_images_per_s=batch / loss_ms * 1e3,
        train_images_per_s=last["images_per_s"], train_overall_images_per_s=summary.images_per_second,
    )  # fmt: skip
    record["overhead_frac"] = 1 - record["train_images_per_s"] / record["model_images_per_s"]
    print(json.dumps(record, indent=1))
    if args.json:
        args.json.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
