"""Data suite: images/s of ``build_loader`` per loader backend and worker count.

Shards come from the ``shapes`` generator (JPEGs at ``resolution`` px, K images per caption),
written into a temporary folder unless one is given. Each variant times whole epochs of
StableRep batches (n x m images, the paper's augmentations, ``image_size`` crops, delivered on
the device) with the shared harness; an epoch includes the loader's own start-up (workers,
DALI pipeline), as a training epoch does. On a CPU the DALI graph runs CPU-only; on a GPU it
decodes with nvJPEG ("mixed") and augments on the GPU. Target on a GPU (docs/method.md): stay ahead
of the 1-3k images/s one H100 trains on, so ``target_frac`` = images/s / 3000.

Each record: suite, backend, device, workers, captions_per_batch, images_per_caption, batch
(images per batch), resolution (of the JPEGs), image_size (crops), batches, ms (median per
batch), throughput (images/s), speedup (vs "torch" at the same worker count), target_frac.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from stablerep_fast.bench.report import missing_stage, set_speedup, skipped
from stablerep_fast.bench.timing import time_fn
from stablerep_fast.errors import first_line
from stablerep_fast.shards import is_dataset

TITLE = "data: images/s of build_loader (decode + StableRep augmentations + batch on the device)"
COLUMNS = ["backend", "workers", "batch", "resolution", "image_size", "batches", "ms", "throughput", "speedup",
           "target_frac", "error"]  # fmt: skip
GPU_TARGET_IMAGES_PER_S = 3000.0  # the top of what one H100 trains on (docs/method.md)


def defaults(device: str, quick: bool) -> dict:
    """What ``run_data_suite`` measures by default on ``device``."""
    if torch.device(device).type == "cuda":
        return dict(workers=[4, 8, 16], captions=256 if quick else 1024, captions_per_batch=64, repeats=3 if quick else 5)
    return dict(workers=[1, 2] if quick else [1, 2, 4], captions=32 if quick else 96, captions_per_batch=8,
                repeats=2 if quick else 3)  # fmt: skip


def unavailable() -> str | None:
    """Why the suite cannot run here (it writes shapes shards, then loads them), or None."""
    return missing_stage("data", "generate")


def make_shapes_shards(folder: Path, captions: int, resolution: int = 256, images_per_caption: int = 10) -> Path:
    """Generate ``captions`` shapes captions x K JPEGs into ``folder`` (kept if already complete)."""
    from stablerep_fast.generate import GenerateConfig, generate, shapes

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    captions_file = folder / "captions.txt"
    captions_file.write_text("\n".join(shapes.make_captions(captions)) + "\n")
    config = GenerateConfig(captions=captions_file, out=folder / "shards", model="shapes", images_per_caption=images_per_caption,
                            resolution=resolution, save_size=resolution, shard_size=max(16, captions // 4), device="cpu",
                            progress=False)  # fmt: skip
    generate(config)  # resumable: completed shards are skipped
    return folder / "shards"


def loader_backends(device: torch.device, names: list[str] | None) -> tuple[list[str], dict[str, str]]:
    """Loader backends to time and those left out with the reason."""
    from stablerep_fast.data import BACKENDS, available_backends

    available = available_backends()
    run, skip = [], {}
    for name in BACKENDS if names is None else names:
        if name not in BACKENDS:
            skip[name] = f"unknown loader backend; choose from {list(BACKENDS)}"
        elif name not in available:
            skip[name] = "NVIDIA DALI is not installed (pip install 'stablerep_fast[dali]')"
        else:
            run.append(name)
    if device.type == "cpu" and "dali" in run:
        skip["dali (GPU decode)"] = "nvJPEG decoding and GPU augmentations need --device cuda; timed here: DALI's CPU graph"
    return run, skip


def _measure(shards: Path, backend: str, workers: int, device: torch.device, *, captions_per_batch: int,
             images_per_caption: int, image_size: int, repeats: int) -> dict:  # fmt: skip
    from stablerep_fast.data import build_loader

    loader = build_loader(shards, captions_per_batch, images_per_caption, image_size=image_size, backend=backend,
                          device=device, num_workers=workers)  # fmt: skip
    batches = len(loader)
    if batches == 0:
        raise ValueError(f"no full batch of {captions_per_batch} captions in {shards}")

    def epoch():
        for images, _ in loader:
            pass
        return images

    timing = time_fn(epoch, device, warmup=1, repeats=repeats)
    images = batches * captions_per_batch * images_per_caption
    return dict(batches=batches, ms=timing.median_ms / batches, throughput=images / (timing.median_ms * 1e-3))


def run_data_suite(
    device: str,
    *,
    backends: list[str] | None = None,
    workers: list[int] = (1, 2),
    captions: int = 32,
    captions_per_batch: int = 8,
    images_per_caption: int = 6,
    resolution: int = 256,
    image_size: int = 224,
    shards: str | Path | None = None,
    repeats: int = 2,
) -> list[dict]:
    """Every (loader backend, worker count) on shapes shards (generated into a temporary folder
    unless ``shards`` names a folder, which is generated into when it holds none)."""
    dev = torch.device(device)
    run, skip = loader_backends(dev, backends)
    base = dict(suite="data", device=dev.type, captions_per_batch=captions_per_batch, images_per_caption=images_per_caption,
                batch=captions_per_batch * images_per_caption, resolution=resolution, image_size=image_size)  # fmt: skip
    records = [{**base, **skipped("data", name, dev.type, reason)} for name, reason in skip.items()]
    if not run:
        return records
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(shards) if shards is not None else Path(tmp)
        if is_dataset(folder):
            data = folder
        else:
            data = make_shapes_shards(folder, captions, resolution, images_per_caption=max(10, images_per_caption))
        measured = []
        for backend in run:
            for n in workers:
                record = {**base, "backend": backend, "workers": n, "target_frac": None}
                try:
                    record.update(_measure(data, backend, n, dev, captions_per_batch=captions_per_batch,
                                           images_per_caption=images_per_caption, image_size=image_size, repeats=repeats))  # fmt: skip
                except Exception as exc:  # noqa: BLE001 - one loader's failure is its record's
                    record.update(ms=None, error=first_line(exc))
                if dev.type == "cuda" and record.get("throughput"):
                    record["target_frac"] = record["throughput"] / GPU_TARGET_IMAGES_PER_S
                measured.append(record)
    set_speedup(measured, "torch", same=("workers",))
    return measured + records
