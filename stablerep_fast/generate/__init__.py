"""Generation stage: captions -> K images per caption -> resumable WebDataset shards.

Public API:

    generate(config) -> GenerateSummary     the shards of config.out (a folder or URL): claimed
                                            dynamically, or this rank's (static); resumable
    farm_status(folder) -> FarmStatus       shards done/claimed/left, images/s per host, ETA
    GenerateConfig, GenerateError           the settings (config.model: any Generator); the one-line error
    Generator, GenerationOutput             the protocol every generator satisfies, and its output
    load_generator                          "shapes", a diffusers folder (any family) or "pkg.module:Class"
    StableRepPipeline                       SD 1.x/2.x (and turbo, LCM-LoRA), B captions x K given noises per call
    DiffusersGenerator                      the other families, through diffusers' own __call__
    FAMILIES                                model families and their default steps, guidance, sampler
    read_captions, initial_noise, noise_seed
    shapes                                  the procedural generator: make_captions, render
"""

from stablerep_fast._deps import require_extra

require_extra("generate")  # before the imports that need it: one line, not a traceback

from stablerep_fast.generate import shapes
from stablerep_fast.generate.captions import Captions, read_captions
from stablerep_fast.generate.config import GenerateConfig, GenerateError
from stablerep_fast.generate.diffusers_pipeline import DiffusersGenerator
from stablerep_fast.generate.families import FAMILIES
from stablerep_fast.generate.farm_status import FarmStatus, farm_status
from stablerep_fast.generate.generator import GenerationOutput, Generator, load_generator, to_uint8_images
from stablerep_fast.generate.pipeline import StableRepPipeline
from stablerep_fast.generate.run import GenerateSummary, generate
from stablerep_fast.generate.seeds import initial_noise, noise_seed

__all__ = [
    "Captions",
    "DiffusersGenerator",
    "FAMILIES",
    "FarmStatus",
    "GenerateConfig",
    "GenerateError",
    "GenerateSummary",
    "GenerationOutput",
    "Generator",
    "StableRepPipeline",
    "farm_status",
    "generate",
    "initial_noise",
    "load_generator",
    "noise_seed",
    "read_captions",
    "shapes",
    "to_uint8_images",
]
