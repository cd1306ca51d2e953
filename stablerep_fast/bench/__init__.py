"""The benchmark harness behind ``python -m stablerep_fast.bench`` / ``stablerep-fast bench``.

One timing and memory harness (``timing.py``) under four suites, each a module with a
``run_*_suite(device, **settings)`` returning flat records, ``defaults(device, quick)``, a
title and table columns:

    loss       forward + backward of the multi-positive loss per backend vs the dense reference
    generate   images/s of the text-to-image pipeline per backend, UNet step, FLOP floor
    data       images/s of the shard loader per backend and worker count
    train      images/s of a training step end to end vs the model alone

``run_suite`` runs one with its defaults and overrides; ``environment()`` describes the
machine; ``format_suite`` prints records for people; ``plot.plot_records`` draws them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from stablerep_fast.bench import data, generate, loss, train
from stablerep_fast.bench.loss import run_loss_suite
from stablerep_fast.bench.report import environment, format_environment, format_suite, format_table, skipped


@dataclass(frozen=True)
class Suite:
    name: str
    title: str
    columns: list[str]
    run: Callable[..., list[dict]]
    defaults: Callable[[str, bool], dict]
    unavailable: Callable[[], str | None]  # why it cannot run here, None when it can


SUITE_TABLE: dict[str, Suite] = {
    s.name: s
    for s in (
        Suite("loss", loss.TITLE, loss.COLUMNS, run_loss_suite, loss.defaults, lambda: None),
        Suite("generate", generate.TITLE, generate.COLUMNS, generate.run_generate_suite, generate.defaults,
              generate.unavailable),  # fmt: skip
        Suite("data", data.TITLE, data.COLUMNS, data.run_data_suite, data.defaults, lambda: None),
        Suite("train", train.TITLE, train.COLUMNS, train.run_train_suite, train.defaults, train.unavailable),
    )
}
SUITES = tuple(SUITE_TABLE)


def run_suite(name: str, device: str, quick: bool = False, versions: dict | None = None, **overrides) -> list[dict]:
    """Suite ``name`` on ``device`` with its defaults (quick or full) and ``overrides`` (None
    values ignored). Every record gets ``versions`` (default: ``environment(device)``). A suite
    that cannot run here gives one skipped record."""
    suite = SUITE_TABLE[name]
    reason = suite.unavailable()
    if reason is not None:
        records = [skipped(name, "*", device, reason)]
    else:
        settings = suite.defaults(device, quick)
        settings.update({k: v for k, v in overrides.items() if v is not None})
        records = suite.run(device=device, **settings)
    versions = versions if versions is not None else environment(device)
    for r in records:
        r["versions"] = versions
    return records


__all__ = [
    "SUITES",
    "SUITE_TABLE",
    "Suite",
    "environment",
    "format_environment",
    "format_suite",
    "format_table",
    "run_loss_suite",
    "run_suite",
]
