"""``stablerep-fast``: the package's command line.

Each subcommand turns its flags into one call of its stage's library function and prints what
that returns: ``bench`` (whose flags are the bench's own command line, bench/__main__.py),
``generate``, ``farm-status``, ``train``, ``probe``, ``demo``, ``sweep``. With ``python -m
stablerep_fast.bench``, the only code that parses argv.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from pathlib import Path

from stablerep_fast._command import csv_list, run_command
from stablerep_fast._deps import MissingExtraError


def _add_bench(subparsers) -> None:
    from stablerep_fast.bench.__main__ import add_arguments, run

    p = subparsers.add_parser("bench", help="measure every stage against its baseline and physical floor")
    add_arguments(p)
    p.set_defaults(func=run)


def _add_generate(subparsers) -> None:
    from stablerep_fast.generate.farm.config import ASSIGN_CHOICES, BACKEND_CHOICES, DTYPE_CHOICES, IMAGE_FORMATS, GenerateConfig
    from stablerep_fast.generate.models.families import SCHEDULER_ALIASES
    from stablerep_fast.generate.farm.seeds import VIEWS

    d = GenerateConfig(captions=Path(), out=Path())  # the defaults
    p = subparsers.add_parser("generate", help="captions -> K images per caption -> resumable WebDataset shards")
    p.add_argument("--captions", type=Path, required=True, help=".txt (one per line), .csv/.tsv/.parquet (a caption column) or .jsonl")
    p.add_argument("--caption-column", default=None, help="caption column of a table (default: caption/text/prompt/title)")
    p.add_argument("--model", default=d.model,
                   help="'shapes' (procedural, no weights), a diffusers folder, a single-file checkpoint, or your own "
                        "generator class as package.module:Class (instantiated with no arguments)")  # fmt: skip
    p.add_argument("--out", type=_location, required=True,
                   help="output folder or fsspec URL (s3://, gs://, file://); re-running resumes")  # fmt: skip
    p.add_argument("--images-per-caption", type=int, default=d.images_per_caption, metavar="K")
    p.add_argument("--steps", type=int, default=d.steps, help="denoising steps (default: the model family's, e.g. 50 for SD 1.5, 1 for SD-Turbo)")
    p.add_argument("--guidance", type=float, default=d.guidance,
                   help="guidance scale; <= 1 skips the unconditional pass (default: the family's, e.g. 2 for SD 1.5, 0 for turbo)")  # fmt: skip
    p.add_argument("--scheduler", default=d.scheduler,
                   help=f"sampler: {', '.join(SCHEDULER_ALIASES)}, a diffusers scheduler class name, or 'default' (the "
                        "model folder's own) (default: the family's, DDIM for SD 1.x/2.x)")  # fmt: skip
    p.add_argument("--resolution", type=int, default=d.resolution, help="generated size in pixels")
    p.add_argument("--save-size", type=int, default=d.save_size, help="saved size in pixels")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="captions per call (x K images)")
    p.add_argument("--shard-size", type=int, default=d.shard_size, help="captions per shard")
    p.add_argument("--world-size", type=int, default=None, help="default: WORLD_SIZE or SLURM_NTASKS, else 1")
    p.add_argument("--rank", type=int, default=None, help="default: RANK or SLURM_PROCID, else 0")
    p.add_argument("--assign", choices=ASSIGN_CHOICES, default=d.assign,
                   help="dynamic (default): every process claims the next free shard and takes over claims whose lease "
                        "ran out (any number of processes on one folder); static: rank r writes shards s %% world size == r")  # fmt: skip
    p.add_argument("--lease", type=float, default=d.lease, metavar="SECONDS",
                   help=f"dynamic: a claim not renewed for this long is taken over (default {d.lease:g})")  # fmt: skip
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--dtype", choices=DTYPE_CHOICES, default=d.dtype, help="auto: float16 on GPU (bfloat16 for SD3, PixArt, FLUX), float32 on CPU")
    p.add_argument("--backend", choices=BACKEND_CHOICES, default=d.backend, help="auto: tensorrt, else compile on GPU, else eager")
    p.add_argument("--engine-cache", type=Path, default=None, metavar="DIR",
                   help="TensorRT engines and torch.compile artefacts (default: $STABLEREP_FAST_CACHE or ~/.cache/stablerep_fast)")  # fmt: skip
    p.add_argument("--format", dest="image_format", choices=IMAGE_FORMATS, default=d.image_format)
    p.add_argument("--quality", type=int, default=d.quality, help="JPEG quality")
    p.add_argument("--views", choices=VIEWS, default=d.views, help="latent-neighbors: K noises around one anchor")
    p.add_argument("--latent-std", type=float, default=d.latent_std, metavar="SIGMA")
    p.add_argument("--score", dest="scorer", default=None, metavar="NAME",
                   help="record a caption-image consistency score per image: truth (the procedural world's own: digits, "
                        "shapes), clip:FOLDER (local OpenCLIP weights) or package.module:Class; histogram in OUT/dataset.json")  # fmt: skip
    p.add_argument("--regenerate-below", type=float, default=None, metavar="X",
                   help="redraw images scoring below X from new deterministic seeds (needs --score)")  # fmt: skip
    p.add_argument("--max-regenerations", type=int, default=d.max_regenerations, metavar="R",
                   help=f"redraws per image at most (default {d.max_regenerations})")  # fmt: skip
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=_run_generate)


def _run_generate(args: argparse.Namespace) -> int:
    from dataclasses import fields

    from stablerep_fast.generate import GenerateConfig, generate

    config = GenerateConfig(**{f.name: getattr(args, f.name) for f in fields(GenerateConfig)})
    _import_from_cwd()  # --model my_module:MyGenerator finds modules in the current folder
    print(generate(config).format(config.captions))
    return 0


def _import_from_cwd() -> None:
    """Let an import path (``my_module:MyGenerator``) name modules in the current folder."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())


def _location(text: str) -> str | Path:
    """A folder (Path) or an fsspec URL (kept as text)."""
    from stablerep_fast.storage import is_url

    return text if is_url(text) else Path(text)


def _add_farm_status(subparsers) -> None:
    p = subparsers.add_parser("farm-status", help="shards done/claimed/left, images/s per host and ETA of a generation farm")
    p.add_argument("folder", type=_location, metavar="DIR", help="the --out of the farm (a folder or fsspec URL)")
    p.add_argument("--json", action="store_true", help="one JSON object, for scripts")
    p.add_argument("--interval", type=float, default=600.0, metavar="SECONDS", help="images/s over this last stretch")
    p.set_defaults(func=_run_farm_status)


def _run_farm_status(args: argparse.Namespace) -> int:
    from stablerep_fast.generate.farm.status import farm_status, format_status

    status = farm_status(args.folder, interval=args.interval)
    print(status.to_json() if args.json else format_status(status))
    return 0


# Train flags that map one-to-one onto TrainConfig fields: (flag, field, type, help).
TRAIN_FLAGS = [
    ("--data", "data", str, "shard folder(s) from `generate` (a folder or a brace pattern), or generator:MODEL to "
                             "generate every batch while training (MODEL: shapes, a diffusers folder, package.module:Class; "
                             "settings: --set 'online={views: latent-neighbors, captions: FILE}')"),
    ("--out", "out", str, "run folder: checkpoint.pt, config.yaml, log.jsonl"),
    ("--model", "model", str, "timm model name (random init)"),
    ("--image-size", "image_size", int, "training crop size in pixels"),
    ("--captions-per-batch", "captions_per_batch", int, "n, over all ranks"),
    ("--images-per-caption", "images_per_caption", int, "m, positives per caption"),
    ("--steps", "steps", int, "total optimizer steps (the schedule's length)"),
    ("--warmup-steps", "warmup_steps", int, "linear warm-up steps"),
    ("--base-lr", "base_lr", float, "lr per 256 images (lr = base_lr * batch / 256)"),
    ("--weight-decay", "weight_decay", float, "AdamW weight decay (not on biases, norms, 1-d params)"),
    ("--temperature", "temperature", float, "tau of the multi-positive loss"),
    ("--loss-backend", "loss_backend", str, "multipos loss backend (auto picks the fused one)"),
    ("--precision", "precision", str, "auto (bf16 autocast on GPU), bf16 or fp32"),
    ("--seed", "seed", int, "data order, augmentation and initial weights"),
    ("--device", "device", str, "default: cuda when available"),
    ("--loader-backend", "loader_backend", str, "auto, dali, torch or memory"),
    ("--num-workers", "num_workers", int, "loader workers (default: min(8, CPUs))"),
    ("--checkpoint-every", "checkpoint_every", int, "steps between checkpoints"),
    ("--log-every", "log_every", int, "steps between log records"),
    ("--stop-at", "stop_at", int, "stop after this step (the schedule still spans --steps); --resume continues"),
    ("--min-score", "min_score", float, "leave out images whose consistency score (generate --score) is below this, "
                                        "and captions left with fewer than m images"),
]


def _add_train(subparsers) -> None:
    from stablerep_fast.train import PRESETS

    p = subparsers.add_parser("train", help="train a ViT with the multi-positive loss on generated shards, or on images generated while training")
    p.add_argument("--preset", choices=list(PRESETS), default="vit_b16", help="starting settings (tiny: CPU-sized)")
    p.add_argument("--config", type=Path, default=None, help="YAML of TrainConfig fields, applied over the preset")
    for flag, name, kind, text in TRAIN_FLAGS:
        p.add_argument(flag, dest=name, type=kind, default=None, help=text)
    p.add_argument("--text", action="store_true", default=None, help="StableRep+: add the text tower and image-text loss")
    p.add_argument("--resume", action="store_true", default=None, help="continue from OUT/checkpoint.pt")
    p.add_argument("--overwrite", action="store_true", default=None,
                   help="start over in an OUT that holds a checkpoint (without it or --resume, such an OUT is refused)")
    p.add_argument("--tensorboard", action="store_true", default=None, help="also log to OUT/tensorboard")
    p.add_argument("--no-progress", dest="progress", action="store_const", const=False, default=None)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=YAML",
                   help="any other TrainConfig field, e.g. --set 'model_kwargs={img_size: 32, patch_size: 4}'")
    p.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from stablerep_fast.train import resolve_config, train

    flags = [name for _, name, _, _ in TRAIN_FLAGS] + ["text", "resume", "overwrite", "tensorboard", "progress"]
    config = resolve_config(args.preset, args.config, args.overrides, **{name: getattr(args, name) for name in flags})
    config.validate()
    _import_from_cwd()  # --data generator:my_module:MyGenerator
    print(train(config).format())
    return 0


def _add_probe(subparsers) -> None:
    from stablerep_fast.eval import METHODS, ProbeConfig

    d = ProbeConfig()
    p = subparsers.add_parser("probe", help="linear probe + kNN of a checkpoint's frozen backbone")
    p.add_argument("--data", required=True, help="ImageFolder tree (train/ + val/), a .npz, or shapes[:ATTRIBUTE]")
    p.add_argument("--checkpoint", type=Path, default=None, help="a `train` checkpoint (not needed for a features .npz)")
    p.add_argument("--method", choices=METHODS, default=d.method, help="lbfgs: fast full-batch; sgd: the paper's protocol")
    p.add_argument("--sweep", type=csv_list(float), default=None, help="learning rates (sgd) or L2 strengths (lbfgs)")
    p.add_argument("--epochs", type=int, default=d.epochs, help="sgd epochs")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--knn-k", type=int, default=d.knn_k)
    p.add_argument("--image-size", type=int, default=None, help="default: the checkpoint's training size")
    p.add_argument("--per-class", type=int, default=100, help="shapes: training images per class")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", default=d.device)
    p.add_argument("--json", type=Path, default=None, help="write the result to this file")
    p.set_defaults(func=_run_probe)


def _run_probe(args: argparse.Namespace) -> int:
    from stablerep_fast.eval import ProbeConfig, probe_checkpoint

    config = ProbeConfig(method=args.method, sweep=tuple(args.sweep) if args.sweep else None, epochs=args.epochs,
                         batch_size=args.batch_size, knn_k=args.knn_k, seed=args.seed, device=args.device)  # fmt: skip
    result = probe_checkpoint(args.data, args.checkpoint, config, image_size=args.image_size, per_class=args.per_class)
    print(json.dumps(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


def _add_demo(subparsers) -> None:
    from stablerep_fast.demo import STUDIES, WORLDS, DemoConfig

    d = DemoConfig(out=Path())
    p = subparsers.add_parser("demo", help="generated digits -> multi-positive vs SimCLR (generated and real) vs random init "
                                           "vs raw pixels, judged on real digits, on a CPU in minutes")  # fmt: skip
    p.add_argument("--out", type=Path, required=True, help="output folder: data, runs, results.json, probe_vs_step.png")
    p.add_argument("--world", choices=WORLDS, default=None, help=f"generated world (default {d.world}; shapes: the older one)")
    p.add_argument("--quick", action="store_true", help="a reduced run (about a minute) for CI")
    p.add_argument("--seeds", type=csv_list(int), default=None, help="comma list, e.g. 0,1,2: mean +- std over seeds (default 0)")
    p.add_argument("--steps", type=int, default=None, help=f"training steps per encoder (default {d.recipe.steps})")
    p.add_argument("--captions", type=int, default=None, help=f"captions to generate (default {d.captions})")
    _add_data_flags(p)
    p.add_argument("--validation", action="store_true",
                   help="evaluate on a split of the real training scans, never the test scans (choosing settings)")
    p.add_argument("--study", choices=STUDIES, default=None,
                   help="accuracy per value of one recipe setting, on the validation split (values: --study-values)")
    p.add_argument("--study-values", type=csv_list(float), default=None, help="comma list of the study's values")
    p.add_argument("--online", action="store_true",
                   help="train multi-positive on images generated while training (same captions) instead of stored shards")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier demo's results in --out")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from stablerep_fast.demo import DemoConfig, run_demo, run_study

    config = DemoConfig.quick(args.out, world=args.world or "digits") if args.quick else DemoConfig(out=args.out)
    config = config.with_overrides(seeds=args.seeds, steps=args.steps, captions=args.captions, progress=args.progress,
                                   validation=args.validation, online=args.online, world=args.world,
                                   overwrite=args.overwrite or None, **_data_flags(args))  # fmt: skip
    if args.study:
        run_study(config, args.study, args.study_values)
    else:
        run_demo(config)
        print(f"wrote {args.out / 'results.json'}")
    return 0


def _add_data_flags(p: argparse.ArgumentParser) -> None:
    """The demo's (and sweep's) settings of its generated images."""
    p.add_argument("--fidelity", type=float, default=None, help="the generator's guidance: how closely images follow their caption")
    p.add_argument("--latent-std", type=float, default=None,
                   help="GenRep latent-neighbour views: the spread of a caption's noises (default: independent noises)")
    p.add_argument("--min-score", type=float, default=None,
                   help="train multi-positive only on images whose truth score is at least this (groups kept whole)")
    p.add_argument("--regenerate-below", type=float, default=None, help="redraw images whose truth score is below this")
    p.add_argument("--max-regenerations", type=int, default=None, help="redraws per image at most (default 1)")


def _data_flags(args: argparse.Namespace) -> dict:
    return {name: getattr(args, name) for name in ("fidelity", "latent_std", "min_score", "regenerate_below", "max_regenerations")}


def _add_sweep(subparsers) -> None:
    from stablerep_fast.demo import WORLDS
    from stablerep_fast.sweep import PARAMS

    p = subparsers.add_parser("sweep", help="one generation parameter over values: generate, train (demo recipe), probe "
                                            "on the validation split; sweep.json and a plot with the mean consistency score")  # fmt: skip
    p.add_argument("--out", type=Path, required=True, help="output folder: one demo per value, sweep.json, sweep.png")
    p.add_argument("--param", choices=list(PARAMS), required=True, help="guidance_scale: the procedural worlds' fidelity; latent_std: GenRep's latent-neighbour spread; min_score: the load-time filter")
    p.add_argument("--values", type=csv_list(float), required=True, help="comma list, e.g. 1,2,4,8")
    p.add_argument("--world", choices=WORLDS, default="digits")
    p.add_argument("--quick", action="store_true", help="the demo's CI size")
    p.add_argument("--seeds", type=csv_list(int), default=None, help="comma list (default 0)")
    p.add_argument("--steps", type=int, default=None, help="training steps per value")
    p.add_argument("--captions", type=int, default=None, help="captions to generate per value")
    _add_data_flags(p)
    p.add_argument("--overwrite", action="store_true", help="replace an earlier sweep in --out")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(func=_run_sweep)


def _run_sweep(args: argparse.Namespace) -> int:
    from stablerep_fast.demo import DemoConfig
    from stablerep_fast.sweep import SWEEP_FILE, format_sweep, run_sweep

    config = DemoConfig.quick(args.out, world=args.world) if args.quick else DemoConfig(out=args.out, world=args.world)
    config = config.with_overrides(seeds=args.seeds, steps=args.steps, captions=args.captions, progress=args.progress,
                                   overwrite=args.overwrite or None, **_data_flags(args))  # fmt: skip
    print(format_sweep(run_sweep(config, args.param, args.values)))
    print(f"wrote {args.out / SWEEP_FILE}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stablerep-fast",
        description="StableRep, fast: generate synthetic images, train with the multi-positive loss, probe, benchmark.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name, add in (("bench", _add_bench), ("generate", _add_generate), ("farm-status", _add_farm_status),
                      ("train", _add_train), ("probe", _add_probe), ("demo", _add_demo), ("sweep", _add_sweep)):  # fmt: skip
        try:
            add(subparsers)
        except MissingExtraError as exc:  # the stage's extra is not installed: the command says so
            _add_missing(subparsers, name, exc)
    return parser


def _add_missing(subparsers, name: str, exc: MissingExtraError) -> None:
    """A subcommand whose stage cannot be imported here: it prints the one-line hint and exits 2."""
    p = subparsers.add_parser(name, help=f"(not installed) {exc}", add_help=False)
    p.set_defaults(func=functools.partial(_raise, exc), takes_any_arguments=True)


def _raise(exc: Exception, args: argparse.Namespace) -> int:
    raise exc  # main turns it into one line and exit code 2


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``stablerep-fast`` console script. A problem with the user's input or
    environment is one line on stderr (what, where, what to do) and exit code 2."""
    return run_command(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
