"""Model families: which diffusers text-to-image pipeline a folder holds, and how it runs by default.

A family is read from the folder's ``model_index.json`` (its ``_class_name`` and scheduler), plus
two details the class name does not tell: the text width of a ``StableDiffusionPipeline``'s UNet
(768: SD 1.x, 1024: SD 2.x) and whether a FLUX transformer embeds guidance (dev) or not
(schnell). Distilled few-step models keep their base model's class, so a folder whose name
contains "turbo" is SD-Turbo or SDXL-Turbo, and one whose scheduler is ``LCMScheduler`` is an LCM.

Each family has default steps, guidance and scheduler (``--steps``, ``--guidance``,
``--scheduler`` override them). Guidance follows diffusers: with classifier-free guidance
("cfg") a scale <= 1 runs the conditional pass only, so 0 (the few-step models' setting) skips
the unconditional pass; "embedded" families feed the scale to the network and never run an
unconditional pass.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from stablerep_fast.errors import GenerateError

# The recipe's sampler and guidance (StableRep: SD 1.5, DDIM 50 steps, w = 2).
RECIPE_STEPS, RECIPE_GUIDANCE, RECIPE_SCHEDULER = 50, 2.0, "DDIMScheduler"

# ``--scheduler`` short names; any diffusers scheduler class name is accepted too, and "default"
# keeps the scheduler the model folder ships with.
SCHEDULER_ALIASES = {
    "ddim": "DDIMScheduler",
    "pndm": "PNDMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler-ancestral": "EulerAncestralDiscreteScheduler",
    "dpm": "DPMSolverMultistepScheduler",
    "lcm": "LCMScheduler",
    "flow-euler": "FlowMatchEulerDiscreteScheduler",
}
MODEL_SCHEDULER = "default"


@dataclass(frozen=True)
class Family:
    """How one family of models runs. ``scheduler`` None: the one the model folder ships with;
    ``steps``/``guidance`` None: the diffusers pipeline's own defaults (unknown families)."""

    name: str
    description: str
    steps: int | None
    guidance: float | None
    scheduler: str | None
    guidance_kind: str  # "cfg": an unconditional pass when guidance > 1; "embedded": never
    fast_path: bool  # runs on StableRepPipeline's own denoising loop (else diffusers' __call__)
    tensorrt: bool  # the TensorRT backend builds its engines


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("sd1", "Stable Diffusion 1.x", RECIPE_STEPS, RECIPE_GUIDANCE, RECIPE_SCHEDULER, "cfg", True, True),
        Family("sd2", "Stable Diffusion 2.x", RECIPE_STEPS, RECIPE_GUIDANCE, RECIPE_SCHEDULER, "cfg", True, True),
        Family("sd-turbo", "SD-Turbo (distilled SD 2.1)", 1, 0.0, None, "cfg", True, True),
        Family("sd-lcm", "Stable Diffusion with an LCM scheduler (LCM-LoRA fused)", 4, 0.0, "LCMScheduler", "cfg", True, True),
        Family("lcm", "Latent Consistency Model", 4, 8.5, "LCMScheduler", "embedded", False, False),
        Family("sdxl", "Stable Diffusion XL", 50, 5.0, None, "cfg", False, True),
        Family("sdxl-turbo", "SDXL-Turbo (distilled SDXL)", 1, 0.0, None, "cfg", False, True),
        Family("sd3", "Stable Diffusion 3", 28, 7.0, None, "cfg", False, False),
        Family("pixart", "PixArt-alpha / PixArt-sigma", 20, 4.5, None, "cfg", False, False),
        Family("flux", "FLUX.1 [dev] (guidance-distilled)", 28, 3.5, None, "embedded", False, False),
        Family("flux-schnell", "FLUX.1 [schnell] (timestep-distilled)", 4, 0.0, None, "embedded", False, False),
        Family("diffusers", "another diffusers text-to-image pipeline", None, None, None, "cfg", False, False),
    )
}

# model_index.json "_class_name" -> family, before the refinements in detect_family.
CLASS_FAMILIES = {
    "StableDiffusionPipeline": "sd1",
    "LatentConsistencyModelPipeline": "lcm",
    "StableDiffusionXLPipeline": "sdxl",
    "StableDiffusion3Pipeline": "sd3",
    "PixArtAlphaPipeline": "pixart",
    "PixArtSigmaPipeline": "pixart",
    "FluxPipeline": "flux",
}


def tensorrt_families() -> str:
    """The families the TensorRT backend covers, for messages."""
    return ", ".join(f.description for f in FAMILIES.values() if f.tensorrt)


def unsupported_backends(family: Family | None) -> dict[str, str]:
    """The backends ``family``'s networks cannot run on -> why, in one line (what
    ``runtime.backends.resolve_backend`` takes); None: the SD 1.x/2.x families, which run on all."""
    if family is None or family.tensorrt:
        return {}
    return {"tensorrt": f"TensorRT engines cover {tensorrt_families()}, not {family.description}"}


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise GenerateError(f"cannot read {path}: {exc}; is the model folder complete?") from exc


def detect_family(folder: Path) -> tuple[Family, str]:
    """(family, pipeline class name) of a diffusers pipeline folder (see the module doc)."""
    index = _read_json(folder / "model_index.json")
    class_name = str(index.get("_class_name", ""))
    name = CLASS_FAMILIES.get(class_name, "diffusers")
    scheduler = (index.get("scheduler") or [None, None])[-1]
    turbo = "turbo" in folder.resolve().name.lower()
    if name == "sd1":
        unet = _read_json(folder / "unet" / "config.json")
        if unet.get("time_cond_proj_dim"):
            name = "lcm"  # an LCM UNet (guidance embedded) saved in a plain SD pipeline
        elif scheduler == "LCMScheduler":
            name = "sd-lcm"
        elif turbo:
            name = "sd-turbo"
        elif unet.get("cross_attention_dim") == 1024:
            name = "sd2"
    elif name == "sdxl" and turbo:
        name = "sdxl-turbo"
    elif name == "flux" and not _read_json(folder / "transformer" / "config.json").get("guidance_embeds", True):
        name = "flux-schnell"
    return FAMILIES[name], class_name


def scheduler_class_name(name: str) -> str:
    """A ``--scheduler`` value as a diffusers scheduler class name (GenerateError if unknown)."""
    import diffusers

    resolved = SCHEDULER_ALIASES.get(name.lower(), name)
    if not (resolved.endswith("Scheduler") and inspect.isclass(getattr(diffusers, resolved, None))):
        raise GenerateError(
            f"unknown scheduler {name!r}; use {MODEL_SCHEDULER!r} (the model's own), one of {sorted(SCHEDULER_ALIASES)} "
            "or a diffusers scheduler class name such as DPMSolverMultistepScheduler"
        )
    return resolved


def make_scheduler(current, family: Family, requested: str | None):
    """The scheduler to run: ``requested`` (a name, "default" for the model's own), else the
    family's default, built from the model's scheduler config ``current``."""
    import diffusers

    name = requested if requested is not None else (family.scheduler or MODEL_SCHEDULER)
    if name == MODEL_SCHEDULER:
        return current
    cls = getattr(diffusers, scheduler_class_name(name))
    return current if type(current) is cls else cls.from_config(current.config)


def call_defaults(pipeline_call) -> tuple[int, float]:
    """(steps, guidance) a diffusers pipeline's ``__call__`` uses when not told."""
    params = inspect.signature(pipeline_call).parameters
    steps = params["num_inference_steps"].default if "num_inference_steps" in params else RECIPE_STEPS
    guidance = params["guidance_scale"].default if "guidance_scale" in params else RECIPE_GUIDANCE
    return int(steps), float(guidance)


def generation_defaults(generator) -> tuple[int, float]:
    """(steps, guidance) ``generator`` runs with when the user gives none: its own
    ``default_steps``/``default_guidance`` (the diffusers generators set them from their family),
    else the recipe's (50, 2.0), which a generator without a denoising loop ignores."""
    return int(getattr(generator, "default_steps", RECIPE_STEPS)), float(getattr(generator, "default_guidance", RECIPE_GUIDANCE))


# Families whose T5 text encoder overflows in float16 (inf, then NaN images): bfloat16 on GPU.
BFLOAT16_FAMILIES = ("sd3", "pixart", "flux", "flux-schnell")


def auto_gpu_dtype(model) -> torch.dtype:
    """The GPU dtype of ``--dtype auto`` for ``model``: bfloat16 for a diffusers folder of a
    BFLOAT16_FAMILIES family, else float16."""
    folder = Path(model) if isinstance(model, (str, Path)) else None
    if folder is not None and (folder / "model_index.json").is_file() and detect_family(folder)[0].name in BFLOAT16_FAMILIES:
        return torch.bfloat16
    return torch.float16
