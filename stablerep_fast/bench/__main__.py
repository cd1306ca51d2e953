"""``python -m stablerep_fast.bench``: the bench's command line (``stablerep-fast bench`` is the same).

The flags become the arguments of ``run_bench`` (run.py) or, with --validate, of ``validate``
(validate.py). ``stablerep-fast`` adds them as its ``bench`` subcommand (``add_arguments``,
``run``); a script that times one suite parses them without --suite and --validate and calls
``run_bench`` itself (``benchmarks/bench_*.py``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from stablerep_fast._command import csv_list, run_command


def family_steps(text: str) -> tuple[str, int]:
    """"sd-turbo:4" -> ("sd-turbo", 4)."""
    family, _, steps = text.partition(":")
    return family, int(steps)


def stage_budgets(text: str) -> dict[str, float]:
    """An argparse type: "loss=120,tests=150" -> {"loss": 120.0, "tests": 150.0} (validate's
    stages, positive seconds)."""
    from stablerep_fast.bench.validate import check_budgets

    budgets = {}
    for item in filter(None, text.split(",")):
        stage, sep, seconds = item.partition("=")
        try:
            budgets[stage.strip()] = float(seconds)
        except ValueError:
            sep = ""
        if not sep:
            raise argparse.ArgumentTypeError(f"expected STAGE=SECONDS,..., got {item!r}")
    try:
        return check_budgets(budgets)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def add_arguments(p: argparse.ArgumentParser, *, suite_flags: bool = True) -> None:
    """The bench's flags on ``p``; ``suite_flags=False`` leaves out --suite and --validate."""
    if suite_flags:
        p.add_argument("--suite", type=csv_list(str), default=None,
                       help="comma list of loss,generate,data,train (default: every suite that can run here)")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when available")
    p.add_argument("--quick", action="store_true", help="small sweeps: a few minutes on a 2-core CPU (loss still at N = 8192)")
    if suite_flags:
        p.add_argument("--validate", action="store_true",
                       help="check this machine in one go: extension build, gpu tests, every suite at fixed sizes within "
                            "time budgets (9 minutes in all on a GPU; small sizes on CPU); JSON, JSONL of records as "
                            "they come, markdown table")  # fmt: skip
        p.add_argument("--budget", type=stage_budgets, default=None, metavar="STAGE=SECONDS,...",
                       help="--validate: seconds for these stages instead of their defaults, e.g. loss=120,tests=150 "
                            "(stages: build, tests, loss, generate, data, train)")  # fmt: skip
    p.add_argument("--json", type=Path, default=None,
                   help="write the records (a JSON list) to this file (--validate: default validate-DEVICE.json, and .md beside it)")  # fmt: skip
    p.add_argument("--plot", type=Path, default=None, metavar="DIR", help="write PNG charts here (needs matplotlib)")
    p.add_argument("--repeats", type=int, default=None, help="timed repetitions per case (every suite)")
    p.add_argument("--sizes", type=csv_list(int), default=None, help="loss: N values")
    p.add_argument("--dims", type=csv_list(int), default=None, help="loss: D values")
    p.add_argument("--dtypes", type=csv_list(str), default=None, help="loss: dtypes, e.g. float32,bfloat16")
    p.add_argument("--backends", type=csv_list(str), default=None, help="loss: backends (default: all available)")
    p.add_argument("--generate-backends", type=csv_list(str), default=None,
                   help="generate: eager,compile,tensorrt,shapes (default: all that run here; compile on CPU only by name)")
    p.add_argument("--generate-families", type=csv_list(family_steps), default=None, metavar="FAMILY:STEPS,...",
                   help="generate: few-step families timed next to SD 1.5, e.g. sd-turbo:1,sd-turbo:4 (default on GPU)")  # fmt: skip
    p.add_argument("--sd-model", default=None,
                   help="generate: a diffusers folder or checkpoint (default: random weights, SD 1.5 layout on GPU, tiny on CPU)")
    p.add_argument("--loaders", type=csv_list(str), default=None, help="data: loader backends, dali,torch (default: installed ones)")
    p.add_argument("--workers", type=csv_list(int), default=None, help="data: worker counts, e.g. 1,2,4")


def bench_options(args: argparse.Namespace) -> dict:
    """``run_bench``'s keyword arguments, all but the suites, from the parsed flags."""
    overrides = {
        "loss": dict(sizes=args.sizes, dims=args.dims, dtypes=args.dtypes, backends=args.backends),
        "generate": dict(backends=args.generate_backends, sd_model=args.sd_model, few_step=args.generate_families),
        "data": dict(backends=args.loaders, workers=args.workers),
    }
    return dict(device=args.device, quick=args.quick, repeats=args.repeats, overrides=overrides, json_path=args.json,
                plot_dir=args.plot)  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """The bench for parsed flags: ``validate`` (exit code 1 when a stage failed or ran over) or ``run_bench``."""
    from stablerep_fast.bench.run import resolve_device, run_bench
    from stablerep_fast.bench.validate import validate

    if args.validate:
        device = resolve_device(args.device)  # BenchError (a ValueError): one line
        records = validate(device, args.json or Path(f"validate-{device}.json"), budgets=args.budget)
        summary = [r for r in records if r["suite"] == "validate"]
        return 1 if any(r["status"] in ("failed", "timeout") for r in summary) else 0
    run_bench(args.suite, **bench_options(args))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m stablerep_fast.bench [flags]``; the exit code."""
    parser = argparse.ArgumentParser(prog="python -m stablerep_fast.bench",
                                     description="measure every stage against its baseline and physical floor")  # fmt: skip
    add_arguments(parser)
    parser.set_defaults(func=run)
    return run_command(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
