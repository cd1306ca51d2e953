"""Loader throughput: images/s of ``build_loader`` (256 px JPEGs -> augmented 224 crops), DALI vs torch.

A thin wrapper over the data suite of ``stablerep-fast bench`` (one harness for every
benchmark): shapes shards are generated into a temporary folder, then whole epochs of
StableRep batches are timed per loader backend and worker count. On a CPU-only machine only
the CPU variants run (DALI's CPU graph and the torch loader); ``--device cuda`` adds nvJPEG
decoding and GPU augmentations, against the target of staying ahead of the 1-3k images/s one
H100 trains on. Extra flags pass through, e.g.

    python benchmarks/bench_data.py --device cpu --workers 1,2,4 --json data.json
    python benchmarks/bench_data.py --device cuda --loaders dali --workers 4,8,16
"""

import sys

from stablerep_fast.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "--suite", "data", *sys.argv[1:]]))
