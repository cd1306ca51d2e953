"""Tiny random-weight Stable Diffusion built from configs (no downloads), and caption files."""

from pathlib import Path

import pytest
import torch
from helpers import require_stage

require_stage("generate")

from stablerep_fast.generate import StableRepPipeline, shapes  # noqa: E402
from stablerep_fast.testing import random_sd_components  # noqa: E402

def build_tiny_sd(folder: Path) -> Path:
    """Save a tiny diffusers StableDiffusionPipeline (about 0.6 MB) to ``folder``."""
    from diffusers import StableDiffusionPipeline

    folder.mkdir(parents=True, exist_ok=True)
    pipe = StableDiffusionPipeline(
        **random_sd_components("tiny", folder), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder / "tiny-sd")
    return folder / "tiny-sd"


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory) -> Path:
    return build_tiny_sd(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def tiny_sd(tiny_sd_dir) -> StableRepPipeline:
    return StableRepPipeline.from_pretrained(tiny_sd_dir, device=torch.device("cpu"), dtype=torch.float32)


@pytest.fixture
def captions_file(tmp_path):
    """Write ``n`` shapes captions to a .txt file; returns its path."""

    def write(n: int, seed: int = 0, name: str = "captions.txt") -> Path:
        path = tmp_path / name
        path.write_text("\n".join(shapes.make_captions(n, seed)) + "\n")
        return path

    return write
