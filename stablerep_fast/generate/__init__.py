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

Inside, three rooms that import downwards only (farm -> models -> runtime):

    models/    the Generator protocol, its loader, the diffusers families and pipelines, procedural worlds
    runtime/   one backend interface for every pipeline: eager, compile + CUDA graphs, tensorrt/
    farm/      generate(): settings, captions, seeds, claims, the shard writer, farm status
"""

from stablerep_fast._deps import require_extra

require_extra("generate")  # before the imports that need it: one line, not a traceback

from stablerep_fast.errors import GenerateError
from stablerep_fast.generate.farm.captions import Captions, read_captions
from stablerep_fast.generate.farm.config import GenerateConfig
from stablerep_fast.generate.farm.run import GenerateSummary, generate
from stablerep_fast.generate.farm.seeds import initial_noise, noise_seed
from stablerep_fast.generate.farm.status import FarmStatus, farm_status
from stablerep_fast.generate.models import shapes
from stablerep_fast.generate.models.diffusers_pipeline import DiffusersGenerator
from stablerep_fast.generate.models.families import FAMILIES
from stablerep_fast.generate.models.loader import load_generator
from stablerep_fast.generate.models.pipeline import StableRepPipeline
from stablerep_fast.generate.models.protocol import GenerationOutput, Generator, to_uint8_images

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
