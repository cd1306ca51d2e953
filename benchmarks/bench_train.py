"""Training throughput: end-to-end images/s against the model's forward + backward alone.

``run_bench(["train"])`` of the bench harness (one harness for every benchmark: model,
model+loss and end-to-end from the real loader, with the overhead fraction; the target is loss
+ data adding under 10%), with the bench's flags but --suite and --validate, e.g.
    python benchmarks/bench_train.py --device cuda --json train.json
"""

import argparse

from stablerep_fast.bench import run_bench
from stablerep_fast.bench.__main__ import add_arguments, bench_options

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser, suite_flags=False)
    run_bench(["train"], **bench_options(parser.parse_args()))
