"""What every suite shares: the environment, skip records and tables for people.

A record is a flat dict: suite, backend, device, dtype, the sizes, ms (median),
peak_mb, throughput, speedup, floor_frac, versions. A variant that cannot run here is a
record too, with ``skipped`` set to the reason and no measurements, so the JSON says what was
left out as well as what was measured.
"""

from __future__ import annotations

import platform

import torch

from stablerep_fast import __version__
from stablerep_fast._ext import build_info


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


def format_environment(env: dict) -> str:
    """The environment as one line for people (the records carry all of it as ``versions``)."""
    gpu = env.get("gpu") or "none in use"
    ext = env.get("extension") or {}
    return (f"environment: GPU {gpu}; torch {env['torch']} (CUDA {env['cuda'] or '-'}), triton {env.get('triton') or '-'}, "
            f"Python {env['python']}, stablerep_fast {env['stablerep_fast']} (C++/CUDA extension "
            f"{'built' if ext.get('built') else 'not built'}); CPU {env['cpu']}, {env['threads']} torch threads")  # fmt: skip


def skipped(suite: str, backend: str, device: str, reason: str, **fields) -> dict:
    """The record of a variant that was not run, and why."""
    return {"suite": suite, "backend": backend, "device": device, **fields, "ms": None, "skipped": reason}


def set_speedup(records: list[dict], baseline: str, same: tuple[str, ...] = ()) -> None:
    """Set every measured record's ``speedup`` to the baseline's ms over its ms, where the
    baseline is the record of backend ``baseline`` with the same values of the fields ``same``
    (None when there is no such record or a time is missing). Every suite's speed-up is this."""
    key = lambda r: tuple(r.get(f) for f in same)  # noqa: E731
    base = {key(r): r["ms"] for r in records if r.get("backend") == baseline and r.get("ms")}
    for r in records:
        if not r.get("skipped"):
            ref = base.get(key(r))
            r["speedup"] = ref / r["ms"] if ref and r.get("ms") else None


def missing_stage(*stages: str) -> str | None:
    """Why one of ``stages`` (e.g. "generate", "data") cannot be imported here (its extra is not
    installed), or None when all import."""
    import importlib

    from stablerep_fast._deps import MissingExtraError

    for stage in stages:
        try:
            importlib.import_module(f"stablerep_fast.{stage}")
        except MissingExtraError as exc:
            return str(exc)
    return None


def format_table(records: list[dict], columns: list[str], *, markdown: bool = False) -> str:
    """Records as a table (missing values shown as '-', floats to 3 significant digits); columns
    that are empty in every record are left out. Aligned text, or with ``markdown`` a markdown
    table (cells on one line, '|' written as '/')."""

    def cell(value) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
        return str(value).replace("|", "/").replace("\n", " ") if markdown else str(value)

    columns = [c for c in columns if any(r.get(c) is not None for r in records)] or columns
    rows = [columns] + [[cell(r.get(c)) for c in columns] for r in records]
    if markdown:
        lines = ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join([lines[0], "|" + "---|" * len(columns), *lines[1:]])
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    return "\n".join("  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in rows)


def format_suite(title: str, records: list[dict], columns: list[str]) -> str:
    """A suite's heading, its table of measured records, then one line per skipped variant."""
    measured = [r for r in records if not r.get("skipped")]
    lines = [title]
    if measured:
        lines.append(format_table(measured, columns))
    else:
        lines.append("(nothing measured)")
    for r in records:
        if r.get("skipped"):
            lines.append(f"skipped {r['suite']} {r['backend']}: {r['skipped']}")
    return "\n".join(lines)
