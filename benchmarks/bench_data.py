"""Loader throughput: images/s decoding 256 px JPEGs into augmented 224 crops, DALI vs torch.

Generates a shapes dataset (256 px JPEGs, K = 10) once into --data, then times whole epochs of
``build_loader`` (StableRep augmentations, n x m = 16 x 6 per batch) for each backend and worker
count, with the shared timing harness. On a CPU-only machine only the CPU variants run; the
GPU path ("mixed" nvJPEG decoding, GPU augmentations) needs ``--device cuda``. The target is
twice what a ViT-B/16 training step consumes on the same GPU (about 1-3k images/s on an H100).

    python benchmarks/bench_data.py --device cpu --workers 1 2 4 8 16
"""

import argparse
import json
from pathlib import Path

import torch

from stablerep_fast.bench.timing import time_fn
from stablerep_fast.data import available_backends, build_loader
from stablerep_fast.generate import GenerateConfig, generate, shapes


def make_data(folder: Path, captions: int) -> Path:
    captions_file = folder.with_suffix(".txt")
    folder.parent.mkdir(parents=True, exist_ok=True)
    captions_file.write_text("\n".join(shapes.make_captions(captions)) + "\n")
    config = GenerateConfig(
        captions=captions_file, out=folder, model="shapes", resolution=256, save_size=256, progress=False
    )
    generate(config)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("/tmp/stablerep_fast_bench_data/shapes256"))
    parser.add_argument("--captions", type=int, default=128)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backends", nargs="+", default=available_backends())
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2, 4, 8, 16])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the records here")
    args = parser.parse_args()

    data = make_data(args.data, args.captions)
    device = torch.device(args.device)
    records = []
    for backend in args.backends:
        for workers in args.workers:
            loader = build_loader(data, 16, 6, backend=backend, device=device, num_workers=workers)
            images = len(loader) * 16 * 6

            def epoch():
                for batch, _ in loader:
                    pass
                return batch

            timing = time_fn(epoch, device, warmup=1, repeats=args.repeats)
            record = dict(
                suite="data",
                backend=backend,
                device=device.type,
                workers=workers,
                resolution="256->224",
                batch="16x6",
                ms=timing.median_ms / len(loader),  # per batch
                throughput=images / (timing.median_ms / 1000),  # images/s
                versions=dict(torch=torch.__version__),
            )
            records.append(record)
            print(f"{backend:5s} {device.type:4s} workers={workers:2d}  {record['throughput']:8.0f} images/s")
    if args.json:
        args.json.write_text(json.dumps(records, indent=1))


if __name__ == "__main__":
    main()
