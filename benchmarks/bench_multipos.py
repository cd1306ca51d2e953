"""Forward + backward of the multi-positive loss, every backend vs the dense reference.

``run_bench(["loss"])`` of the bench harness (one harness for every benchmark), with the
bench's flags but --suite and --validate, e.g.
    python benchmarks/bench_multipos.py --device cuda --dtypes bfloat16 --json out.json
"""

import argparse

from stablerep_fast.bench import run_bench
from stablerep_fast.bench.__main__ import add_arguments, bench_options

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser, suite_flags=False)
    run_bench(["loss"], **bench_options(parser.parse_args()))
