"""Generation throughput per backend: SD 1.5 architecture, 512 px, 50 DDIM steps, guidance 2.

The networks are built from SD 1.5's configs with random weights (same shapes and FLOPs as
the real model; nothing downloaded). For each backend and batch size (images per call, x2
UNet rows with guidance) it times, with the shared harness:
  images/s   whole pipeline calls (text encoding, the denoising loop, VAE decode, uint8);
  unet_ms    one denoising step's UNet call at that batch; vae_ms: one decode;
  floor_frac the FLOP floor over the measured time per image (FLOPs counted by torch's
             FlopCounterMode on one UNet forward and one decode; SD 1.5 at 512 px: about
             0.80 TFLOP per UNet row, 82.8 TFLOP per image, docs/method.md) on GPUs
             whose tensor-core peak is known.
Targets (issue 7): the best backend >= 2x eager fp16 at the same batch, and >= 45% of the
floor (>= 4.3 images/s on an H100). On a CPU, ``--preset tiny`` proves the script runs.

    python benchmarks/bench_generate.py                                   # on a GPU: the full grid
    python benchmarks/bench_generate.py --preset tiny --device cpu        # a smoke run
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from stablerep_fast.bench import environment, format_table
from stablerep_fast.bench.timing import time_fn
from stablerep_fast.generate import StableRepPipeline
from stablerep_fast.generate.backends import BACKENDS, unavailable_reason
from stablerep_fast.testing import random_sd_components

PRESETS = ("sd15", "tiny")
CAPTION = "a photo of a small red bird sitting on a branch"


def build_pipeline(preset: str, backend: str, device: torch.device, dtype: torch.dtype, folder: Path, cache_dir: Path):
    """Fresh random-weight modules (seeded: every backend gets the same weights)."""
    with torch.device(device):
        components = random_sd_components(preset, folder)
    for key in ("text_encoder", "unet", "vae"):
        components[key] = components[key].to(device, dtype)
    return StableRepPipeline(**components, model_id=f"random-{preset}", backend=backend, cache_dir=cache_dir)


def count_flops(pipe: StableRepPipeline, resolution: int) -> tuple[float, float]:
    """FLOPs of one UNet row (one image, one step, one guidance branch) and one VAE decode."""
    from torch.utils.flop_counter import FlopCounterMode

    unet = pipe.unet
    vae = pipe.vae
    latent = torch.randn(1, *pipe.latent_shape(resolution), device=pipe.device, dtype=pipe.dtype)
    context = torch.randn(1, 77, unet.config.cross_attention_dim, device=pipe.device, dtype=pipe.dtype)
    t = torch.tensor(500, device=pipe.device)
    with torch.inference_mode():
        with FlopCounterMode(display=False) as counter:
            unet(latent, t, encoder_hidden_states=context, return_dict=False)
        unet_flops = counter.get_total_flops()
        with FlopCounterMode(display=False) as counter:
            vae.decode(latent, return_dict=False)
        vae_flops = counter.get_total_flops()
    return float(unet_flops), float(vae_flops)


def peak_flops(device: torch.device, override: float | None) -> float | None:
    if override:
        return override * 1e12
    try:
        from stablerep_fast.bench.timing import tensor_core_peak
    except ImportError:
        return None
    return tensor_core_peak(device)


def bench_one(pipe, batch: int, args, flops: tuple[float, float], peak: float | None) -> dict:
    device = pipe.device
    guided = args.guidance != 1.0
    noise = torch.randn(batch, 1, *pipe.latent_shape(args.resolution), generator=torch.Generator().manual_seed(0))
    prompts = [CAPTION] * batch

    def generate():
        return pipe(prompts, noise, resolution=args.resolution, output_size=args.save_size,
                    num_inference_steps=args.steps, guidance_scale=args.guidance)  # fmt: skip

    started = time.perf_counter()
    generate()  # warm-up: compiles / builds engines / captures graphs
    warmup_s = time.perf_counter() - started
    total = time_fn(generate, device, warmup=0, repeats=args.repeats)

    rows = batch * (2 if guided else 1)
    latents = torch.randn(rows, *pipe.latent_shape(args.resolution), device=device, dtype=pipe.dtype)
    context = pipe.encode_prompt(prompts * (2 if guided else 1))
    t = torch.tensor(500, device=device)
    with torch.inference_mode():
        unet = time_fn(lambda: pipe.predict_noise(latents, t, context), device, warmup=3, repeats=args.unet_repeats)
        vae = time_fn(lambda: pipe.decode(latents[:batch]), device, warmup=1, repeats=args.repeats)
    image_s = total.median_ms / 1e3 / batch
    flops_per_image = args.steps * (2 if guided else 1) * flops[0] + flops[1]
    record = dict(
        suite="generate", backend=pipe.backend, preset=args.preset, batch=batch, resolution=args.resolution,
        steps=args.steps, guidance=args.guidance, dtype=str(pipe.dtype).replace("torch.", ""),
        images_per_s=1 / image_s, unet_ms=unet.median_ms, unet_p90_ms=unet.p90_ms, vae_ms=vae.median_ms,
        warmup_s=warmup_s, tflop_per_image=flops_per_image / 1e12,
        floor_frac=(flops_per_image / peak) / image_s if peak else None,
        unet_floor_frac=(rows * flops[0] / peak) / (unet.median_ms / 1e3) if peak else None,
    )  # fmt: skip
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=PRESETS, default="sd15")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="default: float16 on GPU, float32 on CPU")
    parser.add_argument("--backends", nargs="+", default=None, help="default: every one available here")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8, 32], help="images per pipeline call")
    parser.add_argument("--resolution", type=int, default=None, help="default: 512 (sd15), 32 (tiny)")
    parser.add_argument("--save-size", type=int, default=None, help="default: half the resolution")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=3, help="timed pipeline calls per point")
    parser.add_argument("--unet-repeats", type=int, default=20)
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's dense fp16 rate (default: known GPUs)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="engines and compile artefacts (default: the package's)")
    parser.add_argument("--json", type=Path, help="also write the records here")
    args = parser.parse_args()

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.float16 if device.type == "cuda" else torch.float32)
    args.resolution = args.resolution or (512 if args.preset == "sd15" else 32)
    args.save_size = args.save_size or args.resolution // 2
    names = args.backends or [b for b in BACKENDS if unavailable_reason(b, device) is None and (device.type == "cuda" or b == "eager")]
    peak = peak_flops(device, args.peak_tflops)
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        flops = None
        for name in names:
            reason = unavailable_reason(name, device)
            if reason is not None:
                print(f"skipping {name}: {reason}")
                continue
            for batch in args.batch_sizes:
                pipe = build_pipeline(args.preset, name, device, dtype, Path(tmp), args.cache_dir)
                if flops is None:
                    flops = count_flops(pipe, args.resolution)
                    print(f"FLOPs: {flops[0] / 1e12:.3f} TFLOP per UNet row, {flops[1] / 1e12:.3f} TFLOP per decode")
                records.append(bench_one(pipe, batch, args, flops, peak))
                print(json.dumps(records[-1]))
                del pipe
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    eager = {r["batch"]: r["images_per_s"] for r in records if r["backend"] == "eager"}
    for r in records:
        r["speedup_vs_eager"] = r["images_per_s"] / eager[r["batch"]] if r["batch"] in eager else None
    columns = ["backend", "batch", "images_per_s", "speedup_vs_eager", "unet_ms", "vae_ms", "floor_frac", "unet_floor_frac", "warmup_s"]
    print(format_table(records, columns))
    if args.json:
        args.json.write_text(json.dumps({"environment": environment(args.device), "records": records}, indent=1))


if __name__ == "__main__":
    main()
