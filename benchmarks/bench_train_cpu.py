"""The CPU training step of a preset (default: the digits demo's recipe), end to end, before and
after the in-memory loader: the bench train suite's end-to-end variant under four settings, each in
a fresh process, interleaved, median of ``--repeats`` steps per run and of ``--runs`` runs.

  torch-1w    the torch loader with 1 worker process, the model on the other core (the old demo's)
  memory      the memory loader (batches augmented in this process), the model on every core
  memory-1t   the same with one model thread (what a loaded machine should use)
  memory-bf16 the same with bf16 autocast (worth it only where the CPU has bf16 units)
  torch-2w    the torch loader with a worker per core and the model on every core (oversubscribed)

    python benchmarks/bench_train_cpu.py --preset digits --runs 3 --json train_cpu.json
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

SETTINGS = {  # name: (loader backend, workers, model threads, precision)
    "torch-1w": ("torch", 1, 1, "fp32"),
    "memory": ("memory", 0, os.cpu_count(), "fp32"),
    "memory-1t": ("memory", 0, 1, "fp32"),
    "memory-bf16": ("memory", 0, os.cpu_count(), "bf16"),
    "torch-2w": ("torch", os.cpu_count(), os.cpu_count(), "fp32"),
}
ONE_RUN = """
import json, sys, torch
from stablerep_fast.bench.train import run_train_suite
backend, workers, threads, precision, preset, repeats = sys.argv[1:]
torch.set_num_threads(int(threads))
(record,) = run_train_suite("cpu", preset=preset, variants=["end-to-end"], loader_backend=backend,
                            num_workers=int(workers), repeats=int(repeats), precision=precision)
print(json.dumps(record))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="digits")
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    names = args.settings.split(",")
    per_run = {name: [] for name in names}
    for _ in range(args.runs):
        for name in names:
            backend, workers, threads, precision = SETTINGS[name]
            out = subprocess.run([sys.executable, "-c", ONE_RUN, backend, str(workers), str(threads), precision, args.preset,
                                  str(args.repeats)], capture_output=True, text=True, check=True).stdout  # fmt: skip
            per_run[name].append(json.loads(out.strip().splitlines()[-1]))
    rows = []
    for name, records in per_run.items():
        throughput = statistics.median(r["throughput"] for r in records)
        rows.append({"setting": name, "preset": args.preset, "images_per_s": round(throughput, 1),
                     "runs": [round(r["throughput"], 1) for r in records], "batch": records[0]["batch"]})  # fmt: skip
    base = rows[0]["images_per_s"]
    for row in rows:
        row["speedup"] = round(row["images_per_s"] / base, 2)
        print(row)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"load_average": os.getloadavg(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
