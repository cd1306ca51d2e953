"""The table of suites and ``run_suite``: one suite with its defaults, overrides and versions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from stablerep_fast.bench import data, generate, loss, train
from stablerep_fast.bench.report import environment, skipped


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
        Suite("loss", loss.TITLE, loss.COLUMNS, loss.run_loss_suite, loss.defaults, lambda: None),
        Suite("generate", generate.TITLE, generate.COLUMNS, generate.run_generate_suite, generate.defaults,
              generate.unavailable),  # fmt: skip
        Suite("data", data.TITLE, data.COLUMNS, data.run_data_suite, data.defaults, data.unavailable),
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
