"""Generation throughput per backend: images/s, UNet step ms, speed-up over eager, FLOP floor.

A thin wrapper over the generate suite of ``stablerep-fast bench`` (one harness for every
benchmark). On a GPU the networks have SD 1.5's architecture with random weights (same shapes
and FLOPs as the real model; nothing downloaded), fp16 at 512 px, 50 DDIM steps, guidance 2;
``floor_frac`` compares with the tensor-core rate on H100/H200 (82.8 TFLOP per image). On a
CPU a tiny SD-shaped model at 64 px shows the script runs. Extra flags pass through, e.g.

    python benchmarks/bench_generate.py --device cuda --json generate.json
    python benchmarks/bench_generate.py --device cuda --generate-backends eager,compile,tensorrt
    python benchmarks/bench_generate.py --device cpu --quick                 # a smoke run
"""

import sys

from stablerep_fast.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "--suite", "generate", *sys.argv[1:]]))
