"""Train suite: images/s of a training step end to end (data + model + loss + optimizer) vs the
model alone.

Three variants on one device, same model, batch (n captions x m images) and precision (bf16
autocast on GPU, fp32 on CPU), each an AdamW step timed with the shared harness:

  model        forward + backward on one fixed in-memory batch with a trivial loss: the
               ceiling the other two are held to;
  model+loss   the same with the multi-positive loss (``backend="auto"``, the fused one);
  end-to-end   batches from ``build_loader`` on shapes shards (generated into a temporary
               folder), then model + loss + step: what a training loop does per step;
  end-to-end-online  the same with every batch generated while training (``source="shapes"``,
               online generation at the shards' resolution, in the loader's worker processes).

The model is the training stage's (``stablerep_fast.train.build_model`` of a preset: "tiny"
on CPU, "vit_b16" at 224 px on GPU); the suite needs the ``train`` extra. The target: end-to-end
at least 0.9 x model (loss and data add under 10%).

Each record: suite, backend (the variant), device, dtype, model, image_size,
captions_per_batch, images_per_caption, batch (images per step), ms (median per step),
throughput (images/s), peak_mb (the in-memory variants, on GPU), speedup (model ms / ms: 1 means no
overhead) and overhead_frac (1 - speedup).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from stablerep_fast.bench.report import missing_stage, set_speedup, skipped
from stablerep_fast.bench.timing import peak_memory_mb, time_fn
from stablerep_fast.errors import first_line

TITLE = "train: images/s of a training step, end to end vs the model alone"
COLUMNS = ["backend", "model", "dtype", "image_size", "batch", "ms", "throughput", "peak_mb", "speedup",
           "overhead_frac", "error"]  # fmt: skip
VARIANTS = ("model", "model+loss", "end-to-end", "end-to-end-online")


def defaults(device: str, quick: bool) -> dict:
    """What ``run_train_suite`` measures by default on ``device``."""
    if torch.device(device).type == "cuda":
        return dict(preset="vit_b16", captions_per_batch=64, repeats=5 if quick else 20)
    return dict(preset="tiny", captions_per_batch=None, repeats=3 if quick else 10)


def unavailable() -> str | None:
    """Why the suite cannot run here, or None (end-to-end also needs the data and generate stages)."""
    return missing_stage("train")


def _next_batch(loader):
    """A function returning the next batch, starting a new epoch when one ends."""
    state = {"it": iter(loader)}

    def get():
        try:
            return next(state["it"])
        except StopIteration:
            state["it"] = iter(loader)
            return next(state["it"])

    return get


def run_train_suite(
    device: str,
    *,
    preset: str = "tiny",
    captions_per_batch: int | None = None,
    variants: list[str] | None = None,
    loader_backend: str = "auto",
    num_workers: int | None = None,
    repeats: int = 3,
    precision: str = "auto",
) -> list[dict]:
    """The variants (default: all three) of one training step; see the module docstring.
    ``precision``: "auto" (bf16 autocast on GPU, fp32 on CPU), "bf16" or "fp32" (as TrainConfig's)."""
    from stablerep_fast.ops import multipos_con_loss
    from stablerep_fast.train import build_model
    from stablerep_fast.train import preset as train_preset

    dev = torch.device(device)
    variants = list(VARIANTS if variants is None else variants)
    records = [skipped("train", v, dev.type, f"unknown variant; choose from {list(VARIANTS)}") for v in variants if v not in VARIANTS]
    variants = [v for v in variants if v in VARIANTS]
    no_loader = missing_stage("data", "generate")  # shapes shards (or shapes online) -> build_loader
    for variant in [v for v in variants if v.startswith("end-to-end")] if no_loader else []:
        records.append(skipped("train", variant, dev.type, no_loader))
        variants.remove(variant)
    torch.manual_seed(0)
    config = train_preset(preset)
    n = captions_per_batch or config.captions_per_batch
    m, size = config.images_per_caption, config.image_size
    model = build_model(config).to(dev).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.98), weight_decay=0.1)
    bf16 = precision == "bf16" or (precision == "auto" and dev.type == "cuda")
    base = dict(suite="train", device=dev.type, dtype="bfloat16" if bf16 else "float32", model=config.model,
                image_size=size, captions_per_batch=n, images_per_caption=m, batch=n * m)  # fmt: skip

    def step(images: torch.Tensor, labels: torch.Tensor, with_loss: bool) -> None:
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            feats = model(images, m)["feats"]
        if with_loss:
            loss = multipos_con_loss(feats.float(), labels, config.temperature)
        else:
            loss = feats.float().square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    images = torch.randn(n * m, 3, size, size, device=dev)
    labels = torch.arange(n, device=dev).repeat(m)  # view-major, as the loader yields them
    measured: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for variant in variants:
            record = {**base, "backend": variant, "peak_mb": None}
            measured.append(record)
            try:
                if variant.startswith("end-to-end"):
                    from stablerep_fast.bench.data import make_shapes_shards
                    from stablerep_fast.data import build_loader

                    resolution = max(64, size)
                    if variant == "end-to-end-online":  # shapes renders on the CPU: in the worker processes
                        loader = build_loader(None, n, m, image_size=size, device=dev, num_workers=num_workers,
                                              source="shapes", online={"resolution": resolution, "device": "cpu"})  # fmt: skip
                    else:
                        shards = make_shapes_shards(Path(tmp), 2 * n, resolution=resolution, images_per_caption=m + 2)
                        loader = build_loader(shards, n, m, image_size=size, backend=loader_backend, device=dev,
                                              num_workers=num_workers)  # fmt: skip
                    get = _next_batch(loader)
                    fn = lambda: step(*get(), with_loss=True)  # noqa: E731
                else:
                    with_loss = variant == "model+loss"
                    fn = lambda with_loss=with_loss: step(images, labels, with_loss)  # noqa: E731
                    if dev.type == "cuda":  # on a CPU a warm process reuses its heap: RSS growth says little
                        record["peak_mb"] = peak_memory_mb(fn, dev)
                timing = time_fn(fn, dev, warmup=2, repeats=repeats)
            except Exception as exc:  # noqa: BLE001 - one variant's failure is its record's
                record.update(ms=None, error=first_line(exc))
                continue
            record.update(ms=timing.median_ms, p90_ms=timing.p90_ms, throughput=n * m / (timing.median_ms * 1e-3))
    set_speedup(measured, "model")
    for r in measured:
        r["overhead_frac"] = None if r["speedup"] is None else 1 - r["speedup"]
    return measured + records
