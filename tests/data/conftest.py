"""Small shard folders written by the real generation stage (``--model shapes``)."""

from pathlib import Path

import pytest
from helpers import require_stage

require_stage("data", "generate")  # the tests read shapes shards written by the generate stage

from stablerep_fast.generate import GenerateConfig, generate, shapes  # noqa: E402

CAPTIONS = 24
K = 4
SIZE = 48  # saved image side; loaders crop 32


def write_shards(folder: Path, captions: int = CAPTIONS, seed: int = 0, shard_size: int = 10) -> Path:
    """``folder`` holding ``captions`` shapes captions x K images of SIZE px, 10 captions a shard."""
    captions_file = folder.parent / f"captions-{captions}.txt"
    captions_file.write_text("\n".join(shapes.make_captions(captions)) + "\n")
    config = GenerateConfig(
        captions=captions_file,
        out=folder,
        model="shapes",
        images_per_caption=K,
        resolution=SIZE,
        save_size=SIZE,
        seed=seed,
        shard_size=shard_size,
        world_size=1,
        rank=0,
        device="cpu",
        progress=False,
    )
    generate(config)
    return folder


@pytest.fixture(scope="session")
def shards(tmp_path_factory) -> Path:
    """One folder: CAPTIONS captions, K images each, in 3 shards."""
    return write_shards(tmp_path_factory.mktemp("shards") / "seed0")
