import json

import numpy as np
import pytest
import torch

from stablerep_fast.generate import GenerateError, StableRepPipeline, initial_noise
from stablerep_fast.generate.runtime.backends import AUTO_ORDER, resolve_backend

RES = 32
CAPTIONS = ["a small red striped star on a grey background", "a blue circle", "x"]


def _generate(pipe, captions, indices, k=2, steps=3, guidance=2.0):
    noise = initial_noise(0, indices, k, pipe.latent_shape(RES))
    return pipe(captions, noise, resolution=RES, output_size=RES, num_inference_steps=steps, guidance_scale=guidance).images


def test_matches_diffusers_stable_diffusion_pipeline(tiny_sd, tiny_sd_dir):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    ours = _generate(tiny_sd, CAPTIONS, [0, 1, 2])
    reference = StableDiffusionPipeline.from_pretrained(tiny_sd_dir, local_files_only=True, safety_checker=None)
    reference.scheduler = DDIMScheduler.from_config(reference.scheduler.config)
    reference.set_progress_bar_config(disable=True)
    noise = initial_noise(0, [0, 1, 2], 2, tiny_sd.latent_shape(RES)).flatten(0, 1)
    expected = reference(
        CAPTIONS, latents=noise, num_images_per_prompt=2, num_inference_steps=3, guidance_scale=2.0,
        height=RES, width=RES, output_type="np",
    ).images  # fmt: skip
    expected = (expected * 255).round().astype(np.int16).reshape(ours.shape)
    assert ours.dtype == np.uint8 and ours.shape == (3, 2, RES, RES, 3)
    assert np.abs(ours.astype(np.int16) - expected).max() <= 1  # float round-off at a rounding edge


def test_batch_size_invariance(tiny_sd):
    together = _generate(tiny_sd, CAPTIONS, [0, 1, 2])
    for j in range(3):
        alone = _generate(tiny_sd, CAPTIONS[j : j + 1], [j])
        assert np.abs(alone.astype(np.int16) - together[j : j + 1]).max() <= 1


def test_guidance_one_skips_the_unconditional_pass(tiny_sd):
    guided = _generate(tiny_sd, CAPTIONS[:1], [0], guidance=1.0)
    unguided_again = _generate(tiny_sd, CAPTIONS[:1], [0], guidance=1.0)
    np.testing.assert_array_equal(guided, unguided_again)
    assert not np.array_equal(guided, _generate(tiny_sd, CAPTIONS[:1], [0], guidance=3.0))


def test_bad_latents_and_resolution(tiny_sd):
    with pytest.raises(ValueError, match="latents must be"):
        tiny_sd(CAPTIONS, torch.zeros(2, 1, 4, 16, 16), resolution=RES, output_size=RES)
    with pytest.raises(GenerateError, match="multiple of 4"):
        tiny_sd.check_resolution(30)


def test_auto_backend_and_unavailable_ones():
    assert resolve_backend("auto", torch.device("cpu")).name == "eager"
    assert AUTO_ORDER["cuda"] == ("tensorrt", "compile", "eager")  # the rule of "auto" (more in runtime/test_backends.py)
    if not torch.cuda.is_available():
        assert resolve_backend("auto", torch.device("cuda")).name == "eager"
    assert resolve_backend("compile", torch.device("cpu")).name == "compile"
    with pytest.raises(GenerateError, match="TensorRT engines run on NVIDIA GPUs only"):
        resolve_backend("tensorrt", torch.device("cpu"))
    with pytest.raises(GenerateError, match="unknown backend"):
        resolve_backend("onnx", torch.device("cpu"))


def test_bad_model_paths(tmp_path):
    cpu = dict(device=torch.device("cpu"), dtype=torch.float32)
    with pytest.raises(GenerateError, match="no model_index.json"):
        StableRepPipeline.from_pretrained(tmp_path, **cpu)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"]}))
    with pytest.raises(GenerateError, match="cannot load Stable Diffusion model"):
        StableRepPipeline.from_pretrained(broken, **cpu)
    with pytest.raises(GenerateError, match="not 'shapes', a diffusers folder"):
        StableRepPipeline.from_pretrained(tmp_path / "nothing", **cpu)


@pytest.mark.gpu
def test_compile_backend_matches_eager_on_gpu(tiny_sd_dir):
    # On CPU this also matches (0 levels apart, checked by hand) but compiling takes ~85 s.
    cuda = dict(device=torch.device("cuda"), dtype=torch.float32)
    eager = StableRepPipeline.from_pretrained(tiny_sd_dir, backend="eager", **cuda)
    compiled = StableRepPipeline.from_pretrained(tiny_sd_dir, backend="compile", **cuda)
    assert compiled.backend == "compile"
    diff = np.abs(_generate(eager, CAPTIONS, [0, 1, 2]).astype(np.int16) - _generate(compiled, CAPTIONS, [0, 1, 2]))
    assert diff.max() <= 2  # different kernels (fused by inductor), then rounding to 8 bits
