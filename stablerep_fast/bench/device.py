"""``python -m stablerep_fast.bench.device``: how to validate a GPU machine that has no network.

The machine this is sized for (one H200; Python 3.12, torch 2.11 with CUDA 13.0, Triton 3.6,
timm, transformers, torchvision, pytest, pybind11, cmake, ninja and nvcc; nothing can be
downloaded there) lacks some stage libraries (``ABSENT``), and its setuptools may be too old
to build the extension from this checkout (pyproject.toml's ``license = "Apache-2.0"`` needs
setuptools >= 77). What validate needs is carried there as wheels (``CARRIED``); the rest is
left out (``LEFT_OUT``, with the reason): validate records what cannot run as skipped.

The command prints two lines:

1. here, on a machine with pip and network, in the checkout's root: ``pip download`` of the
   wheels into ``--wheels``;
2. there, in the checkout's root with the wheels folder copied beside it: one shell line that
   installs the wheels into a folder of their own (``--site``), puts it first on PYTHONPATH,
   checks what it installed (``--check``) and runs ``python -m stablerep_fast.bench
   --validate``, which builds the extension for that GPU's architecture first, writing
   validate-cuda.json, .jsonl (the records as they come), .md and .log into ``--out``.

Both are plain text: copy them, or take ``download_command`` / ``device_command`` from Python.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import shlex
import sys

from stablerep_fast._command import run_command
from stablerep_fast.bench.validate import check_budgets, setuptools_problem

# Import names of the stage libraries the GPU machine lacks.
ABSENT = ("diffusers", "kornia", "nvidia.dali", "tensorrt", "open_clip", "webdataset", "sklearn")
# The wheels to carry: distribution -> (version, why). `pip download` of these for CPython 3.12
# on x86-64 Linux (2026-12-04): 14.5 MB in all (diffusers 6.4, kornia_rs 5.3, kornia 1.9,
# setuptools 0.9), well under a 64 MiB transfer. Their other requirements are in the image.
CARRIED = {
    "diffusers": ("0.42.1", "the generate suite (SD 1.5 with random weights) and the generate stage's GPU tests; "
                            "the shapes shards the data and train suites read"),  # fmt: skip
    "kornia": ("0.9.0", "the memory loader (augmentations on the GPU) the data suite times"),
    "kornia_rs": ("0.2.0", "kornia's compiled half"),
    "setuptools": ("84.2.1", "builds the extension: the checkout's pyproject.toml needs setuptools >= 77"),
}
LEFT_OUT = {
    "nvidia-dali-cuda130": "hundreds of MB (CUDA inside); the data suite records DALI as skipped",
    "tensorrt": "over a GB with its CUDA libraries; the TensorRT backend and its tests are skipped",
    "open_clip_torch": "StableRep+'s text tower: no validate stage builds it",
    "webdataset": "one CPU test reads shards with it; no GPU test or suite does",
    "scikit-learn": "9.2 MB; only eval and the demo use it (the digit scans), no validate stage",
}
# What `pip download` needs to fetch wheels for the GPU machine's Python from another one.
PLATFORM = ["--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
            *(f"--platform={tag}" for tag in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"))]


def pins(carried: dict[str, tuple[str, str]] = CARRIED) -> list[str]:
    """["diffusers==0.42.1", ...]: the carried distributions at their versions."""
    return [f"{name}=={version}" for name, (version, _) in carried.items()]


def download_command(wheels: str = "wheels", carried: dict[str, tuple[str, str]] = CARRIED) -> str:
    """The ``pip download`` line that fetches the carried wheels into ``wheels``."""
    return shlex.join(["python3", "-m", "pip", "download", "--no-deps", *PLATFORM, "-d", wheels, *pins(carried)])


def device_command(
    wheels: str = "wheels",
    out: str = "validate-out",
    site: str = "/tmp/stablerep-site",
    *,
    device: str = "cuda",
    budgets: dict[str, float] | None = None,
    carried: dict[str, tuple[str, str]] = CARRIED,
    python: str = "python3",
) -> str:
    """The one shell line to run in the checkout's root on the GPU machine (bash): install the
    carried wheels from ``wheels`` into ``site``, put it first on PYTHONPATH, check them, run
    validate on ``device`` (``budgets``: seconds per stage, over the defaults), write the JSON,
    JSONL, markdown and log into ``out``; its exit status is validate's (2 when the check fails).
    ``python``: the interpreter there (the one that has torch)."""
    q = shlex.quote
    validate = [python, "-m", "stablerep_fast.bench", "--device", device, "--validate", "--json",
                f"{out}/validate-{device}.json"]  # fmt: skip
    if budgets:
        validate += ["--budget", ",".join(f"{stage}={seconds:g}" for stage, seconds in check_budgets(budgets).items())]
    install = [python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--find-links", wheels,
               "--target", site, *pins(carried)]  # fmt: skip
    check = [python, "-m", "stablerep_fast.bench.device", "--check", ",".join(pins(carried))]
    return (f"set -o pipefail; mkdir -p {q(out)} && {shlex.join(install)} && "
            f"export PYTHONPATH={q(site)}${{PYTHONPATH:+:$PYTHONPATH}} PYTHONUNBUFFERED=1 && "
            f"{{ {shlex.join(check)} && {shlex.join(validate)}; }} 2>&1 | tee {q(f'{out}/validate-{device}.log')}")


def check(wanted: list[str]) -> list[str]:
    """Lines saying where each wanted distribution ("name==version") is imported from; ValueError
    naming the first one that is missing or at another version, or a setuptools too old to
    build the extension."""
    lines = []
    for item in wanted:
        name, _, version = item.partition("==")
        try:
            found = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            raise ValueError(f"{name} is not installed: install the carried wheels first "
                             f"(python -m stablerep_fast.bench.device prints how)") from None  # fmt: skip
        if version and found.version != version:
            raise ValueError(f"{name} {found.version} ({found.locate_file('')}) is found before the carried {version}: "
                             "put the carried wheels' folder first on PYTHONPATH")  # fmt: skip
        lines.append(f"carried: {name} {found.version} from {found.locate_file('')}")
    problem = setuptools_problem()
    if problem:
        raise ValueError(f"{problem}: carry setuptools=={CARRIED['setuptools'][0]}")
    return lines


def recipe(wheels: str, out: str, site: str, budgets: dict[str, float] | None = None) -> str:
    """The text the command prints: what to carry and why, what is left out, and the two commands."""
    lines = ["# 1. Here (pip and network), in the checkout's root: the wheels to carry", download_command(wheels), ""]
    lines += [f"#   {name} {version}: {why}" for name, (version, why) in CARRIED.items()]
    lines += [f"#   left out: {name}: {why}" for name, why in LEFT_OUT.items()]
    lines += ["", f"# 2. There, in the checkout's root with {wheels}/ beside it (bash; about 9.5 minutes):",
              device_command(wheels, out, site, budgets=budgets), "",
              f"# It prints each stage as it ends and writes {out}/validate-cuda.json, .jsonl, .md and .log;",
              "# exit status 0 when every stage passed or was skipped, 1 when one failed or ran over its budget."]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Print the recipe, or with --check check the carried packages."""
    if args.check is not None:
        print("\n".join(check([item for item in args.check.split(",") if item])), flush=True)
    else:
        print(recipe(args.wheels, args.out, args.site, args.budget))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m stablerep_fast.bench.device [flags]``; the exit code."""
    from stablerep_fast.bench.__main__ import stage_budgets

    parser = argparse.ArgumentParser(prog="python -m stablerep_fast.bench.device",
                                     description="print how to validate a GPU machine without network")  # fmt: skip
    parser.add_argument("--wheels", default="wheels", help="the folder of carried wheels (default: wheels)")
    parser.add_argument("--out", default="validate-out", help="where the results are written there (default: validate-out)")
    parser.add_argument("--site", default="/tmp/stablerep-site", help="where the wheels are installed there")
    parser.add_argument("--budget", type=stage_budgets, default=None, metavar="STAGE=SECONDS,...",
                        help="validate's budgets in the printed command, e.g. generate=90")  # fmt: skip
    parser.add_argument("--check", default=None, metavar="NAME==VERSION,...",
                        help="(part of the printed command) check that these are installed, and setuptools")  # fmt: skip
    parser.set_defaults(func=run)
    return run_command(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
