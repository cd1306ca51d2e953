"""``stablerep-fast sweep``: one generation parameter over several values -> generate, train, probe.

Each value is one run of the demo (``stablerep_fast.demo.run_demo``) on the validation split of the
real scans (the shapes world: of its probe's training images), in ``out/PARAM=VALUE``; beside its
multi-positive encoder's probe accuracy stands the mean caption-image consistency score of the
images it trained on: the world's truth score (``generate/models/scorers.py``), re-derived from
each image's recorded caption and noise seed. Writes ``out/sweep.json`` and ``out/sweep.png``
(probe accuracy against the value, the mean score on a second axis).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from stablerep_fast.data.index import open_index
from stablerep_fast.demo import DemoConfig, run_demo
from stablerep_fast.errors import ConfigError, OutputError
from stablerep_fast.generate.farm.seeds import initial_noise
from stablerep_fast.generate.models.scorers import TRUTH, score_images

# Sweepable generation parameter -> (the DemoConfig field it sets, its type). The procedural
# worlds read their fidelity from the guidance scale.
PARAMS = {"guidance_scale": ("fidelity", float), "fidelity": ("fidelity", float), "resolution": ("resolution", int),
          "images_per_caption": ("images_per_caption", int), "captions": ("captions", int)}  # fmt: skip
SWEEP_FILE = "sweep.json"
SWEEP_PLOT = "sweep.png"
METHOD = "multipos"


def run_sweep(config: DemoConfig, param: str, values: Sequence[float]) -> dict:
    """Run the demo ``config`` once per value of ``param`` (a key of PARAMS) on the validation split;
    returns (and writes to ``config.out/sweep.json``) per value the multi-positive probe accuracy
    (mean and std over seeds) and the mean consistency score of its generated images."""
    if param not in PARAMS:
        raise ConfigError(f"--param {param} cannot be swept here; choose one of {', '.join(PARAMS)}")
    if not values:
        raise ConfigError("--values needs at least one value, e.g. --values 1,2,4,8")
    out = Path(config.out)
    if (out / SWEEP_FILE).exists() and not config.overwrite:
        raise OutputError(f"{out} holds an earlier sweep ({SWEEP_FILE}); pass --overwrite or choose another --out")
    name, kind = PARAMS[param]
    points = []
    for value in values:
        variant = replace(config, out=out / f"{param}={kind(value):g}", validation=True, methods=(METHOD,),
                          overwrite=True, **{name: kind(value)})  # fmt: skip
        summary = run_demo(variant)["summary"][METHOD]
        folders = [Path(variant.out) / f"seed{seed}" / "data" / f"images-k{variant.images_per_caption}" for seed in variant.seeds]
        points.append({"value": kind(value), "probe_acc": summary["probe_acc"],
                       "mean_score": float(np.mean([mean_truth_score(folder) for folder in folders]))})  # fmt: skip
    result = {"param": param, "world": config.world, "seeds": list(config.seeds), "points": points}
    out.mkdir(parents=True, exist_ok=True)
    (out / SWEEP_FILE).write_text(json.dumps(result, indent=1))
    _plot(result, out / SWEEP_PLOT)
    return result


def mean_truth_score(folder: Path) -> float:
    """The mean truth score (``scorers.TRUTH`` of the folder's procedural world) of every image of
    a generated ``folder``, from each sample's caption and the noise its seeds give."""
    index = open_index(folder)
    dataset = index.configs[0]
    scorer = TRUTH[dataset["model"]]()
    scores = []
    for caption in index.captions:
        record = caption.info()
        noise = initial_noise(dataset["seed"], [caption.caption_id], dataset["images_per_caption"],
                              (_latent_dim(dataset["model"]),), views=dataset["views"],
                              latent_std=dataset["latent_std"])[0]  # fmt: skip
        captions = [record["caption"]] * len(noise)
        scores.append(score_images(scorer, captions, np.zeros((len(noise), 1, 1, 3), np.uint8), noise, dataset["guidance"]))
    return float(np.mean(np.concatenate(scores)))


def _latent_dim(model: str) -> int:
    """The latent size of a procedural world."""
    from stablerep_fast.generate.models import digits, shapes

    return {"digits": digits.LATENT_DIM, "shapes": shapes.LATENT_DIM}[model]


def format_sweep(result: dict) -> str:
    """One line per value: probe accuracy (mean +- std over seeds) and mean consistency score."""
    lines = [f"{result['param']:>18}  probe acc (validation)  mean score"]
    for p in result["points"]:
        acc = p["probe_acc"]
        lines.append(f"{p['value']:>18g}  {acc['mean']:.3f} +- {acc['std']:.3f}         {p['mean_score']:.3f}")
    return "\n".join(lines)


def _plot(result: dict, path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    values = [p["value"] for p in result["points"]]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.errorbar(values, [p["probe_acc"]["mean"] for p in result["points"]], yerr=[p["probe_acc"]["std"] for p in result["points"]],
                marker="o", label="probe accuracy (validation)")  # fmt: skip
    ax.set_xlabel(result["param"])
    ax.set_ylabel("multi-positive probe accuracy")
    twin = ax.twinx()
    twin.plot(values, [p["mean_score"] for p in result["points"]], marker="s", color="tab:orange", label="mean consistency score")
    twin.set_ylabel("mean consistency score")
    fig.legend(loc="lower right", fontsize=8)
    ax.set_title(f"{result['world']} world: sweep of {result['param']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
