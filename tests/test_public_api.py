"""The public surface, frozen: each package's ``__all__`` and every ``stablerep-fast`` subcommand
with its flags. A change to either must be deliberate: update the lists here with it (and the
README)."""

import argparse
import importlib

import pytest

from stablerep_fast.cli import build_parser

PUBLIC_NAMES = {
    "stablerep_fast": [
        "MissingExtraError", "MultiPosConLoss", "MultiPosConLossMM", "__version__", "available_backends",
        "multipos_clip_loss", "multipos_con_loss",
    ],
    "stablerep_fast.generate": [
        "Captions", "DiffusersGenerator", "FAMILIES", "FarmStatus", "GenerateConfig", "GenerateError", "GenerateSummary",
        "GenerationOutput", "Generator", "StableRepPipeline", "farm_status", "generate", "initial_noise", "load_generator",
        "noise_seed", "read_captions", "shapes", "to_uint8_images",
    ],
    "stablerep_fast.data": [
        "AUGMENTS", "Augment", "BACKENDS", "GroupLoader", "GroupSampler", "OnlineConfig", "OnlineLoader", "ShardError",
        "ShardIndex", "SkipCounts", "available_backends", "build_loader", "open_index",
    ],
    "stablerep_fast.train": [
        "CHECKPOINT", "ConfigError", "PRESETS", "ProjectionHead", "StableRepModel", "SyncBatchNorm1d", "Tokenizer",
        "TrainConfig", "TrainSummary", "build_model", "load_checkpoint", "load_model", "preset", "resolve_config",
        "save_checkpoint", "train",
    ],
    "stablerep_fast.eval": [
        "METHODS", "ProbeConfig", "ProbeData", "ProbeResult", "Split", "evaluate", "extract_features", "knn_accuracy",
        "linear_probe", "load_probe_data", "probe_checkpoint",
    ],
    "stablerep_fast.bench": [
        "BenchError", "SUITES", "SUITE_TABLE", "Suite", "environment", "format_environment", "format_suite", "format_table",
        "run_bench", "run_loss_suite", "run_suite", "skipped",
    ],
}  # fmt: skip

# Per subcommand: its positional arguments, then its flags in --help order (-h left out).
COMMANDS = {
    "bench": [
        "--suite", "--device", "--quick", "--validate", "--budget", "--json", "--plot", "--repeats", "--sizes", "--dims",
        "--dtypes", "--backends", "--generate-backends", "--generate-families", "--sd-model", "--loaders", "--workers",
    ],
    "generate": [
        "--captions", "--caption-column", "--model", "--out", "--images-per-caption", "--steps", "--guidance",
        "--scheduler", "--resolution", "--save-size", "--seed", "--batch-size", "--shard-size", "--world-size", "--rank",
        "--assign", "--lease", "--device", "--dtype", "--backend", "--engine-cache", "--format", "--quality", "--views",
        "--latent-std", "--score", "--regenerate-below", "--max-regenerations", "--no-progress",
    ],
    "farm-status": ["folder", "--json", "--interval"],
    "train": [
        "--preset", "--config", "--data", "--out", "--model", "--image-size", "--captions-per-batch",
        "--images-per-caption", "--steps", "--warmup-steps", "--base-lr", "--weight-decay", "--temperature",
        "--loss-backend", "--precision", "--seed", "--device", "--loader-backend", "--num-workers", "--checkpoint-every",
        "--log-every", "--stop-at", "--min-score", "--text", "--resume", "--overwrite", "--tensorboard", "--no-progress", "--set",
    ],
    "probe": [
        "--data", "--checkpoint", "--method", "--sweep", "--epochs", "--batch-size", "--knn-k", "--image-size",
        "--per-class", "--seed", "--device", "--json",
    ],
    "demo": ["--out", "--world", "--quick", "--seeds", "--steps", "--captions", "--fidelity", "--latent-std", "--min-score",
             "--regenerate-below", "--max-regenerations", "--validation", "--study", "--study-values", "--online",
             "--overwrite", "--no-progress"],
    "sweep": ["--out", "--param", "--values", "--world", "--quick", "--seeds", "--steps", "--captions", "--fidelity",
              "--latent-std", "--min-score", "--regenerate-below", "--max-regenerations", "--overwrite", "--no-progress"],
}  # fmt: skip


@pytest.mark.parametrize("module", list(PUBLIC_NAMES))
def test_public_names(module):
    names = importlib.import_module(module).__all__
    assert len(names) == len(set(names)), f"{module}.__all__ names something twice"
    assert sorted(names) == sorted(PUBLIC_NAMES[module])


def _arguments(parser: argparse.ArgumentParser) -> list[str]:
    positional = [a.dest for a in parser._actions if not a.option_strings]
    return positional + [flag for a in parser._actions for flag in a.option_strings if flag not in ("-h", "--help")]


def test_command_line():
    (commands,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    assert list(commands.choices) == list(COMMANDS)
    for name, parser in commands.choices.items():
        assert _arguments(parser) == COMMANDS[name], name
