"""Forward + backward of the multi-positive loss, every backend vs the dense reference.

A thin wrapper over the loss suite of ``stablerep-fast bench`` (one harness for every
benchmark); extra flags pass through, e.g.
    python benchmarks/bench_multipos.py --device cuda --dtypes bfloat16 --json out.json
"""

import sys

from stablerep_fast.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "--suite", "loss", *sys.argv[1:]]))
