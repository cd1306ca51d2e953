"""Loader throughput: images/s of ``build_loader`` (256 px JPEGs -> augmented 224 crops), DALI vs torch.

``run_bench(["data"])`` of the bench harness (one harness for every benchmark): shapes
shards are generated into a temporary folder, then whole epochs of StableRep batches are timed
per loader backend and worker count. On a CPU-only machine only the CPU variants run (DALI's
CPU graph and the torch loader); ``--device cuda`` adds nvJPEG decoding and GPU augmentations,
against the target of staying ahead of the 1-3k images/s one H100 trains on. The bench's flags
but --suite and --validate apply, e.g.

    python benchmarks/bench_data.py --device cpu --workers 1,2,4 --json data.json
    python benchmarks/bench_data.py --device cuda --loaders dali --workers 4,8,16
"""

import argparse

from stablerep_fast.bench import run_bench
from stablerep_fast.bench.__main__ import add_arguments, bench_options

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser, suite_flags=False)
    run_bench(["data"], **bench_options(parser.parse_args()))
