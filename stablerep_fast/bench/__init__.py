"""The benchmark harness behind ``python -m stablerep_fast.bench`` / ``stablerep-fast bench``.

One timing and memory harness (``timing.py``) under four suites, each a module with a
``run_*_suite(device, **settings)`` returning flat records, ``defaults(device, quick)``, a
title and table columns:

    loss       forward + backward of the multi-positive loss per backend vs the dense reference
    generate   images/s of the text-to-image pipeline per backend, UNet step, FLOP floor
    data       images/s of the shard loader per backend and worker count
    train      images/s of a training step end to end vs the model alone

``run_bench`` (run.py) runs suites and writes tables, JSON and charts; ``validate`` (validate.py)
is the one-command check of a machine; ``run_suite`` (suites.py) runs one suite with its
defaults and overrides; ``environment()`` describes the machine; ``format_suite`` and
``format_table`` (text or markdown) print records for people; ``plot.plot_records`` draws them.
The command line (``__main__.py``) only turns flags into a ``run_bench`` or ``validate`` call.
The suites need their stage's extra (``pip install 'stablerep_fast[all]'``); one whose stage is
not installed is recorded as skipped.
"""

from __future__ import annotations

from stablerep_fast.bench.loss import run_loss_suite
from stablerep_fast.bench.report import environment, format_environment, format_suite, format_table, skipped
from stablerep_fast.bench.run import BenchError, run_bench
from stablerep_fast.bench.suites import SUITE_TABLE, SUITES, Suite, run_suite

__all__ = [
    "SUITES",
    "SUITE_TABLE",
    "BenchError",
    "Suite",
    "environment",
    "format_environment",
    "format_suite",
    "format_table",
    "run_bench",
    "run_loss_suite",
    "run_suite",
    "skipped",
]
