"""Generation farm: makespan of static vs dynamic shard assignment, 64 to 1024 ranks, 10% stragglers.

A simulation (``stablerep_fast.bench.farm``: simulated per-shard times, no generation): 8 shards
per rank of 1000 s each on a normal rank (lognormal jitter, sigma 0.1), 10% of the ranks 3x
slower, 1 s per claim; then the same with one rank preempted at a random time (dynamic: taken
over after the 300 s lease; static: rerun by hand after the rest). Prints a markdown table
(mean over 5 draws) for benchmarks/RESULTS.md:

    python benchmarks/bench_farm.py
"""

import platform
import time

from stablerep_fast.bench.farm import COLUMNS, TITLE, run_farm_simulation
from stablerep_fast.bench.report import format_table

if __name__ == "__main__":
    started = time.perf_counter()
    records = run_farm_simulation()
    print(f"{TITLE}\n{platform.node()} ({platform.processor() or platform.machine()}), "
          f"{time.strftime('%Y-%m-%d', time.gmtime())}, {time.perf_counter() - started:.1f} s\n")  # fmt: skip
    print(format_table(records, COLUMNS, markdown=True))
