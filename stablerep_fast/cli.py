"""``stablerep-fast``: the only place that parses command-line arguments.

Subcommands are added by the stages that implement them; today: ``bench``, ``generate``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

# Default loss-suite sizes: (quick, full) per device type. Quick keeps N = 8192, the recipe's
# batch, and stays within a few minutes on a 2-core CPU.
LOSS_SIZES = {
    ("cpu", True): [1024, 8192],
    ("cpu", False): [1024, 2048, 4096, 8192],
    ("cuda", True): [1024, 8192],
    ("cuda", False): [1024, 4096, 8192, 16384, 65536],
}
LOSS_DIMS = {True: [256], False: [128, 256]}
LOSS_DTYPES = {"cpu": ["float32"], "cuda": ["bfloat16", "float32"]}


def _csv(kind):
    def parse(text: str) -> list:
        try:
            return [kind(item) for item in text.split(",") if item]
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list: {exc}") from exc

    return parse


def _add_bench(subparsers) -> None:
    p = subparsers.add_parser("bench", help="measure every stage against its baseline and physical floor")
    p.add_argument("--suite", type=_csv(str), default=None, help="comma list of suites (default: all that can run)")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when available")
    p.add_argument("--quick", action="store_true", help="small sweep, a few minutes on a 2-core CPU")
    p.add_argument("--json", type=Path, default=None, help="write the records to this file")
    p.add_argument("--sizes", type=_csv(int), default=None, help="loss: N values")
    p.add_argument("--dims", type=_csv(int), default=None, help="loss: D values")
    p.add_argument("--dtypes", type=_csv(str), default=None, help="loss: dtypes, e.g. float32,bfloat16")
    p.add_argument("--backends", type=_csv(str), default=None, help="loss: backends (default: all available)")
    p.add_argument("--repeats", type=int, default=None, help="timed repetitions per case")
    p.set_defaults(func=_run_bench)


def _run_bench(args: argparse.Namespace) -> int:
    from stablerep_fast import bench

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    suites = args.suite or list(bench.SUITES)
    unknown = sorted(set(suites) - set(bench.SUITES))
    if unknown:
        print(f"error: unknown suite(s) {unknown}; available: {list(bench.SUITES)}", file=sys.stderr)
        return 2
    env = bench.environment(device)
    print("environment:", json.dumps(env))
    records: list[dict] = []
    if "loss" in suites:
        loss_records = bench.run_loss_suite(
            sizes=args.sizes or LOSS_SIZES[(device, args.quick)],
            dims=args.dims or LOSS_DIMS[args.quick],
            dtypes=args.dtypes or LOSS_DTYPES[device],
            device=device,
            backends=args.backends,
            repeats=args.repeats or (3 if args.quick else 10),
        )
        columns = ["backend", "dtype", "N", "D", "ms", "p90_ms", "peak_mb", "speedup", "gflops", "floor_frac", "error"]
        print("\nloss: forward + backward of multipos_con_loss\n" + bench.format_table(loss_records, columns))
        records += loss_records
    for r in records:
        r["env"] = env
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(records, indent=1))
        print(f"\nwrote {len(records)} records to {args.json}")
    return 0


def _add_generate(subparsers) -> None:
    from stablerep_fast.generate.config import BACKEND_CHOICES, DTYPE_CHOICES, IMAGE_FORMATS, GenerateConfig
    from stablerep_fast.generate.seeds import VIEWS

    d = GenerateConfig(captions=Path(), out=Path())  # the defaults
    p = subparsers.add_parser("generate", help="captions -> K images per caption -> resumable WebDataset shards")
    p.add_argument("--captions", type=Path, required=True, help=".txt (one per line), .csv/.tsv/.parquet (a caption column) or .jsonl")
    p.add_argument("--caption-column", default=None, help="caption column of a table (default: caption/text/prompt/title)")
    p.add_argument("--model", default=d.model, help="'shapes' (procedural, no weights), a diffusers folder or a single-file checkpoint")
    p.add_argument("--out", type=Path, required=True, help="output folder (re-running resumes)")
    p.add_argument("--images-per-caption", type=int, default=d.images_per_caption, metavar="K")
    p.add_argument("--steps", type=int, default=d.steps, help="DDIM steps")
    p.add_argument("--guidance", type=float, default=d.guidance, help="classifier-free guidance scale")
    p.add_argument("--resolution", type=int, default=d.resolution, help="generated size in pixels")
    p.add_argument("--save-size", type=int, default=d.save_size, help="saved size in pixels")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="captions per call (x K images)")
    p.add_argument("--shard-size", type=int, default=d.shard_size, help="captions per shard")
    p.add_argument("--world-size", type=int, default=None, help="default: WORLD_SIZE or SLURM_NTASKS, else 1")
    p.add_argument("--rank", type=int, default=None, help="default: RANK or SLURM_PROCID, else 0")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--dtype", choices=DTYPE_CHOICES, default=d.dtype, help="auto: float16 on GPU, float32 on CPU")
    p.add_argument("--backend", choices=BACKEND_CHOICES, default=d.backend)
    p.add_argument("--format", dest="image_format", choices=IMAGE_FORMATS, default=d.image_format)
    p.add_argument("--quality", type=int, default=d.quality, help="JPEG quality")
    p.add_argument("--views", choices=VIEWS, default=d.views, help="latent-neighbors: K noises around one anchor")
    p.add_argument("--latent-std", type=float, default=d.latent_std, metavar="SIGMA")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=_run_generate)


def _run_generate(args: argparse.Namespace) -> int:
    from dataclasses import fields

    from stablerep_fast.generate import GenerateConfig, GenerateError, generate

    config = GenerateConfig(**{f.name: getattr(args, f.name) for f in fields(GenerateConfig)})
    try:
        summary = generate(config)
    except GenerateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if summary.duplicates:
        print(f"note: {summary.duplicates} duplicate captions (kept, each with its own index)")
    print(
        f"rank {summary.rank}/{summary.world_size}: {summary.images} images of {summary.captions} captions in "
        f"{summary.shards_written} shards, {summary.seconds:.1f} s ({summary.images_per_second:.2f} images/s, "
        f"{summary.model}, backend {summary.backend}); {summary.shards_skipped} shards already done -> {summary.out}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stablerep-fast", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_bench(subparsers)
    _add_generate(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``stablerep-fast`` console script."""
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
