"""``run_bench``: the suites one after another, tables for people, JSON and charts on request.

What ``stablerep-fast bench`` / ``python -m stablerep_fast.bench`` runs once the command line
is parsed; callable from Python with the same arguments.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch

from stablerep_fast.bench.loss import DTYPE_CHOICES
from stablerep_fast.bench.report import environment, format_environment, format_suite
from stablerep_fast.bench.suites import SUITE_TABLE, SUITES, run_suite


class BenchError(ValueError):
    """A request the bench cannot serve (unknown suite, no GPU for --device cuda), as one line."""


def resolve_device(device: str | None) -> str:
    """``device``, or "cuda" when torch sees a GPU and "cpu" otherwise; BenchError for a CUDA
    request without a GPU."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda"):
        raise BenchError(f"unknown device {device!r}; choose cpu or cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise BenchError("--device cuda but torch sees no CUDA device")
    return device


def check_suites(suites: list[str] | None) -> list[str]:
    """The suites to run (default: all), BenchError naming any unknown one."""
    suites = list(SUITES) if suites is None else list(suites)
    unknown = sorted(set(suites) - set(SUITES))
    if unknown:
        raise BenchError(f"unknown suite(s) {unknown}; available: {list(SUITES)}")
    return suites


def check_settings(repeats: int | None, overrides: dict[str, dict] | None) -> None:
    """BenchError naming the first setting (by its flag) that no suite can run with, before any runs."""
    overrides = overrides or {}
    loss, data = overrides.get("loss", {}), overrides.get("data", {})
    families = overrides.get("generate", {}).get("few_step") or []
    too_small = [
        ("--repeats", [] if repeats is None else [repeats], 1),
        ("--sizes", loss.get("sizes") or [], 1),
        ("--dims", loss.get("dims") or [], 1),
        ("--workers", data.get("workers") or [], 0),
        ("--generate-families steps", [steps for _, steps in families], 1),
    ]
    for flag, values, least in too_small:
        if any(value < least for value in values):
            raise BenchError(f"{flag} must be >= {least}, got {','.join(map(str, values))}")
    unknown = sorted(set(loss.get("dtypes") or []) - set(DTYPE_CHOICES))
    if unknown:
        raise BenchError(f"unknown loss dtype(s) {unknown} in --dtypes; choose from {', '.join(DTYPE_CHOICES)}")


def write_json(records: list[dict], path: str | Path) -> Path:
    """The records as a JSON list at ``path`` (folders made as needed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records, indent=1))
    return path


def run_bench(
    suites: list[str] | None = None,
    device: str | None = None,
    *,
    quick: bool = False,
    repeats: int | None = None,
    overrides: dict[str, dict] | None = None,
    json_path: str | Path | None = None,
    plot_dir: str | Path | None = None,
    echo: Callable[[str], None] | None = None,
) -> list[dict]:
    """Run ``suites`` (default: all) on ``device`` (default: cuda when available) and return the records.

    quick:     each suite's small sweep; repeats: timed repetitions per case (every suite)
    overrides: per suite, settings over its defaults, e.g. {"loss": {"sizes": [8192]}} (None values ignored)
    json_path: also write the records there; plot_dir: PNG charts there (needs matplotlib)
    echo:      where the tables for people go (default: printed as each suite ends)
    """
    from stablerep_fast.bench.plot import missing_dependency, plot_records

    echo = echo or _say
    device = resolve_device(device)
    suites = check_suites(suites)
    check_settings(repeats, overrides)
    if plot_dir is not None and missing_dependency():
        raise BenchError(missing_dependency())
    env = environment(device)
    echo(format_environment(env))
    if device == "cpu":
        echo("no GPU in use: CPU variants only (GPU-only backends are listed as skipped; GPU tables need --device cuda)")
    records: list[dict] = []
    for name in suites:
        settings = dict((overrides or {}).get(name, {}), repeats=repeats)
        suite_records = run_suite(name, device, quick, versions=env, **settings)
        echo("\n" + format_suite(SUITE_TABLE[name].title, suite_records, SUITE_TABLE[name].columns))
        records += suite_records
    skips = [r for r in records if r.get("skipped")]
    if skips:
        echo(f"\nskipped {len(skips)} variant(s):")
        for r in skips:
            echo(f"  {r['suite']} {r['backend']}: {r['skipped']}")
    if json_path is not None:
        echo(f"\nwrote {len(records)} records to {write_json(records, json_path)}")
    if plot_dir is not None:
        paths = plot_records(records, plot_dir)
        echo(f"wrote {len(paths)} charts to {plot_dir}: {', '.join(p.name for p in paths)}")
    return records


def _say(text: str) -> None:
    print(text, flush=True)
