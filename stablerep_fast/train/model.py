"""The StableRep model: a timm backbone, the MLP head with per-view BN, and (StableRep+) a
CLIP-style text tower with image/text projections and a learnable logit scale."""

from __future__ import annotations

import math
from typing import Sequence

import timm
import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import nn

from stablerep_fast._deps import TEXT_TOWER_MODULES, require_extra
from stablerep_fast.ops.distributed import active_group
from stablerep_fast.train.config import TrainConfig

MAX_LOGIT_SCALE = 100.0
INIT_LOGIT_SCALE = 1 / 0.07


class SyncBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d whose training statistics span all ranks (sum and centred sum of squares
    reduced with differentiable all-reduces), on any device and backend, gloo included;
    a plain BatchNorm1d in one process or in eval mode."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        group = active_group()
        if not self.training or group is None:
            return super().forward(x)
        count = torch.tensor([x.shape[0]], dtype=x.dtype, device=x.device)
        dist.all_reduce(count, group=group)
        mean = dist_fn.all_reduce(x.sum(0), group=group) / count
        var = dist_fn.all_reduce((x - mean).pow(2).sum(0), group=group) / count
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            unbiased = var * (count / (count - 1).clamp(min=1))
            self.running_mean.lerp_(mean.to(self.running_mean.dtype), self.momentum)
            self.running_var.lerp_(unbiased.to(self.running_var.dtype), self.momentum)
        y = (x - mean) * torch.rsqrt(var + self.eps)
        return y * self.weight + self.bias if self.affine else y


class ProjectionHead(nn.Module):
    """Linear-BN-ReLU, Linear-BN-ReLU, Linear; BN statistics per view ("separate BN")."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden), SyncBatchNorm1d(hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden), SyncBatchNorm1d(hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, out_dim),
        )  # fmt: skip

    def forward(self, x: torch.Tensor, views: int = 1) -> torch.Tensor:
        """x: [views * n, in_dim], view-major -> [views * n, out_dim]."""
        if x.shape[0] % views:
            raise ValueError(f"{x.shape[0]} rows do not split into {views} views")
        return torch.cat([self.mlp(chunk) for chunk in x.chunk(views)])


class Tokenizer:
    """CLIP's BPE tokenizer (open_clip ships its vocabulary: works offline)."""

    vocab_size = 49408

    def __init__(self, context_length: int):
        require_extra("train", TEXT_TOWER_MODULES)
        from open_clip.tokenizer import SimpleTokenizer

        self._tokenize = SimpleTokenizer(context_length=context_length)

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        """[len(texts), context_length] int64 token ids, truncated with EOT kept last."""
        return self._tokenize(list(texts))


class StableRepModel(nn.Module):
    """``forward(images, views, tokens=None)`` -> dict with ``feats`` [N, head_dim] for the
    image-image loss; with the text tower also ``image_emb``, ``text_emb``, ``logit_scale``."""

    def __init__(self, backbone: nn.Module, head: ProjectionHead, text: nn.Module | None = None, embed_dim: int = 0):
        super().__init__()
        self.backbone, self.head, self.text = backbone, head, text
        if text is not None:
            self.image_proj = nn.Linear(backbone.num_features, embed_dim, bias=False)
            self.logit_scale = nn.Parameter(torch.tensor(math.log(INIT_LOGIT_SCALE)))

    def forward(self, images: torch.Tensor, views: int, tokens: torch.Tensor | None = None) -> dict:
        h = self.backbone(images)
        out = {"feats": self.head(h, views)}
        if self.text is not None:
            if tokens is None:
                raise ValueError("the text tower needs tokens")
            out["image_emb"] = self.image_proj(h)
            out["text_emb"] = self.text(tokens)
            out["logit_scale"] = self.logit_scale.clamp(max=math.log(MAX_LOGIT_SCALE)).exp()
        return out


def build_backbone(config: TrainConfig) -> nn.Module:
    """The timm model ``config.model``, random init, pooled features (no classifier)."""
    try:
        return timm.create_model(config.model, pretrained=False, num_classes=0, **config.model_kwargs)
    except RuntimeError as exc:  # timm's "Unknown model"
        raise ValueError(f"timm cannot build {config.model!r}: {exc}") from exc


def build_model(config: TrainConfig) -> StableRepModel:
    backbone = build_backbone(config)
    head = ProjectionHead(backbone.num_features, config.head_hidden, config.head_dim)
    text = None
    if config.text:
        require_extra("train", TEXT_TOWER_MODULES)
        from open_clip.transformer import TextTransformer

        text = TextTransformer(
            context_length=config.context_length, vocab_size=Tokenizer.vocab_size, width=config.text_width,
            heads=config.text_heads, layers=config.text_layers, output_dim=config.embed_dim,
        )  # fmt: skip
    return StableRepModel(backbone, head, text, config.embed_dim)
