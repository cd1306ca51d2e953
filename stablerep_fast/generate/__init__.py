"""Generation stage: captions -> K images per caption -> resumable WebDataset shards.

Public API:

    generate(config) -> GenerateSummary     this rank's shards of config.out (resumable)
    GenerateConfig, GenerateError           the settings; the one-line user-facing error
    StableRepPipeline                       Stable Diffusion, B captions x K given noises per call
    read_captions, initial_noise, noise_seed
    shapes                                  the procedural generator: make_captions, make_probe_set
"""

from stablerep_fast.generate import shapes
from stablerep_fast.generate.captions import Captions, read_captions
from stablerep_fast.generate.config import GenerateConfig, GenerateError
from stablerep_fast.generate.pipeline import GenerationOutput, StableRepPipeline
from stablerep_fast.generate.run import GenerateSummary, generate, load_pipeline
from stablerep_fast.generate.seeds import initial_noise, noise_seed

__all__ = [
    "Captions",
    "GenerateConfig",
    "GenerateError",
    "GenerateSummary",
    "GenerationOutput",
    "StableRepPipeline",
    "generate",
    "initial_noise",
    "load_pipeline",
    "noise_seed",
    "read_captions",
    "shapes",
]
