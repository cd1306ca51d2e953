"""The benchmark harness behind ``python -m stablerep_fast.bench`` / ``stablerep-fast bench``.

Suites so far: ``loss``. Each returns flat record dicts; ``environment()`` describes the
machine, and ``format_table`` prints records for people.
"""

from __future__ import annotations

import platform

import torch

from stablerep_fast import __version__
from stablerep_fast._ext import build_info
from stablerep_fast.bench.loss import run_loss_suite

SUITES = ("loss",)


def environment(device: str) -> dict:
    """Versions and hardware the numbers were taken on."""
    env = {
        "stablerep_fast": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "extension": build_info(),
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    if torch.device(device).type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def format_table(records: list[dict], columns: list[str]) -> str:
    """Records as an aligned text table (missing values shown as '-')."""

    def cell(value) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
        return str(value)

    rows = [columns] + [[cell(r.get(c)) for c in columns] for r in records]
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    return "\n".join("  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in rows)


__all__ = ["SUITES", "environment", "format_table", "run_loss_suite"]
