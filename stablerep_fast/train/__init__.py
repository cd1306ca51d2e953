"""Training stage: a timm ViT + MLP head (+ StableRep+ text tower) on the multi-positive loss.

    train(config, loader=None) -> TrainSummary    the loop (single process or DDP under torchrun)
    TrainConfig, PRESETS, preset                  settings ("tiny" for CPU demos, "vit_b16" the recipe)
    resolve_config                                preset -> YAML file -> "FIELD=YAML" -> settings
    build_model, load_model                       the model from a config or a checkpoint
"""

from stablerep_fast._deps import require_extra

require_extra("train")  # before the imports that need it: one line, not a traceback

from stablerep_fast.train.checkpoint import CHECKPOINT, load_checkpoint, load_model, save_checkpoint
from stablerep_fast.train.config import PRESETS, ConfigError, TrainConfig, preset, resolve_config
from stablerep_fast.train.loop import TrainSummary, train
from stablerep_fast.train.model import ProjectionHead, StableRepModel, SyncBatchNorm1d, Tokenizer, build_model

__all__ = [
    "CHECKPOINT",
    "PRESETS",
    "ConfigError",
    "ProjectionHead",
    "StableRepModel",
    "SyncBatchNorm1d",
    "Tokenizer",
    "TrainConfig",
    "TrainSummary",
    "build_model",
    "load_checkpoint",
    "load_model",
    "preset",
    "resolve_config",
    "save_checkpoint",
    "train",
]
