"""Training throughput: end-to-end images/s against the model's forward + backward alone.

A thin wrapper over the train suite of ``stablerep-fast bench`` (one harness for every
benchmark: model, model+loss and end-to-end from the real loader, with the overhead
fraction; the issue's target is loss + data adding under 10%). Extra flags pass through, e.g.
    python benchmarks/bench_train.py --device cuda --json train.json
"""

import sys

from stablerep_fast.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "--suite", "train", *sys.argv[1:]]))
