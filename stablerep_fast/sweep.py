"""``stablerep-fast sweep``: one generation parameter over several values -> generate, train, probe.

Each value is one run of the demo (``stablerep_fast.demo.run_demo``) on the validation split of the
real scans (the shapes world: of its probe's training images), in ``out/PARAM=VALUE``; beside its
multi-positive encoder's accuracies stand what the demo records of the images it trained on: their
mean caption-image consistency score (the world's truth scorer, ``generate/models/scorers.py``),
how many were redrawn, and how many a ``min_score`` left out. Writes ``out/sweep.json`` and
``out/sweep.png`` (accuracy against the value, the mean score on a second axis).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from stablerep_fast.demo import DemoConfig, accuracy_keys, run_demo
from stablerep_fast.errors import ConfigError, OutputError

# Sweepable parameter -> (the DemoConfig field it sets, its type). The procedural worlds read their
# fidelity from the guidance scale; latent_std draws GenRep's latent-neighbour views at that spread;
# min_score is the load-time filter (train --min-score), regenerate_below generate's redraw threshold.
PARAMS = {"guidance_scale": ("fidelity", float), "fidelity": ("fidelity", float), "latent_std": ("latent_std", float),
          "resolution": ("resolution", int), "images_per_caption": ("images_per_caption", int),
          "captions": ("captions", int), "min_score": ("min_score", float),
          "regenerate_below": ("regenerate_below", float)}  # fmt: skip
SWEEP_FILE = "sweep.json"
SWEEP_PLOT = "sweep.png"
METHOD = "multipos"
DATA_KEYS = ("mean_score", "redrawn", "images_left_out", "captions_left_out")  # the demo's per-seed "data"


def run_sweep(config: DemoConfig, param: str, values: Sequence[float]) -> dict:
    """Run the demo ``config`` once per value of ``param`` (a key of PARAMS) on the validation split;
    returns (and writes to ``config.out/sweep.json``) per value the multi-positive accuracies (mean
    and std over seeds) and the means over seeds of the demo's record of its images (DATA_KEYS)."""
    if param not in PARAMS:
        raise ConfigError(f"--param {param} cannot be swept here; choose one of {', '.join(PARAMS)}")
    if not values:
        raise ConfigError("--values needs at least one value, e.g. --values 1,2,4,8")
    out = Path(config.out)
    if (out / SWEEP_FILE).exists() and not config.overwrite:
        raise OutputError(f"{out} holds an earlier sweep ({SWEEP_FILE}); pass --overwrite or choose another --out")
    name, kind = PARAMS[param]
    # Only the final accuracies are reported: one evaluation per run (curve_points=1).
    variants = [(kind(value), replace(config, out=out / f"{param}={kind(value):g}", validation=True, methods=(METHOD,),
                                      curve_points=1, overwrite=True, **{name: kind(value)}))  # fmt: skip
                for value in values]  # every value checked before the first runs
    points = []
    for value, variant in variants:
        results = run_demo(variant)
        data = [seed["data"] for seed in results["per_seed"].values()]
        points.append({"value": value, **results["summary"][METHOD],
                       **{key: float(np.mean([d[key] for d in data])) for key in DATA_KEYS if key in data[0]}})  # fmt: skip
    result = {"param": param, "world": config.world, "seeds": list(config.seeds), "points": points}
    out.mkdir(parents=True, exist_ok=True)
    (out / SWEEP_FILE).write_text(json.dumps(result, indent=1))
    _plot(result, out / SWEEP_PLOT)
    return result


def format_sweep(result: dict) -> str:
    """One line per value: the accuracies (mean +- std over seeds), the mean consistency score and
    the images redrawn and left out (means over seeds)."""
    keys = accuracy_keys(result["points"][0])
    data = [key for key in DATA_KEYS if key in result["points"][0]]
    lines = [f"{result['param']:>18}  " + "  ".join(f"{key:>15}" for key in keys + data)]
    for p in result["points"]:
        cells = [f"{p[key]['mean']:.3f} +- {p[key]['std']:.3f}" for key in keys] + [f"{p[key]:.3f}" for key in data]
        lines.append(f"{p['value']:>18g}  " + "  ".join(f"{cell:>15}" for cell in cells))
    lines.append("multi-positive encoder, validation split; mean +- sample std over seeds " + str(result["seeds"]))
    return "\n".join(lines)


def _plot(result: dict, path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    points = result["points"]
    values = [p["value"] for p in points]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key in accuracy_keys(points[0]):
        ax.errorbar(values, [p[key]["mean"] for p in points], yerr=[p[key]["std"] for p in points], marker="o", capsize=3,
                    label=key)  # fmt: skip
    ax.set_xlabel(result["param"])
    ax.set_ylabel("multi-positive accuracy (validation)")
    twin = ax.twinx()
    twin.plot(values, [p["mean_score"] for p in points], marker="s", linestyle="--", color="grey", label="mean score (right)")
    twin.set_ylabel("mean consistency score")
    handles = [h for axis in (ax, twin) for h in axis.get_legend_handles_labels()[0]]
    ax.legend(handles, [h.get_label() for h in handles], loc="best", fontsize=8, framealpha=0.8)
    ax.set_title(f"{result['world']} world: sweep of {result['param']}, {len(result['seeds'])} seed(s)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
