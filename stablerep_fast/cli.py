"""``stablerep-fast``: the only place that parses command-line arguments.

Subcommands are added by the stages that implement them; today: ``bench``.
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stablerep-fast", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_bench(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``stablerep-fast`` console script."""
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
