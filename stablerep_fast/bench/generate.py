"""Generation suite: images/s of the pipeline per backend, UNet step ms, fraction of the FLOP floor.

The models are built from configs with random weights (no download; the time of a network
does not depend on its weights): on GPUs the Stable Diffusion 1.5 architecture in fp16 at
512 px, whose FLOPs docs/method.md gives (0.80 TFLOP per UNet forward at a 64x64 latent, 2.5 TFLOP
per VAE decode), so floor_frac compares with the tensor-core rate; on CPUs a tiny SD-shaped
model at 64 px that runs in seconds. A real diffusers folder or checkpoint can be given
instead (``sd_model``). Beside the SD backends, the procedural ``shapes`` generator (what
tests and demos use) is timed with the same calling convention.

Few-step families (``few_step``: (family, steps) pairs; on GPUs SD-Turbo at 1 and 4 steps by
default) are timed next to SD 1.5 at 50 steps, at the family's default guidance (0 for turbo:
no unconditional pass), with random weights in the family's layout: SD-Turbo's full layout on
GPUs, every family's tiny layout on CPUs. Their floor comes from the FLOPs of one image's call
counted by ``torch.utils.flop_counter`` (which counts SD 1.5's UNet at the 0.80 TFLOP above).

Each record: suite, backend, device, dtype, model, captions (B), images_per_caption (K),
batch (B x K images per call), steps, guidance, resolution, ms (median per call),
throughput (images/s), unet_step_ms (one guided UNet call on 2 B K latents), peak_mb (GPU),
speedup (vs eager, same model), floor_frac (images/s over the FLOP floor's images/s) and
unet_floor_frac (the UNet floor over unet_step_ms), where the floor is known, and warmup_s
(the first call: compilation, engine builds or loads).

Consistency scorers (``generate --score``, ``generate/models/scorers.py``) are timed on the
generation device as ``score:NAME`` records: ``digits`` (the digit world's truth, re-derived from
captions and latents, on the digits generator's own images) and ``clip`` (OpenCLIP ViT-B/32 with
random weights, loaded from a folder as ``--score clip:FOLDER`` loads it, on random images of the
suite's output size). ``overhead`` is the scorer's time per image over the time per image of the
generator it scores: the digits generator, and the eager SD record of this suite (on CPUs a tiny
model, so only the GPU figure says what scoring adds to SD 1.5).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from stablerep_fast.bench.report import missing_stage, set_speedup, skipped
from stablerep_fast.bench.timing import peak_memory_mb, tensor_core_peak, time_fn
from stablerep_fast.errors import first_line

TITLE = "generate: images/s of the text-to-image pipeline per backend"
COLUMNS = ["backend", "model", "dtype", "batch", "steps", "guidance", "resolution", "ms", "throughput", "unet_step_ms",
           "peak_mb", "speedup", "floor_frac", "unet_floor_frac", "overhead", "warmup_s", "error"]  # fmt: skip

# SD 1.5 at 512 px (64x64 latent, 77 tokens), docs/method.md.
UNET_FLOPS = 0.80e12  # per UNet forward per latent
VAE_DECODE_FLOPS = 2.5e12  # per image
SD15_RESOLUTION = 512
# Few-step families timed on GPUs by default: (family, steps), at 512 px.
FEW_STEP_GPU = (("sd-turbo", 1), ("sd-turbo", 4))
SCORERS = ("digits", "clip")  # timed by default
CLIP_BENCH_MODEL = "ViT-B-32"

def defaults(device: str, quick: bool) -> dict:
    """What ``run_generate_suite`` measures by default on ``device``."""
    if torch.device(device).type == "cuda":
        return dict(captions=2 if quick else 4, images_per_caption=4 if quick else 10, steps=20 if quick else 50,
                    resolution=512, dtype="float16", repeats=3 if quick else 5, score_images=256)  # fmt: skip
    return dict(captions=2, images_per_caption=2, steps=10 if quick else 25, resolution=64, dtype="float32",
                repeats=3 if quick else 5, score_images=16 if quick else 64)  # fmt: skip


def unavailable() -> str | None:
    """Why the suite cannot run here, or None."""
    return missing_stage("generate")


def _is_sd15(unet) -> bool:
    """Whether ``unet`` (a diffusers UNet, maybe compiled) has SD 1.x's layout, whose FLOPs are known."""
    config = getattr(unet, "config", None)
    if config is None:
        return False
    return tuple(config.block_out_channels) == (320, 640, 1280, 1280) and config.cross_attention_dim == 768


def _backend_table():
    """(names, why each unavailable one cannot run) from the generation stage's public table."""
    from stablerep_fast.generate.runtime import backends

    return list(backends.BACKENDS), backends.unavailable_reason


def _pipeline_factory(sd_model, device: torch.device, dtype: torch.dtype, folder: Path):
    """(model id, make(backend) -> StableRepPipeline): ``sd_model`` loaded per backend, or
    random-weight modules built once and shared."""
    from diffusers.utils import logging as diffusers_logging

    from stablerep_fast.generate import StableRepPipeline
    from stablerep_fast.testing import random_sd_components

    if sd_model is not None:
        return str(sd_model), lambda name: StableRepPipeline.from_pretrained(sd_model, device=device, dtype=dtype, backend=name)
    kind = "sd15" if device.type == "cuda" else "tiny"
    with torch.device(device):  # initialise on the device: seconds, not a minute, for SD 1.5 on a GPU
        components = random_sd_components(kind, folder)
    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # not the "keep some modules in float32" note: none are
    try:
        for key in ("text_encoder", "unet", "vae"):
            components[key] = components[key].to(device, dtype)
    finally:
        diffusers_logging.set_verbosity(verbosity)
    return f"{kind}-random", lambda name: StableRepPipeline(**components, model_id=f"{kind}-random", backend=name)


def _measure_pipeline(pipe, *, captions: int, k: int, steps: int, guidance: float, resolution: int, output_size: int,
                      device: torch.device, repeats: int) -> dict:  # fmt: skip
    prompts = [f"a photo number {i}" for i in range(captions)]
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(captions, k, *pipe.latent_shape(resolution), generator=generator)

    def call():
        return pipe(prompts, latents, resolution=resolution, output_size=output_size, num_inference_steps=steps,
                    guidance_scale=guidance)  # fmt: skip

    started = time.perf_counter()
    call()  # warm-up: lazy initialisation, compilation, engine loading
    warmup_s = time.perf_counter() - started
    # On a CPU, after the warm-up the process reuses heap it already holds, so its resident-set
    # growth says little: peak memory is reported on GPUs only (allocator statistics).
    peak = peak_memory_mb(call, device) if device.type == "cuda" else None
    timing = time_fn(call, device, warmup=0, repeats=repeats)
    images = captions * k
    return dict(ms=timing.median_ms, p90_ms=timing.p90_ms, throughput=images / (timing.median_ms * 1e-3), peak_mb=peak,
                warmup_s=warmup_s)


def _unet_step_ms(pipe, *, captions: int, k: int, resolution: int, device: torch.device, repeats: int) -> float:
    """One guided UNet call (2 B K latents), through the backend the pipeline runs."""
    rows = 2 * captions * k
    latents = torch.randn(rows, *pipe.latent_shape(resolution), device=device, dtype=pipe.dtype)
    with torch.inference_mode():
        context = pipe.encode_prompt(["a photo"]).expand(rows, -1, -1).contiguous()
        timestep = torch.tensor(500, device=device)
        return time_fn(lambda: pipe.predict_noise(latents, timestep, context), device, warmup=2, repeats=repeats).median_ms


def _sd_records(device: torch.device, dtype: str, names, sd_model, settings: dict, repeats: int) -> list[dict]:
    all_names, reason_of = _backend_table()
    base = dict(suite="generate", device=device.type, dtype=dtype, captions=settings["captions"],
                images_per_caption=settings["k"], batch=settings["captions"] * settings["k"], steps=settings["steps"],
                guidance=settings["guidance"], resolution=settings["resolution"])  # fmt: skip
    records, run = [], []
    for name in all_names if names is None else names:
        if name not in all_names:
            reason = f"unknown generation backend; choose from {all_names + ['shapes']}"
        else:
            reason = reason_of(name, device)
        if reason is None and name == "compile" and device.type == "cpu" and names is None:
            reason = "inductor's C++ build takes minutes on a CPU; ask for it with --generate-backends"
        if reason is None:
            run.append(name)
        else:
            records.append({**base, **skipped("generate", name, device.type, reason)})
    if not run:
        return records

    peak = tensor_core_peak(device)
    with tempfile.TemporaryDirectory() as tmp:
        model_id, make = _pipeline_factory(sd_model, device, getattr(torch, dtype), Path(tmp))
        for name in run:
            record = {**base, "backend": name, "model": model_id, "floor_frac": None, "unet_floor_frac": None}
            records.append(record)
            try:
                pipe = make(name)
                record.update(_measure_pipeline(pipe, captions=settings["captions"], k=settings["k"], steps=settings["steps"],
                                                guidance=settings["guidance"], resolution=settings["resolution"],
                                                output_size=settings["output_size"], device=device, repeats=repeats))  # fmt: skip
                record["unet_step_ms"] = _unet_step_ms(pipe, captions=settings["captions"], k=settings["k"],
                                                       resolution=settings["resolution"], device=device, repeats=repeats)  # fmt: skip
                sd15 = model_id == "sd15-random" or _is_sd15(pipe.unet)
            except Exception as exc:  # noqa: BLE001 - a backend's failure is its record's, not the suite's
                record.update(ms=None, error=first_line(exc))
                continue
            finally:
                pipe = None
            if peak is not None and sd15 and settings["resolution"] == SD15_RESOLUTION:
                passes = 2 if settings["guidance"] != 1.0 else 1
                flops_per_image = settings["steps"] * passes * UNET_FLOPS + VAE_DECODE_FLOPS
                record["floor_frac"] = record["throughput"] / (peak / flops_per_image)
                unet_floor_ms = 2 * record["batch"] * UNET_FLOPS / peak * 1e3
                record["unet_floor_frac"] = unet_floor_ms / record["unet_step_ms"]
    return records


def _family_factory(family: str, device: torch.device, dtype: torch.dtype, folder: Path):
    """make(backend) -> a generator of ``family`` with random weights: SD-Turbo's full layout on
    GPUs (the only full layout built here), the family's tiny layout on CPUs (a fresh pipeline per
    backend: the compile backend changes a diffusers pipeline in place)."""
    from stablerep_fast.generate import StableRepPipeline
    from stablerep_fast.generate.models.diffusers_pipeline import DiffusersGenerator
    from stablerep_fast.generate.models.families import FAMILIES
    from stablerep_fast.testing import random_pipeline, random_sd_components

    spec, model_id = FAMILIES[family], f"{family}-random"
    if device.type == "cuda":
        if family != "sd-turbo":
            raise ValueError(f"a full random-weight layout of {family} is not built here; time a real one with --sd-model")
        with torch.device(device):
            components = random_sd_components("sd-turbo", folder)
        for key in ("text_encoder", "unet", "vae"):
            components[key] = components[key].to(device, dtype)
        return lambda name: StableRepPipeline(**components, model_id=model_id, backend=name, family=spec)

    def make(name: str):
        pipe = random_pipeline(family, folder).to(device, dtype)
        if spec.fast_path:
            parts = {key: getattr(pipe, key) for key in ("tokenizer", "text_encoder", "unet", "vae", "scheduler")}
            return StableRepPipeline(**parts, model_id=model_id, backend=name, family=spec)
        return DiffusersGenerator(pipe, spec, model_id=model_id, backend=name)

    return make


def image_flops(generator, *, steps: int, guidance: float, resolution: int) -> float:
    """FLOPs of one image's call (text encoding, every denoising step, decoding), counted by
    torch.utils.flop_counter on ``generator`` (run eagerly)."""
    from torch.utils.flop_counter import FlopCounterMode

    latents = torch.randn(1, 1, *generator.latent_shape(resolution), generator=torch.Generator().manual_seed(0))
    with FlopCounterMode(display=False) as counter:
        generator(["a photo"], latents, resolution=resolution, output_size=resolution, num_inference_steps=steps,
                  guidance_scale=guidance)  # fmt: skip
    return float(counter.get_total_flops())


def _few_step_records(device: torch.device, dtype: str, names: list[str], few_step, settings: dict, repeats: int) -> list[dict]:
    """Per (family, steps) and backend: images/s and the fraction of the counted FLOP floor."""
    from stablerep_fast.generate.models.families import FAMILIES

    peak = tensor_core_peak(device)
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        for family in dict.fromkeys(f for f, _ in few_step):
            guidance = FAMILIES[family].guidance
            try:
                make = _family_factory(family, device, getattr(torch, dtype), Path(tmp))
                counting = make("eager")
                flops = {s: image_flops(counting, steps=s, guidance=guidance, resolution=settings["resolution"])
                         for f, s in few_step if f == family}  # fmt: skip
                counting = None
            except Exception as exc:  # noqa: BLE001 - a family's failure is its records', not the suite's
                records += [dict(suite="generate", backend=name, device=device.type, dtype=dtype, model=f"{family}-random",
                                 steps=s, guidance=guidance, ms=None, error=first_line(exc))
                            for name in names for f, s in few_step if f == family]  # fmt: skip
                continue
            for name in names:
                pipe = None
                for steps in flops:
                    record = dict(suite="generate", backend=name, device=device.type, dtype=dtype, model=f"{family}-random",
                                  captions=settings["captions"], images_per_caption=settings["k"],
                                  batch=settings["captions"] * settings["k"], steps=steps, guidance=guidance,
                                  resolution=settings["resolution"], unet_step_ms=None, unet_floor_frac=None,
                                  flops_per_image=flops[steps], floor_frac=None)  # fmt: skip
                    records.append(record)
                    try:
                        pipe = pipe or make(name)
                        record.update(_measure_pipeline(pipe, captions=settings["captions"], k=settings["k"], steps=steps,
                                                        guidance=guidance, resolution=settings["resolution"],
                                                        output_size=settings["output_size"], device=device,
                                                        repeats=repeats))  # fmt: skip
                    except Exception as exc:  # noqa: BLE001
                        record.update(ms=None, error=first_line(exc))
                        continue
                    if peak is not None:
                        record["floor_frac"] = record["throughput"] / (peak / flops[steps])
    return records


def _shapes_record(device: torch.device, captions: int, k: int, resolution: int, repeats: int) -> dict:
    from stablerep_fast.generate.models.shapes import ShapesPipeline

    record = dict(suite="generate", backend="shapes", device=device.type, dtype="uint8", model="shapes", captions=captions,
                  images_per_caption=k, batch=captions * k, steps=None, guidance=None, resolution=resolution,
                  unet_step_ms=None, floor_frac=None, unet_floor_frac=None)  # fmt: skip
    record.update(_measure_pipeline(ShapesPipeline(), captions=captions, k=k, steps=1, guidance=1.0, resolution=resolution,
                                    output_size=resolution, device=torch.device("cpu"), repeats=repeats))  # fmt: skip
    return record


def _score_record(name: str, device: torch.device, model: str, images: int, resolution: int, timing,
                  generator_ms_per_image: float | None) -> dict:  # fmt: skip
    ms_per_image = timing.median_ms / images
    return dict(suite="generate", backend=f"score:{name}", device=device.type, dtype="float32", model=model, batch=images,
                steps=None, guidance=None, resolution=resolution, ms=timing.median_ms, p90_ms=timing.p90_ms,
                throughput=images / (timing.median_ms * 1e-3), unet_step_ms=None, peak_mb=None, speedup=None,
                overhead=None if not generator_ms_per_image else ms_per_image / generator_ms_per_image)  # fmt: skip


def _scorer_records(device: torch.device, names, images: int, resolution: int, repeats: int, sd_ms_per_image: float | None) -> list[dict]:
    """Per scorer of ``names`` (SCORERS): ``images`` scored in one call, on ``device``."""
    import numpy as np

    from stablerep_fast.generate.models.digits import LATENT_DIM, DigitsPipeline
    from stablerep_fast.generate.models.scorers import ClipScorer, DigitsTruth, score_images

    records = []
    for name in names:
        try:
            if name == "digits":
                pipe, generator = DigitsPipeline(), torch.Generator().manual_seed(0)
                prompts = pipe.make_captions(images)
                latents = torch.randn(images, 1, LATENT_DIM, generator=generator)
                draw = lambda: pipe(prompts, latents, resolution=32, output_size=32).images  # noqa: E731
                pixels = draw()[:, 0]
                draw_ms = time_fn(draw, torch.device("cpu"), warmup=1, repeats=repeats).median_ms
                scorer, flat = DigitsTruth(), latents[:, 0]
                timing = time_fn(lambda: score_images(scorer, prompts, pixels, flat, 1.0), torch.device("cpu"), warmup=1,
                                 repeats=repeats)  # fmt: skip
                records.append(_score_record(name, torch.device("cpu"), "digits", images, 32, timing, draw_ms / images))
            elif name == "clip":
                from stablerep_fast.testing import random_clip_folder

                with tempfile.TemporaryDirectory() as tmp:
                    scorer = ClipScorer(random_clip_folder(Path(tmp), CLIP_BENCH_MODEL), device, batch_size=images)
                prompts = [f"a photo number {i}" for i in range(images)]
                pixels = np.random.default_rng(0).integers(0, 256, (images, resolution, resolution, 3), dtype=np.uint8)
                timing = time_fn(lambda: scorer(prompts, pixels), device, warmup=1, repeats=repeats)
                records.append(_score_record(name, device, f"{CLIP_BENCH_MODEL}-random", images, resolution, timing,
                                             sd_ms_per_image))  # fmt: skip
            else:
                records.append(skipped("generate", f"score:{name}", device.type, f"unknown scorer; choose from {list(SCORERS)}"))
        except ImportError as exc:
            records.append(skipped("generate", f"score:{name}", device.type, f"{first_line(exc)}: pip install 'stablerep_fast[all]'"))
    return records


def run_generate_suite(
    device: str,
    *,
    captions: int = 2,
    images_per_caption: int = 2,
    steps: int = 10,
    guidance: float = 2.0,
    resolution: int = 64,
    output_size: int | None = None,
    dtype: str = "float32",
    backends: list[str] | None = None,
    sd_model: str | Path | None = None,
    shapes_resolution: int = 256,
    repeats: int = 3,
    few_step: list[tuple[str, int]] | None = None,
    scorers: list[str] | None = None,
    score_images: int = 16,
) -> list[dict]:
    """Time the pipeline per backend (random-weight SD, or ``sd_model``), the few-step families,
    the shapes generator and the consistency scorers.

    backends: generation backends and/or "shapes"; None = every backend that can run here
    (torch.compile on a CPU only when named) plus "shapes". few_step: (family, steps) pairs of
    ``generate/models/families.py``; None: FEW_STEP_GPU on GPUs, none on CPUs. scorers: names of
    SCORERS (None: all), each timed on ``score_images`` images per call.
    """
    dev = torch.device(device)
    settings = dict(captions=captions, k=images_per_caption, steps=steps, guidance=guidance, resolution=resolution,
                    output_size=output_size or resolution)  # fmt: skip
    sd_names = None if backends is None else [b for b in backends if b != "shapes"]
    records = []
    if sd_names is None or sd_names:
        reason = unavailable()
        if reason is None:
            records += _sd_records(dev, dtype, sd_names, sd_model, settings, repeats)
            few_step = (FEW_STEP_GPU if dev.type == "cuda" else ()) if few_step is None else few_step
            ran = [r["backend"] for r in records if not r.get("skipped") and r.get("model") != "shapes"]
            if few_step and ran:
                records += _few_step_records(dev, dtype, list(dict.fromkeys(ran)), few_step, settings, repeats)
        else:
            records.append(skipped("generate", "eager", dev.type, reason))
    if backends is None or "shapes" in backends:
        records.append(_shapes_record(dev, captions * 2, images_per_caption * 2, shapes_resolution, repeats))
    eager = [r for r in records if r.get("backend") == "eager" and r.get("steps") == steps and r.get("ms")]
    sd_ms_per_image = eager[0]["ms"] / eager[0]["batch"] if eager else None
    records += _scorer_records(dev, SCORERS if scorers is None else scorers, score_images, output_size or resolution,
                               repeats, sd_ms_per_image)  # fmt: skip
    set_speedup(records, "eager", same=("model", "steps"))
    return records
