"""``stablerep-fast demo``: the whole method on a CPU in minutes, with its baselines.

1. generate captions that name a shape and some of its other attributes, and K images per
   caption with the procedural shapes generator (unnamed attributes differ from image to image);
2. train the ``cpu`` recipe with the multi-positive loss (m images of a caption are positives);
3. train the same encoder, same steps and images per step, SimCLR-style: one image per caption,
   two augmented views (the multi-positive loss with m = 2 views of the same image), with the
   baseline's own augmentation strength;
4. linear-probe (and kNN) both encoders along training, and a random-init one, on held-out
   images labelled with their shape, texture and colour; over one or several seeds.

Writes ``results.json`` (per seed and mean +- std over seeds) and ``probe_vs_step.png``.
``validation=True`` probes on a held-out part of the probe's training images instead of its test
images: that is how each method's augmentation strength is chosen (``study="augment"``).
"""

from __future__ import annotations

from stablerep_fast._deps import require_extra

require_extra("demo")  # before the imports that need it: one line, not a traceback

import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from stablerep_fast.data.augment import Augment
from stablerep_fast.errors import ConfigError
from stablerep_fast.eval import ProbeConfig, ProbeData, evaluate, load_probe_data
from stablerep_fast.generate import GenerateConfig, generate, shapes
from stablerep_fast.train import TrainConfig, build_model, load_model, preset, train

METHODS = ("multipos", "simclr")
ENCODERS = (*METHODS, "random_init")
STUDIES = ("augment", "m")
AUGMENT_STRENGTHS = (0.0, 0.25, 0.5, 1.0)  # the augment study's grid (Augment.at_strength)
M_VALUES = (2, 4, 8)  # the m study's grid, at the recipe's images per step
PLOT = "probe_vs_step.png"
# The SimCLR-style baseline's augmentation: its own best strength in the augment study on the
# validation split (0.5; the recipe's multi-positive run takes its best, 0.25: benchmarks/RESULTS.md).
SIMCLR_AUGMENT = Augment.at_strength(0.5)


@dataclass
class DemoConfig:
    """The demo. Its training recipe (model, image size, augmentation, steps, n x m) is
    ``recipe``, by default ``preset("cpu")``; the baseline changes only n x m and augmentation."""

    out: Path
    captions: int = 1024
    caption_mode: str = "subset"  # shapes.CAPTION_MODES; "all": captions name every attribute
    images_per_caption: int = 8  # K generated per caption for the multi-positive run
    resolution: int = 64  # generated and saved
    recipe: TrainConfig = field(default_factory=lambda: preset("cpu"))
    simclr_augment: Augment = SIMCLR_AUGMENT
    curve_points: int = 4  # probes along training (the last at the final step)
    probe_labels: tuple[str, ...] = ("shape", "texture", "colour")
    probe_per_class: int = 100
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    seeds: tuple[int, ...] = (0,)
    methods: tuple[str, ...] = METHODS  # which to train (a study may leave the baseline out)
    validation: bool = False  # probe on a split of the probe's training images, never its test images
    num_workers: int = 1
    online: bool = False  # multi-positive on images generated while training (same captions), not stored shards
    progress: bool = True

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ConfigError("--seeds needs at least one seed, e.g. --seeds 0,1,2")
        if self.recipe.steps < 1:
            raise ConfigError(f"--steps must be >= 1, got {self.recipe.steps}")

    @classmethod
    def quick(cls, out: Path, **overrides) -> DemoConfig:
        """The CI size: well under a minute on 2 CPU cores."""
        recipe = replace(preset("cpu"), steps=6, warmup_steps=1, captions_per_batch=16, images_per_caption=4)
        values = dict(captions=96, images_per_caption=4, recipe=recipe, curve_points=2, probe_per_class=8,
                      probe=ProbeConfig(sweep=(1e-3,)))  # fmt: skip
        return cls(out=out, **{**values, **overrides})

    def with_overrides(self, *, steps: int | None = None, seeds: Sequence[int] | None = None, **fields) -> DemoConfig:
        """A copy with ``fields`` replaced (None values ignored), ``seeds`` as a tuple and
        ``steps`` training steps per encoder (warm-up cut to fit); ConfigError for no seeds or
        fewer than one step."""
        values = {name: value for name, value in fields.items() if value is not None}
        if seeds is not None:
            values["seeds"] = tuple(seeds)
        if steps is not None:
            values["recipe"] = replace(self.recipe, steps=steps, warmup_steps=min(self.recipe.warmup_steps, steps))
        return replace(self, **values)


def run_demo(config: DemoConfig) -> dict:
    """Run the demo over ``config.seeds``; returns (and writes to ``out/results.json``) the
    accuracies per seed, their mean and standard deviation, curves and timings."""
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    wall, cpu = time.perf_counter(), _cpu_seconds()
    threads = torch.get_num_threads()
    # The loader's workers have cores of their own; the model's threads take the rest. An
    # oversubscribed core stalls OpenMP's barriers (on a busy 2-core machine, 2 threads + 1 worker
    # trained 10x slower than 1 thread + 1 worker).
    torch.set_num_threads(max(1, threads - config.num_workers))
    try:
        per_seed = {seed: _run_seed(config, seed, out / f"seed{seed}") for seed in config.seeds}
    finally:
        torch.set_num_threads(threads)
    results = {
        "summary": _summarise(per_seed),
        "per_seed": {str(seed): r for seed, r in per_seed.items()},
        "timings": {"total_s": time.perf_counter() - wall, "cpu_s": _cpu_seconds() - cpu, "cpus": os.cpu_count()},
        "config": _describe(config),
    }
    (out / "results.json").write_text(json.dumps(results, indent=1))
    plot = _plot(results, out / PLOT)
    print(format_table(results, config.probe_labels))
    print(plot or f"(no {PLOT}: matplotlib is not installed)")
    return results


def run_study(config: DemoConfig, study: str, values: tuple | None = None) -> list[dict]:
    """``"augment"``: each method at each strength of ``values`` (default AUGMENT_STRENGTHS),
    probed on the validation split: how the recipe's and the baseline's augmentations are chosen.
    ``"m"``: multi-positive at each m of ``values`` (default M_VALUES) with the recipe's images per
    step, and the SimCLR-style baseline once. Writes ``out/study-STUDY.json``; returns its rows."""
    if study not in STUDIES:
        raise ValueError(f"study must be one of {STUDIES}, got {study!r}")
    recipe, variants = config.recipe, []
    if study == "augment":
        for s in values or AUGMENT_STRENGTHS:
            variants.append((f"augment-{s:g}", s, replace(config, validation=True, recipe=replace(recipe, augment=Augment.at_strength(s)),
                                                       simclr_augment=Augment.at_strength(s))))  # fmt: skip
    else:
        for i, m in enumerate(values or M_VALUES):
            variant = replace(config, recipe=replace(recipe, images_per_caption=m, captions_per_batch=recipe.batch_images // m),
                              images_per_caption=max(m, config.images_per_caption), methods=METHODS if i == 0 else ("multipos",))  # fmt: skip
            variants.append((f"m-{m}", m, variant))
    rows = []
    for name, value, variant in variants:
        summary = run_demo(replace(variant, out=Path(config.out) / name))["summary"]
        rows += [{"study": study, "value": value if method == "multipos" or study == "augment" else "simclr",
                  "method": method, **summary[method]} for method in variant.methods]  # fmt: skip
    Path(config.out).mkdir(parents=True, exist_ok=True)
    suffix = f"-{'_'.join(f'{v:g}' for v in values)}" if values else ""
    Path(config.out, f"study-{study}{suffix}.json").write_text(json.dumps(rows, indent=1))
    for row in rows:
        print(f"{study}={row['value']} {row['method']}: probe {_pm(row['probe_acc'])}, knn {_pm(row['knn_acc'])}, "
              f"shape {_pm(row['by_label']['shape']['probe_acc']) if 'shape' in row['by_label'] else '-'}, "
              f"curve {[round(p['probe_acc']['mean'], 3) for p in row['curve']]}")  # fmt: skip
    return rows


def _run_seed(config: DemoConfig, seed: int, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    timings = {}
    # 1. Data: K images per caption; the SimCLR set pools image 0 of each caption with a copy of itself.
    tick = time.perf_counter()
    data = _generate(config, seed, out / "data")
    timings["generate_s"] = time.perf_counter() - tick
    probe_sets = {label: _probe_data(config, label, seed) for label in config.probe_labels}

    # 2-3. Train both encoders with the same budget, probing along the way.
    results = {}
    for method, run in _method_configs(config, seed, data, out).items():
        if method not in config.methods:
            continue
        print(f"seed {seed}, training {method}: {run.steps} steps of {run.batch_images} images "
              f"({run.captions_per_batch} captions x {run.images_per_caption}), {run.model} at {run.image_size} px")  # fmt: skip
        results[method], timings[f"train_{method}_s"], timings[f"probe_{method}_s"] = _train_and_probe(config, run, probe_sets)
    torch.manual_seed(seed)
    tick = time.perf_counter()
    results["random_init"] = _probe(config, build_model(config.recipe).backbone, probe_sets)
    timings["probe_random_init_s"] = time.perf_counter() - tick
    return {**results, "timings": timings}


def _generate(config: DemoConfig, seed: int, root: Path) -> dict[str, object]:
    captions_file = root / "captions.txt"
    root.mkdir(parents=True, exist_ok=True)
    captions = shapes.make_captions(config.captions, seed=seed, mode=config.caption_mode)
    captions_file.write_text("\n".join(captions) + "\n")
    common = dict(captions=captions_file, model="shapes", resolution=config.resolution, save_size=config.resolution,
                  seed=seed, progress=False)  # fmt: skip
    if not config.online:
        generate(GenerateConfig(out=root / "multipos", images_per_caption=config.images_per_caption, **common))
    generate(GenerateConfig(out=root / "single", images_per_caption=1, **common))  # image 0 of each caption
    if not (root / "single-copy").exists():
        shutil.copytree(root / "single", root / "single-copy")
    return {"multipos": "generator:shapes" if config.online else str(root / "multipos"), "captions": str(captions_file),
            "simclr": [str(root / "single"), str(root / "single-copy")]}  # fmt: skip


def _method_configs(config: DemoConfig, seed: int, data: dict, out: Path) -> dict[str, TrainConfig]:
    base = replace(config.recipe, seed=seed, num_workers=config.num_workers, progress=config.progress, resume=False,
                   checkpoint_every=config.recipe.steps, stop_at=None)  # fmt: skip
    return {
        "multipos": replace(base, data=data["multipos"], out=str(out / "multipos"),
                            online={"captions": data["captions"], "resolution": config.resolution}),
        "simclr": replace(base, data=data["simclr"], images_per_caption=2, captions_per_batch=base.batch_images // 2,
                          augment=config.simclr_augment, out=str(out / "simclr"), allow_copies=True),
    }  # fmt: skip


def _probe_data(config: DemoConfig, label: str, seed: int) -> ProbeData:
    data = load_probe_data(f"shapes:{label}", image_size=config.recipe.image_size, per_class=config.probe_per_class, seed=seed)
    return data.validation_split(config.probe.val_fraction, seed) if config.validation else data


def _train_and_probe(config: DemoConfig, run: TrainConfig, probe_sets: dict) -> tuple[dict, float, float]:
    """Train ``run`` in ``curve_points`` slices (resuming, so the schedule is the whole run's),
    probing after each; returns the final probe results with the curve, train and probe seconds."""
    stops = sorted({max(1, round(run.steps * (i + 1) / config.curve_points)) for i in range(config.curve_points)})
    curve, train_s, probe_s, losses = [], 0.0, 0.0, []
    for stop in stops:
        # The first slice starts over (a re-run of the demo trains again); the others resume.
        summary = train(replace(run, stop_at=stop, resume=stop != stops[0], overwrite=stop == stops[0], checkpoint_every=stop))
        train_s += summary.seconds
        losses += summary.losses
        tick = time.perf_counter()
        model, _ = load_model(summary.checkpoint)
        result = _probe(config, model.backbone, probe_sets)
        probe_s += time.perf_counter() - tick
        curve.append({"step": stop, "probe_acc": result["probe_acc"], "knn_acc": result["knn_acc"]})
        by_label = ", ".join(f"{label} {r['probe_acc']:.3f}" for label, r in result["by_label"].items())
        print(f"  step {stop}: probe {result['probe_acc']:.3f} ({by_label}), knn {result['knn_acc']:.3f}", flush=True)
    result.update(curve=curve, steps=stops[-1], train_s=train_s, images_per_s=run.batch_images * stops[-1] / train_s,
                  first_loss=losses[0], last_loss=losses[-1])  # fmt: skip
    return result, train_s, probe_s


def _probe(config: DemoConfig, encoder: torch.nn.Module, probe_sets: dict) -> dict:
    by_label = {label: evaluate(encoder, data, config.probe, image_size=config.recipe.image_size) for label, data in probe_sets.items()}
    return {
        "probe_acc": float(np.mean([r["probe_acc"] for r in by_label.values()])),
        "knn_acc": float(np.mean([r["knn_acc"] for r in by_label.values()])),
        "by_label": {label: {"probe_acc": r["probe_acc"], "knn_acc": r["knn_acc"]} for label, r in by_label.items()},
    }


def _stats(values: list[float]) -> dict:
    """Mean and sample standard deviation (0 for one value)."""
    return {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0}


def _summarise(per_seed: dict[int, dict]) -> dict:
    runs = list(per_seed.values())
    summary = {}
    for name in [name for name in ENCODERS if name in runs[0]]:
        r = [run[name] for run in runs]
        summary[name] = {
            "probe_acc": _stats([x["probe_acc"] for x in r]),
            "knn_acc": _stats([x["knn_acc"] for x in r]),
            "by_label": {label: {k: _stats([x["by_label"][label][k] for x in r]) for k in ("probe_acc", "knn_acc")}
                         for label in r[0]["by_label"]},  # fmt: skip
        }
        if "curve" in r[0]:
            summary[name]["curve"] = [
                {"step": point["step"], **{k: _stats([x["curve"][i][k] for x in r]) for k in ("probe_acc", "knn_acc")}}
                for i, point in enumerate(r[0]["curve"])
            ]
    return summary


def _pm(stats: dict) -> str:
    return f"{stats['mean']:.3f} +- {stats['std']:.3f}"


def format_table(results: dict, labels: tuple[str, ...]) -> str:
    """The summary as a text table (mean +- std over seeds)."""
    summary, seeds = results["summary"], len(results["per_seed"])
    header = ["encoder", "probe_acc", *labels, "knn_acc", *[f"knn_{label}" for label in labels]]
    rows = [header]
    for name in [name for name in ENCODERS if name in summary]:
        s = summary[name]
        fmt = _pm if seeds > 1 else (lambda x: f"{x['mean']:.3f}")
        rows.append([name, fmt(s["probe_acc"]), *[fmt(s["by_label"][label]["probe_acc"]) for label in labels],
                     fmt(s["knn_acc"]), *[fmt(s["by_label"][label]["knn_acc"]) for label in labels]])  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    t = results["timings"]
    split = "a validation split of the probe's training images" if results["config"]["validation"] else "held-out test images"
    lines.append(f"linear-probe (L-BFGS) and kNN accuracy on {split}; probe_acc = mean over {', '.join(labels)}; "
                 f"{seeds} seed(s){', mean +- sample std' if seeds > 1 else ''}")  # fmt: skip
    lines.append(f"total {t['total_s']:.0f} s wall clock, {t['cpu_s']:.0f} s CPU time (this process and its workers)")
    return "\n".join(lines)


def _plot(results: dict, path: Path) -> Path | None:
    """Probe accuracy vs training step, both methods (mean +- std band), random init dashed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    summary = results["summary"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, label in (("multipos", "multi-positive"), ("simclr", "SimCLR-style")):
        if name not in summary:
            continue
        curve = summary[name]["curve"]
        steps = [p["step"] for p in curve]
        mean = np.array([p["probe_acc"]["mean"] for p in curve])
        std = np.array([p["probe_acc"]["std"] for p in curve])
        ax.plot(steps, mean, marker="o", label=label)
        ax.fill_between(steps, mean - std, mean + std, alpha=0.2)
    ax.axhline(summary["random_init"]["probe_acc"]["mean"], color="grey", linestyle="--", label="random init")
    ax.set_xlabel("training step")
    ax.set_ylabel("linear-probe accuracy (mean over attributes)")
    ax.set_title(f"shapes demo, {len(results['per_seed'])} seed(s)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _describe(config: DemoConfig) -> dict:
    values = {k: v for k, v in asdict(config).items() if k not in ("out", "recipe", "simclr_augment")}
    values["recipe"] = config.recipe.to_dict()
    values["simclr_augment"] = config.simclr_augment.to_dict()
    return json.loads(json.dumps(values, default=str))


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the loader's workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system
