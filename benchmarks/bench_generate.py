"""Generation throughput per backend: images/s, UNet step ms, speed-up over eager, FLOP floor.

``run_bench(["generate"])`` of the bench harness (one harness for every benchmark). On a GPU
the networks have SD 1.5's architecture with random weights (same shapes and FLOPs as the real
model; nothing downloaded), fp16 at 512 px, 50 DDIM steps, guidance 2; ``floor_frac`` compares
with the tensor-core rate on H100/H200 (82.8 TFLOP per image). On a CPU a tiny SD-shaped model
at 64 px shows the script runs. The bench's flags but --suite and --validate apply, e.g.

    python benchmarks/bench_generate.py --device cuda --json generate.json
    python benchmarks/bench_generate.py --device cuda --generate-backends eager,compile,tensorrt
    python benchmarks/bench_generate.py --device cpu --quick                 # a smoke run
"""

import argparse

from stablerep_fast.bench import run_bench
from stablerep_fast.bench.__main__ import add_arguments, bench_options

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser, suite_flags=False)
    run_bench(["generate"], **bench_options(parser.parse_args()))
