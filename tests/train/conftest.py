"""Training fixtures: a micro ViT config and an in-memory loader with the real loader's interface."""

from dataclasses import replace

import pytest
import torch
from helpers import require_stage

require_stage("train")

from stablerep_fast.train import preset  # noqa: E402


class ListLoader:
    """Yields fixed (images, labels) batches; ``step`` is the position and ``caption_texts``
    the captions (a dict by id), as in the real loader."""

    def __init__(self, batches, captions=None):
        self.batches, self.step, self.captions = batches, 0, captions or {}

    def caption_texts(self, caption_ids):
        return [self.captions[i] for i in caption_ids]

    def __iter__(self):
        """From the current position to the end of its epoch."""
        for i in range(self.step % len(self.batches), len(self.batches)):
            self.step += 1
            yield self.batches[i]

    def state_dict(self):
        return {"step": self.step}

    def load_state_dict(self, state):
        self.step = state["step"]


def view_major_batch(n: int, m: int, size: int, first_caption: int = 0, dtype=torch.float32, seed: int = 0):
    """n captions x m views: views of a caption share a random template plus noise."""
    g = torch.Generator().manual_seed(seed)
    templates = torch.randn(n, 3, size, size, generator=g, dtype=dtype)
    images = torch.cat([templates + 0.3 * torch.randn(n, 3, size, size, generator=g, dtype=dtype) for _ in range(m)])
    labels = (torch.arange(n) + first_caption).repeat(m)
    return images, labels


@pytest.fixture
def micro_config(tmp_path):
    """A 1-block ViT at 16 px: a training step takes milliseconds."""
    return replace(
        preset("tiny"),
        model_kwargs={"img_size": 16, "patch_size": 8, "depth": 1, "embed_dim": 32, "num_heads": 2},
        image_size=16, head_hidden=32, head_dim=16, text_width=32, text_layers=1, text_heads=2,
        context_length=16, embed_dim=16, captions_per_batch=4, images_per_caption=2,
        steps=6, warmup_steps=1, checkpoint_every=3, log_every=1, progress=False, out=str(tmp_path / "run"),
    )  # fmt: skip
