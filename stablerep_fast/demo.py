"""``stablerep-fast demo``: the whole method on a CPU in minutes, with its baselines.

1. generate captions and K images per caption with the procedural shapes generator;
2. train a small ViT with the multi-positive loss (m images of a caption are positives);
3. train the same ViT, same steps and images per step, SimCLR-style: one image per caption,
   two augmented views (the multi-positive loss with m = 2 views of the same image);
4. linear-probe both encoders and a random-init one on the generator's labelled held-out set
   (shape, texture and colour labels) and write a table and ``results.json``.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from stablerep_fast.eval import ProbeConfig, evaluate, load_probe_data
from stablerep_fast.generate import GenerateConfig, generate, shapes
from stablerep_fast.train import TrainConfig, build_model, load_model, preset, train


@dataclass
class DemoConfig:
    out: Path
    captions: int = 1024
    images_per_caption: int = 8  # K generated per caption for the multi-positive run
    views: int = 4  # m per caption in a multi-positive batch
    batch_images: int = 128  # images per step, both runs
    steps: int = 150
    probe_labels: tuple[str, ...] = ("shape", "texture", "colour")
    probe_per_class: int = 100
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    seed: int = 0
    num_workers: int = 1
    progress: bool = True
    train: TrainConfig = field(default_factory=lambda: preset("tiny"))

    @classmethod
    def quick(cls, out: Path, **overrides) -> DemoConfig:
        """The CI size: well under a minute on 2 CPU cores."""
        values = dict(captions=128, images_per_caption=4, batch_images=64, steps=8, probe_per_class=12,
                      probe=ProbeConfig(sweep=(1e-3,)))
        return cls(out=out, **{**values, **overrides})


def run_demo(config: DemoConfig) -> dict:
    """Run the demo; returns (and writes to ``out/results.json``) accuracies and timings."""
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    started = time.perf_counter()

    # 1. Data: K images per caption; the SimCLR set pools one image per caption with itself.
    tick = time.perf_counter()
    captions_file = out / "captions.txt"
    captions_file.write_text("\n".join(shapes.make_captions(config.captions, seed=config.seed)) + "\n")
    multipos_data, single = out / "data" / "multipos", out / "data" / "single"
    gen = dict(captions=captions_file, model="shapes", resolution=64, save_size=64, seed=config.seed, progress=False)
    generate(GenerateConfig(out=multipos_data, images_per_caption=config.images_per_caption, **gen))
    generate(GenerateConfig(out=single, images_per_caption=1, **gen))  # image 0 of each caption, same seeds
    single_copy = out / "data" / "single-copy"
    if not single_copy.exists():
        shutil.copytree(single, single_copy)
    timings["generate_s"] = time.perf_counter() - tick

    # 2-3. Train both encoders with the same budget.
    base = replace(config.train, steps=config.steps, warmup_steps=max(1, config.steps // 10),
                   checkpoint_every=config.steps, seed=config.seed, num_workers=config.num_workers,
                   progress=config.progress, resume=False)  # fmt: skip
    runs = {
        "multipos": replace(base, data=str(multipos_data), images_per_caption=config.views,
                            captions_per_batch=config.batch_images // config.views, out=str(out / "multipos")),
        "simclr": replace(base, data=[str(single), str(single_copy)], images_per_caption=2,
                          captions_per_batch=config.batch_images // 2, out=str(out / "simclr")),
    }  # fmt: skip
    encoders, summaries = {}, {}
    for name, run in runs.items():
        print(f"training {name}: {run.steps} steps of {run.batch_images} images "
              f"({run.captions_per_batch} captions x {run.images_per_caption})")  # fmt: skip
        summary = train(run)
        model, _ = load_model(summary.checkpoint)
        encoders[name], summaries[name] = model.backbone, summary
        timings[f"train_{name}_s"] = summary.seconds
    torch.manual_seed(config.seed)
    encoders["random_init"] = build_model(base).backbone

    # 4. Probe every encoder on every label of the held-out set.
    tick = time.perf_counter()
    probe = replace(config.probe, seed=config.seed)
    by_label = {name: {} for name in encoders}
    for label in config.probe_labels:
        data = load_probe_data(f"shapes:{label}", image_size=base.image_size, per_class=config.probe_per_class, seed=config.seed)
        for name, encoder in encoders.items():
            by_label[name][label] = evaluate(encoder, data, probe, image_size=base.image_size)
    timings["probe_s"] = time.perf_counter() - tick
    timings["total_s"] = time.perf_counter() - started

    results = {}
    for name in encoders:
        accs = {label: r["probe_acc"] for label, r in by_label[name].items()}
        results[name] = {
            "probe_acc": sum(accs.values()) / len(accs),
            "knn_acc": sum(r["knn_acc"] for r in by_label[name].values()) / len(accs),
            "probe_acc_by_label": accs,
        }
        if name in summaries:
            s = summaries[name]
            results[name].update(train_s=s.seconds, images_per_s=s.images_per_second, steps=s.step,
                                 first_loss=s.losses[0], last_loss=s.losses[-1])  # fmt: skip
    results["timings"] = timings
    results["config"] = {k: v for k, v in asdict(config).items() if k not in ("out", "train")}
    results["config"]["model"] = {"name": base.model, **base.model_kwargs, "image_size": base.image_size}
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    print(format_table(results, config.probe_labels))
    return results


def format_table(results: dict, labels: tuple[str, ...]) -> str:
    header = ["encoder", "probe_acc", *[f"{label}" for label in labels], "knn_acc", "train_s"]
    rows = [header]
    for name in ("multipos", "simclr", "random_init"):
        r = results[name]
        rows.append([name, f"{r['probe_acc']:.3f}", *[f"{r['probe_acc_by_label'][label]:.3f}" for label in labels],
                     f"{r['knn_acc']:.3f}", f"{r['train_s']:.0f}" if "train_s" in r else "-"])  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    t = results["timings"]
    lines.append(f"linear probe (L-BFGS) accuracy on the held-out shapes set; probe_acc = mean over {', '.join(labels)}")
    lines.append(f"total {t['total_s']:.0f} s: generate {t['generate_s']:.0f} s, probe {t['probe_s']:.0f} s")
    return "\n".join(lines)
