"""``stablerep-fast demo``: the paper's claim in miniature, on a CPU in minutes, with its baselines.

The default world, ``digits``:

1. generate captions that name a digit and some of its style ("the digit seven, thick pen"), and
   K images per caption with the procedural digits generator: what a caption leaves unsaid
   (stroke width, slant, size, position, glyph form, pen wobble) differs from image to image;
2. train the ``digits`` recipe with the multi-positive loss (m images of a caption are positives),
   only on generated images;
3. train the same encoder, same steps and images per step, SimCLR-style (two augmented views of
   one image, the multi-positive loss with m = 2 views of the same image) on the same generated
   images (image 0 of each caption), and on the *real* training scans;
4. evaluate every encoder, a random-init one, and raw pixels on real handwritten digits
   (scikit-learn's 1,797 scans, a fixed train/test split): a linear probe on the full training
   split, a 10-shot linear probe (mean over draws) and kNN; along training and over seeds.

``world="shapes"`` keeps the older procedural world (probes on held-out shapes images labelled
with their shape, texture and colour; no real data, so no real-image baseline or raw pixels).

Writes ``results.json`` (per seed and mean +- std over seeds) and ``probe_vs_step.png``.
``validation=True`` evaluates on a validation split carved from the real *training* scans (the
shapes world: from its probe's training images), and the real-image baseline trains on the rest:
that is how every recipe setting is chosen (``run_study``), never on the test scans.
"""

from __future__ import annotations

from stablerep_fast._deps import require_extra

require_extra("demo")  # before the imports that need it: one line, not a traceback

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from stablerep_fast.data import open_index
from stablerep_fast.data.index import filter_by_score
from stablerep_fast.data.augment import Augment
from stablerep_fast.data.memory import MemoryLoader, decode_index
from stablerep_fast.errors import ConfigError, OutputError
from stablerep_fast.eval import ProbeConfig, ProbeData, Split, evaluate, extract_features, load_probe_data
from stablerep_fast.eval.probe_sets import few_shot, real_digits
from stablerep_fast.generate import GenerateConfig, generate
from stablerep_fast.generate.models import digits, shapes
from stablerep_fast.train import TrainConfig, build_model, load_model, preset, train

WORLDS = ("digits", "shapes")
# What each world trains: multi-positive and SimCLR-style on generated images; on the digits world
# also SimCLR-style on the real training scans. Evaluated beside them: a random-init encoder and
# (with real data) a linear classifier on raw pixels.
WORLD_METHODS = {"digits": ("multipos", "simclr", "simclr_real"), "shapes": ("multipos", "simclr")}
ENCODERS = ("multipos", "simclr", "simclr_real", "random_init", "raw_pixels")
NAMES = {"multipos": "multi-positive (generated)", "simclr": "SimCLR-style (generated)",
         "simclr_real": "SimCLR-style (real scans)", "random_init": "random init", "raw_pixels": "raw pixels"}  # fmt: skip
STUDIES = ("augment", "m", "fidelity", "resolution", "steps")
# Each study's default values (run_study).
STUDY_VALUES = {"augment": (0.25, 0.5, 1.0), "m": (2, 4, 8), "fidelity": (0.5, 1.0, 2.0), "resolution": (8, 16, 32),
                "steps": (150, 300)}  # fmt: skip
PLOT = "probe_vs_step.png"
RESULTS = "results.json"
# Recipe settings per world, each chosen on the validation split (benchmarks/RESULTS.md, "Demo").
WORLD_DEFAULTS = {
    "digits": dict(recipe="digits", resolution=8, simclr_augment=replace(Augment.at_strength(0.5), flip_p=0.0)),
    "shapes": dict(recipe="cpu", resolution=64, simclr_augment=Augment.at_strength(0.5)),
}


@dataclass
class DemoConfig:
    """The demo. Its training recipe (model, image size, augmentation, steps, n x m) is ``recipe``
    (default: the world's preset); the baselines change only n x m and augmentation. None fields
    take the world's defaults (WORLD_DEFAULTS)."""

    out: Path
    world: str = "digits"
    captions: int = 1024
    caption_mode: str = "subset"  # the world's CAPTION_MODES; "all": captions name every attribute
    images_per_caption: int = 8  # K generated per caption for the multi-positive run
    resolution: int | None = None  # generated and saved
    fidelity: float | None = None  # the generator's guidance (digits: how closely images follow the caption)
    latent_std: float | None = None  # None: independent noises; a value: GenRep's latent-neighbour views, this spread
    # Consistency (every image is scored with its world's truth scorer, generate --score truth):
    min_score: float | None = None  # multi-positive leaves out images scoring below this (train --min-score)
    regenerate_below: float | None = None  # redraw images scoring below this (generate --regenerate-below)
    max_regenerations: int = 1  # attempts per image beyond the first (generate --max-regenerations)
    recipe: TrainConfig | None = None
    simclr_augment: Augment | None = None  # both SimCLR-style baselines'
    curve_points: int = 4  # evaluations along training (the last at the final step)
    shots: int = 10  # the k of the k-shot probe (real digits)
    shot_draws: int = 5  # k-shot training sets drawn per evaluation; their mean is reported
    probe_labels: tuple[str, ...] = ("shape", "texture", "colour")  # shapes world
    probe_per_class: int = 100  # shapes world
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    seeds: tuple[int, ...] = (0,)
    methods: tuple[str, ...] | None = None  # which to train; default: the world's WORLD_METHODS
    validation: bool = False  # evaluate on a split of the real training scans, never the test scans
    num_workers: int = 0  # loader workers (online generation only; stored images are augmented in-process)
    online: bool = False  # multi-positive on images generated while training (same captions), not stored shards
    overwrite: bool = False  # replace an earlier demo's results in ``out``
    progress: bool = True

    def __post_init__(self) -> None:
        if self.world not in WORLDS:
            raise ConfigError(f"--world must be one of {', '.join(WORLDS)}, got {self.world!r}")
        defaults = WORLD_DEFAULTS[self.world]
        self.recipe = self.recipe or preset(defaults["recipe"])
        self.resolution = self.resolution or defaults["resolution"]
        self.simclr_augment = self.simclr_augment or defaults["simclr_augment"]
        self.methods = tuple(self.methods or WORLD_METHODS[self.world])
        unknown = sorted(set(self.methods) - set(WORLD_METHODS[self.world]))
        if unknown:
            raise ConfigError(f"methods {unknown} do not exist in the {self.world} world; choose from {WORLD_METHODS[self.world]}")
        if not self.seeds:
            raise ConfigError("--seeds needs at least one seed, e.g. --seeds 0,1,2")
        if self.recipe.steps < 1:
            raise ConfigError(f"--steps must be >= 1, got {self.recipe.steps}")
        if self.captions < 1:
            raise ConfigError(f"--captions must be >= 1, got {self.captions}")
        if self.captions < self.recipe.captions_per_batch:
            raise ConfigError(f"--captions must be at least the recipe's {self.recipe.captions_per_batch} captions "
                              f"per batch, got {self.captions}")  # fmt: skip
        if self.fidelity is not None and self.fidelity < 0:
            raise ConfigError(f"--fidelity must be >= 0, got {self.fidelity}")
        if self.latent_std is not None and self.latent_std <= 0:
            raise ConfigError(f"--latent-std must be > 0, got {self.latent_std}")
        if self.max_regenerations < 1:
            raise ConfigError(f"--max-regenerations must be >= 1, got {self.max_regenerations}")
        if self.online and (self.min_score is not None or self.regenerate_below is not None):
            raise ConfigError("--min-score and --regenerate-below act on stored shards; drop them or --online")

    @classmethod
    def quick(cls, out: Path, **overrides) -> DemoConfig:
        """The CI size: about a minute on 2 CPU cores."""
        world = overrides.get("world", "digits")
        recipe = replace(preset(WORLD_DEFAULTS[world]["recipe"]), steps=6, warmup_steps=1, captions_per_batch=16,
                         images_per_caption=4)  # fmt: skip
        values = dict(captions=96, images_per_caption=4, recipe=recipe, curve_points=2, probe_per_class=8, shot_draws=2,
                      probe=ProbeConfig(sweep=(1e-3,)))  # fmt: skip
        return cls(out=out, **{**values, **overrides})

    def with_overrides(self, *, steps: int | None = None, seeds: Sequence[int] | None = None, **fields) -> DemoConfig:
        """A copy with ``fields`` replaced (None values ignored), ``seeds`` as a tuple and
        ``steps`` training steps per encoder (warm-up cut to fit); ConfigError for no seeds or
        fewer than one step. A new ``world`` brings its own defaults."""
        values = {name: value for name, value in fields.items() if value is not None}
        world = values.get("world", self.world)
        if world != self.world:
            values = {"recipe": preset(WORLD_DEFAULTS[world]["recipe"]), "resolution": None, "simclr_augment": None,
                      "methods": None, **values}  # fmt: skip
        if seeds is not None:
            values["seeds"] = tuple(seeds)
        if steps is not None:
            recipe = values.get("recipe", self.recipe)
            values["recipe"] = replace(recipe, steps=steps, warmup_steps=min(recipe.warmup_steps, steps))
        return replace(self, **values)


def run_demo(config: DemoConfig) -> dict:
    """Run the demo over ``config.seeds``; returns (and writes to ``out/results.json``) the
    accuracies per seed, their mean and standard deviation, curves and timings."""
    out = Path(config.out)
    if (out / RESULTS).exists() and not config.overwrite:
        raise OutputError(f"{out} holds the results of an earlier demo ({RESULTS}, {PLOT}): pass --overwrite to "
                          "replace them, or choose another --out")  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    wall, cpu = time.perf_counter(), _cpu_seconds()
    threads = torch.get_num_threads()
    # Online generation's workers have cores of their own; the model's threads take the rest (an
    # oversubscribed core stalls OpenMP's barriers). Stored images are augmented in this process.
    workers = config.num_workers if config.online else 0
    torch.set_num_threads(max(1, threads - workers))
    try:
        per_seed = {seed: _run_seed(config, seed, out / f"seed{seed}") for seed in config.seeds}
    finally:
        torch.set_num_threads(threads)
    data = [r["data"] for r in per_seed.values()]
    results = {
        "summary": summarise(per_seed),
        "data": {key: _stats([d[key] for d in data]) for key in data[0]},
        "per_seed": {str(seed): r for seed, r in per_seed.items()},
        "timings": {"total_s": time.perf_counter() - wall, "cpu_s": _cpu_seconds() - cpu, "cpus": os.cpu_count(),
                    "threads": torch.get_num_threads()},  # fmt: skip
        "config": _describe(config),
    }
    (out / RESULTS).write_text(json.dumps(results, indent=1))
    plot = _plot(results, out / PLOT)
    print(format_table(results))
    print(plot or f"(no {PLOT}: matplotlib is not installed)")
    return results


def study_variants(config: DemoConfig, study: str, values: Sequence) -> list[tuple[str, object, DemoConfig]]:
    """(name, value, config) of each variant of ``study``; every variant evaluates on the validation split.

    augment:    both generated-image methods' augmentation at each strength (Augment.at_strength)
    m:          multi-positive at each m, same images per step (the baselines once, with the first)
    fidelity:   the generator's fidelity (guidance) knob
    resolution: the generated (and saved) image side
    steps:      training steps per encoder
    """
    recipe, variants = config.recipe, []
    for i, value in enumerate(values):
        if study in ("m", "resolution", "steps"):  # counts (a command line gives floats)
            if value != int(value) or value < 1:
                raise ConfigError(f"--study {study} takes whole numbers >= 1, got {value:g}")
            value = int(value)
        if study == "augment":
            augment = Augment.at_strength(value)
            if config.world == "digits":  # a mirrored digit is another glyph: no flips in this world
                augment = replace(augment, flip_p=0.0)
            variant = replace(config, recipe=replace(recipe, augment=augment), simclr_augment=augment,
                              methods=tuple(m for m in config.methods if m != "simclr_real"))  # fmt: skip
        elif study == "m":
            variant = replace(config, recipe=replace(recipe, images_per_caption=value, captions_per_batch=recipe.batch_images // value),
                              images_per_caption=max(value, config.images_per_caption),
                              methods=config.methods if i == 0 else ("multipos",))  # fmt: skip
        elif study == "fidelity":
            variant = replace(config, fidelity=value, methods=("multipos", "simclr") if i == 0 else ("multipos",))
        elif study == "resolution":
            variant = replace(config, resolution=value, methods=("multipos", "simclr"))
        elif study == "steps":
            variant = replace(config, recipe=replace(recipe, steps=value, warmup_steps=min(recipe.warmup_steps, value)))
        else:
            raise ConfigError(f"--study must be one of {', '.join(STUDIES)}, got {study!r}")
        variants.append((f"{study}-{value:g}", value, replace(variant, validation=True, out=Path(config.out) / f"{study}-{value:g}")))
    return variants


def run_study(config: DemoConfig, study: str, values: Sequence | None = None) -> list[dict]:
    """Each variant of ``study`` (``study_variants``; default values: STUDY_VALUES) on the
    validation split. Writes ``out/study-STUDY[-VALUES].json``; returns its rows."""
    values = tuple(values or STUDY_VALUES[study])
    rows = []
    for name, value, variant in study_variants(config, study, values):
        summary = run_demo(variant)["summary"]
        rows += [{"study": study, "value": value, "method": method, **summary[method]} for method in summary]
    Path(config.out).mkdir(parents=True, exist_ok=True)
    Path(config.out, f"study-{study}-{'_'.join(f'{v:g}' for v in values)}.json").write_text(json.dumps(rows, indent=1))
    for row in rows:
        metrics = ", ".join(f"{k} {_pm(row[k])}" for k in accuracy_keys(row))
        print(f"{study}={row['value']:g} {row['method']}: {metrics}")
    return rows


def _run_seed(config: DemoConfig, seed: int, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    timings = {}
    # 1. Data: K images per caption (image 0 of each is the SimCLR-style set); the evaluation data.
    tick = time.perf_counter()
    data: dict = {}  # what _loaders records of the generated images
    loaders = _loaders(config, seed, out / "data", data)
    timings["generate_s"] = time.perf_counter() - tick
    evaluator = _evaluator(config, seed)

    # 2-3. Train each encoder with the same budget, evaluating along the way.
    results = {}
    for method in config.methods:
        run = _method_config(config, method, seed, out)
        print(f"seed {seed}, training {NAMES[method]}: {run.steps} steps of {run.batch_images} images "
              f"({run.captions_per_batch} captions x {run.images_per_caption}), {run.model} at {run.image_size} px", flush=True)  # fmt: skip
        results[method], timings[f"train_{method}_s"], timings[f"eval_{method}_s"] = _train_and_evaluate(
            config, run, loaders[method](run), evaluator)
    torch.manual_seed(seed)
    tick = time.perf_counter()
    results["random_init"] = evaluator(build_model(config.recipe).backbone)
    if config.world == "digits":
        results["raw_pixels"] = evaluator(None)
    timings["eval_baselines_s"] = time.perf_counter() - tick
    return {**results, "data": data, "timings": timings}


def _loaders(config: DemoConfig, seed: int, root: Path, data: dict) -> dict[str, Callable[[TrainConfig], object]]:
    """For each method, a function of its run's config giving its loader. Generated images are
    written as shards (as ``stablerep-fast generate`` writes them) and read back into memory.
    Records in ``data`` the images' mean score and how many were redrawn and (with ``min_score``,
    once the multi-positive loader is built) left out."""
    module = digits if config.world == "digits" else shapes
    captions_file = root / "captions.txt"
    root.mkdir(parents=True, exist_ok=True)
    captions = module.make_captions(config.captions, seed=seed, mode=config.caption_mode)
    captions_file.write_text("\n".join(captions) + "\n")
    # PNG: lossless at a few pixels a side; 64 captions per call: the procedural worlds draw batches at once.
    # Every image is scored by its world's truth scorer (cheap: re-derived from its caption and noise).
    k = 1 if config.online else config.images_per_caption  # image k depends only on (seed, caption, k)
    folder = root / f"images-k{k}"
    summary = generate(GenerateConfig(captions=captions_file, out=folder, model=config.world, images_per_caption=k,
                                      resolution=config.resolution, save_size=config.resolution, guidance=config.fidelity,
                                      seed=seed, image_format="png", batch_size=64, progress=False, scorer="truth",
                                      regenerate_below=config.regenerate_below, max_regenerations=config.max_regenerations,
                                      **_views(config)))  # fmt: skip
    data["mean_score"], data["redrawn"] = summary.scores["mean"], summary.scores["regenerated"]
    index = open_index(folder)
    images, _, _ = decode_index(index)
    first = images[:, 0].permute(0, 2, 3, 1)  # image 0 of each caption: [C, H, W, 3]
    options = dict(device=torch.device("cpu"))

    def in_memory(pixels: torch.Tensor | np.ndarray) -> Callable[[TrainConfig], MemoryLoader]:
        return lambda run: MemoryLoader.from_arrays(pixels, run.captions_per_batch, run.images_per_caption, seed=run.seed,
                                                    image_size=run.image_size, augment=run.augment, **options)  # fmt: skip

    def scored(run: TrainConfig) -> MemoryLoader:  # the multi-positive images scoring at least min_score, groups whole
        kept, data["images_left_out"], data["captions_left_out"] = filter_by_score(index, config.min_score, run.images_per_caption)
        return MemoryLoader.from_index(kept, run.captions_per_batch, run.images_per_caption, seed=run.seed,
                                       image_size=run.image_size, augment=run.augment, **options)  # fmt: skip

    # Online, train builds the multi-positive loader from its config (data = generator:WORLD).
    multipos = in_memory(images.permute(0, 1, 3, 4, 2)) if config.min_score is None else scored
    loaders = {"multipos": (lambda run: None) if config.online else multipos, "simclr": in_memory(first)}
    if config.world == "digits":
        loaders["simclr_real"] = in_memory(real_digits(config.recipe.image_size, validation=config.validation).train.x)
    return loaders


def _method_config(config: DemoConfig, method: str, seed: int, out: Path) -> TrainConfig:
    base = replace(config.recipe, seed=seed, progress=config.progress, resume=False, checkpoint_every=config.recipe.steps,
                   stop_at=None, out=str(out / method), data="")  # fmt: skip
    if method == "multipos" and config.online:
        return replace(base, data=f"generator:{config.world}", num_workers=config.num_workers,
                       online={"captions": str(out / "data" / "captions.txt"), "resolution": config.resolution,
                               "guidance": config.fidelity, **_views(config)})  # fmt: skip
    if method == "multipos":
        return base
    return replace(base, images_per_caption=2, captions_per_batch=base.batch_images // 2, augment=config.simclr_augment)


def _views(config: DemoConfig) -> dict:
    """The generation settings of ``config.latent_std``: none (independent noises) or latent neighbours."""
    return {} if config.latent_std is None else {"views": "latent-neighbors", "latent_std": config.latent_std}


Evaluator = Callable[[torch.nn.Module | None], dict]


def _evaluator(config: DemoConfig, seed: int) -> Evaluator:
    """encoder (None: raw pixels) -> its metrics on the world's evaluation data."""
    size, probe = config.recipe.image_size, config.probe
    if config.world == "shapes":
        sets = {label: load_probe_data(f"shapes:{label}", image_size=size, per_class=config.probe_per_class, seed=seed)
                for label in config.probe_labels}  # fmt: skip
        if config.validation:
            sets = {label: data.validation_split(probe.val_fraction, seed) for label, data in sets.items()}

        def shapes_metrics(encoder: torch.nn.Module) -> dict:
            by_label = {label: evaluate(encoder, data, probe, image_size=size) for label, data in sets.items()}
            return {"probe_acc": float(np.mean([r["probe_acc"] for r in by_label.values()])),
                    "knn_acc": float(np.mean([r["knn_acc"] for r in by_label.values()])),
                    "by_label": {label: {"probe_acc": r["probe_acc"], "knn_acc": r["knn_acc"]} for label, r in by_label.items()}}  # fmt: skip

        return shapes_metrics
    data = real_digits(size, validation=config.validation)

    def digit_metrics(encoder: torch.nn.Module | None) -> dict:
        if encoder is None:  # raw pixels: one grey channel, in [0, 1]
            features = [split.x[..., 0].reshape(len(split.x), -1).astype(np.float32) / 255 for split in (data.train, data.test)]
        else:
            features = [extract_features(encoder, split.x, image_size=size, batch_size=probe.batch_size, device=probe.device)
                        for split in (data.train, data.test)]  # fmt: skip
        feats = ProbeData(Split(features[0], data.train.y), Split(features[1], data.test.y), data.class_names)
        full = evaluate(None, feats, probe)
        shots = [evaluate(None, few_shot(feats, config.shots, seed=1000 * seed + draw), probe)["probe_acc"]
                 for draw in range(config.shot_draws)]  # fmt: skip
        return {"probe_acc": full["probe_acc"], "fewshot_acc": float(np.mean(shots)), "knn_acc": full["knn_acc"]}

    return digit_metrics


def _train_and_evaluate(config: DemoConfig, run: TrainConfig, loader, evaluator: Evaluator) -> tuple[dict, float, float]:
    """Train ``run`` in ``curve_points`` slices (resuming, so the schedule is the whole run's),
    evaluating after each; returns the final metrics with the curve, train and evaluation seconds."""
    stops = sorted({max(1, round(run.steps * (i + 1) / config.curve_points)) for i in range(config.curve_points)})
    curve, train_s, eval_s, losses = [], 0.0, 0.0, []
    for stop in stops:
        # The first slice starts over (a re-run of the demo trains again); the others resume.
        summary = train(replace(run, stop_at=stop, resume=stop != stops[0], overwrite=stop == stops[0], checkpoint_every=stop),
                        loader)  # fmt: skip
        train_s += summary.seconds
        losses += summary.losses
        tick = time.perf_counter()
        model, _ = load_model(summary.checkpoint)
        result = evaluator(model.backbone)
        eval_s += time.perf_counter() - tick
        curve.append({"step": stop, **{k: result[k] for k in accuracy_keys(result)}})
        print(f"  step {stop}: " + ", ".join(f"{k} {result[k]:.3f}" for k in accuracy_keys(result)), flush=True)
    result.update(curve=curve, steps=stops[-1], train_s=train_s, images_per_s=run.batch_images * stops[-1] / train_s,
                  first_loss=losses[0], last_loss=losses[-1])  # fmt: skip
    return result, train_s, eval_s


def accuracy_keys(result: dict) -> list[str]:
    """The accuracy keys of a result, in a fixed order."""
    return [k for k in ("fewshot_acc", "probe_acc", "knn_acc") if k in result]


def _stats(values: list[float]) -> dict:
    """Mean and sample standard deviation (0 for one value)."""
    return {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0}


def summarise(per_seed: dict[int, dict]) -> dict:
    """Mean and sample std over seeds of every encoder's metrics, per-label results and curve."""
    runs = list(per_seed.values())
    summary = {}
    for name in [name for name in ENCODERS if name in runs[0]]:
        r = [run[name] for run in runs]
        summary[name] = {k: _stats([x[k] for x in r]) for k in accuracy_keys(r[0])}
        if "by_label" in r[0]:
            summary[name]["by_label"] = {label: {k: _stats([x["by_label"][label][k] for x in r]) for k in ("probe_acc", "knn_acc")}
                                         for label in r[0]["by_label"]}  # fmt: skip
        if "curve" in r[0]:
            summary[name]["curve"] = [{"step": point["step"], **{k: _stats([x["curve"][i][k] for x in r]) for k in accuracy_keys(point)}}
                                      for i, point in enumerate(r[0]["curve"])]  # fmt: skip
    return summary


def _pm(stats: dict) -> str:
    return f"{stats['mean']:.3f} +- {stats['std']:.3f}"


def format_table(results: dict) -> str:
    """The summary as a text table (mean +- std over seeds)."""
    summary, seeds, config = results["summary"], len(results["per_seed"]), results["config"]
    labels = [label for label in config["probe_labels"] if config["world"] == "shapes"]
    metrics = accuracy_keys(next(iter(summary.values())))
    header = ["encoder", *metrics, *[f"probe_{label}" for label in labels]]
    fmt = _pm if seeds > 1 else (lambda x: f"{x['mean']:.3f}")
    rows = [header] + [[NAMES[name], *[fmt(s[k]) for k in metrics], *[fmt(s["by_label"][label]["probe_acc"]) for label in labels]]
                       for name, s in summary.items()]  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    if config["world"] == "digits":
        split = "a validation split of the real training scans" if config["validation"] else "the real test scans (599)"
        what = (f"real handwritten digits, {split}: {config['shots']}-shot and full linear probe (L-BFGS), kNN; "
                "encoders trained only on generated digits, except SimCLR-style (real scans)")  # fmt: skip
    else:
        split = "a validation split of the probe's training images" if config["validation"] else "held-out test images"
        what = f"shapes, {split}: linear probe (L-BFGS) and kNN, probe_acc = mean over {', '.join(labels)}"
    lines.append(f"{what}; {seeds} seed(s){', mean +- sample std' if seeds > 1 else ''}")
    data = results["data"]
    lines.append(f"generated images: mean consistency score {_pm(data['mean_score'])} (the world's truth), "
                 f"{data['redrawn']['mean']:g} redrawn per seed"
                 + (f", {data['images_left_out']['mean']:g} images and {data['captions_left_out']['mean']:g} captions left out "
                    "by min_score" if "images_left_out" in data else ""))  # fmt: skip
    t = results["timings"]
    lines.append(f"total {t['total_s']:.0f} s wall clock, {t['cpu_s']:.0f} s CPU time (this process and its workers)")
    return "\n".join(lines)


def _plot(results: dict, path: Path) -> Path | None:
    """The headline accuracy vs training step, each trained encoder (mean +- std band); the
    random-init encoder dashed, raw pixels dotted."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    summary, world = results["summary"], results["config"]["world"]
    key = accuracy_keys(next(iter(summary.values())))[0]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name in [name for name in summary if "curve" in summary[name]]:
        curve = summary[name]["curve"]
        steps = [p["step"] for p in curve]
        mean, std = (np.array([p[key][s] for p in curve]) for s in ("mean", "std"))
        ax.plot(steps, mean, marker="o", label=NAMES[name])
        ax.fill_between(steps, mean - std, mean + std, alpha=0.2)
    for name, style in (("random_init", "--"), ("raw_pixels", ":")):
        if name in summary:
            ax.axhline(summary[name][key]["mean"], color="grey", linestyle=style, label=NAMES[name])
    ax.set_xlabel("training step")
    what = {"fewshot_acc": f"{results['config']['shots']}-shot linear-probe", "probe_acc": "linear-probe"}[key]
    ax.set_ylabel(f"{what} accuracy" + (" on real digits" if world == "digits" else ""))
    ax.set_title(f"{world} demo, {len(results['per_seed'])} seed(s)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
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
