"""Every diffusers family (tiny random weights, built from configs): detection, defaults, parity
with diffusers' own pipeline for the same noise, batch independence, guidance 0, backends."""

import json
import logging

import numpy as np
import pytest
import torch

from stablerep_fast.cli import main as cli_main
from stablerep_fast.generate import GenerateConfig, GenerateError, generate, initial_noise, load_generator
from stablerep_fast.generate.runtime import backends
from stablerep_fast.generate.runtime.compiled import CompiledForward
from stablerep_fast.generate.models.diffusers_pipeline import DiffusersGenerator
from stablerep_fast.generate.models.families import FAMILIES, detect_family, make_scheduler, unsupported_backends
from stablerep_fast.generate.models.pipeline import StableRepPipeline
from stablerep_fast.generate.models.protocol import step_generators
from stablerep_fast.shards import read_dataset
from stablerep_fast.testing import RANDOM_FAMILIES, random_pipeline

RES = 32
CAPTIONS = ["a small red striped star on a grey background", "a blue circle"]
CPU = dict(device=torch.device("cpu"), dtype=torch.float32)
FAST = {"sd1", "sd2", "sd-turbo", "sd-lcm"}  # StableRepPipeline's own loop; the others run diffusers' __call__


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    folders = {}
    for family in RANDOM_FAMILIES:
        random_pipeline(family, root / "tokenizer").save_pretrained(root / f"tiny-{family}")
        folders[family] = root / f"tiny-{family}"
    return folders


def _guided(family: str) -> float:
    """A guidance that runs the unconditional pass where the family has one (3 > 1), else the family's."""
    return 3.0 if FAMILIES[family].guidance_kind == "cfg" else FAMILIES[family].guidance


def _images(generator, captions, indices, *, k=2, steps=2, guidance=None):
    noise = initial_noise(0, indices, k, generator.latent_shape(RES))
    return generator(captions, noise, resolution=RES, output_size=RES, num_inference_steps=steps, guidance_scale=guidance).images


@pytest.mark.parametrize("family", RANDOM_FAMILIES)
def test_detects_the_family_and_loads_it(family, family_dirs):
    assert detect_family(family_dirs[family])[0].name == family
    generator = load_generator(family_dirs[family], **CPU)
    assert isinstance(generator, StableRepPipeline if family in FAST else DiffusersGenerator)
    expected = FAMILIES[family]
    assert (generator.default_steps, generator.default_guidance) == (expected.steps, expected.guidance)
    if expected.scheduler is not None:
        assert type(generator.scheduler).__name__ == expected.scheduler


@pytest.mark.parametrize("family", RANDOM_FAMILIES)
def test_matches_diffusers_own_pipeline_image_by_image(family, family_dirs):
    """Ours: 2 captions x 2 images in one call. Reference: diffusers' pipeline loaded on its own,
    one image per call with the same initial noise (and step-noise generator): so this checks
    parity and batch independence at once (images (0, 1) and (1, 0): the B x K order)."""
    from diffusers import DiffusionPipeline

    ours_generator = load_generator(family_dirs[family], **CPU)
    guidance = _guided(family)
    ours = _images(ours_generator, CAPTIONS, [0, 1], guidance=guidance)

    reference = DiffusionPipeline.from_pretrained(family_dirs[family], local_files_only=True)
    reference.scheduler = make_scheduler(reference.scheduler, FAMILIES[family], None)
    reference.set_progress_bar_config(disable=True)
    noise = initial_noise(0, [0, 1], 2, ours_generator.latent_shape(RES))
    extras = {"use_resolution_binning": False, "clean_caption": False} if family == "pixart" else {}
    for i, k in ((0, 1), (1, 0)):
        latent = noise[i, k : k + 1]
        packed = reference._pack_latents(latent, *latent.shape) if family.startswith("flux") else latent
        image = reference(CAPTIONS[i], latents=packed, generator=step_generators(latent), num_inference_steps=2,
                          guidance_scale=guidance, height=RES, width=RES, output_type="np", **extras).images[0]  # fmt: skip
        expected = (image * 255).round().astype(np.int16)
        diff = np.abs(ours[i, k].astype(np.int16) - expected).max()
        assert diff <= 1, f"{family}: caption {i} image {k} differs by {diff} levels"  # float round-off at a rounding edge


def _denoiser_rows(generator) -> list[int]:
    """Rows of every denoiser call (a hook on the UNet or transformer), appended as they happen."""
    rows: list[int] = []
    module = generator.unet if isinstance(generator, StableRepPipeline) else generator.denoiser

    def hook(_module, args, kwargs):
        sample = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))
        rows.append(sample.shape[0])

    module.register_forward_pre_hook(hook, with_kwargs=True)
    return rows


@pytest.mark.parametrize("family", RANDOM_FAMILIES)
def test_guidance_zero_skips_the_unconditional_pass(family, family_dirs):
    generator = load_generator(family_dirs[family], **CPU)
    rows = _denoiser_rows(generator)
    unguided = _images(generator, CAPTIONS, [0, 1], guidance=0.0)
    assert rows == [4, 4]  # 2 steps of B x K = 4 images, no unconditional rows
    rows.clear()
    guided = _images(generator, CAPTIONS, [0, 1], guidance=3.0)
    cfg = FAMILIES[family].guidance_kind == "cfg"
    assert rows == ([8, 8] if cfg else [4, 4])  # an "embedded" family feeds the scale to the network instead
    if family == "flux-schnell":  # no guidance input at all: the scale changes nothing
        np.testing.assert_array_equal(unguided, guided)
    else:
        assert not np.array_equal(unguided, guided)


def test_generate_with_a_few_step_family_keeps_its_guarantees(family_dirs, captions_file, tmp_path):
    """SD-Turbo through generate(): the family's defaults recorded; the same images whatever the
    batch size, farm split or resume; latent-neighbour views."""
    captions = captions_file(5)
    common = dict(captions=captions, model=str(family_dirs["sd-turbo"]), images_per_caption=2, resolution=RES,
                  save_size=RES, shard_size=2, device="cpu", image_format="png", progress=False)  # fmt: skip
    generate(GenerateConfig(out=tmp_path / "one", batch_size=3, **common))
    record = read_dataset(tmp_path / "one")
    assert (record["steps"], record["guidance"], record["scheduler"]) == (1, 0.0, "EulerDiscreteScheduler")
    for rank in (1, 0):  # a farm of two, one caption per call
        generate(GenerateConfig(out=tmp_path / "farm", batch_size=1, world_size=2, rank=rank, **common))
    generate(GenerateConfig(out=tmp_path / "farm", batch_size=1, world_size=2, rank=0, **common))  # resume: nothing left
    one, farm = _shard_images(tmp_path / "one"), _shard_images(tmp_path / "farm")
    assert one.shape == (10, RES, RES, 3) and np.abs(one - farm).max() <= 1
    generate(GenerateConfig(out=tmp_path / "views", batch_size=2, views="latent-neighbors", latent_std=0.3, **common))
    assert len(_shard_images(tmp_path / "views")) == 10


def _shard_images(folder) -> np.ndarray:
    """Every image of a dataset folder, in member-name order: int [N, S, S, 3]."""
    import io
    import tarfile

    from PIL import Image

    images = {}
    for tar in sorted(folder.glob("shard-*.tar")):
        with tarfile.open(tar) as archive:
            for member in archive.getmembers():
                if member.name.endswith(".png"):
                    images[member.name] = np.asarray(Image.open(io.BytesIO(archive.extractfile(member).read()))).astype(int)
    return np.stack([images[name] for name in sorted(images)])


def test_flux_latent_neighbour_views_are_drawn_unpacked(family_dirs):
    """FLUX packs 2 x 2 latent patches into tokens; the noise (and so GenRep's neighbours) is the
    unpacked [C, h, w] tensor, packed only for the call."""
    generator = load_generator(family_dirs["flux-schnell"], **CPU)
    assert generator.latent_shape(RES) == (4, 16, 16)
    with pytest.raises(GenerateError, match="multiple of 4"):
        generator.latent_shape(30)
    close = initial_noise(0, [0], 2, generator.latent_shape(RES), views="latent-neighbors", latent_std=0.05)
    far = initial_noise(0, [0], 2, generator.latent_shape(RES))
    out = lambda noise: generator(CAPTIONS[:1], noise, resolution=RES, output_size=RES).images[0].astype(int)  # noqa: E731
    near_images, far_images = out(close), out(far)
    assert np.abs(near_images[0] - near_images[1]).mean() < np.abs(far_images[0] - far_images[1]).mean()


def test_scheduler_override_and_bad_names(family_dirs, captions_file, tmp_path, capsys):
    euler = load_generator(family_dirs["sd1"], scheduler="euler", **CPU)
    assert type(euler.scheduler).__name__ == "EulerDiscreteScheduler"
    own = load_generator(family_dirs["sd1"], scheduler="default", **CPU)  # the folder's own (DDIM in this tiny one)
    assert type(own.scheduler).__name__ == "DDIMScheduler"
    dpm = load_generator(family_dirs["sd3"], scheduler="FlowMatchHeunDiscreteScheduler", **CPU)
    assert type(dpm.scheduler).__name__ == "FlowMatchHeunDiscreteScheduler"
    with pytest.raises(GenerateError, match="unknown scheduler 'nope'"):
        load_generator(family_dirs["sd1"], scheduler="nope", **CPU)
    with pytest.raises(GenerateError, match="no diffusers scheduler"):
        load_generator("shapes", scheduler="ddim", **CPU)
    args = ["generate", "--captions", str(captions_file(2)), "--model", str(family_dirs["sdxl-turbo"]), "--out",
            str(tmp_path / "out"), "--device", "cpu", "--scheduler", "nope", "--no-progress"]  # fmt: skip
    capsys.readouterr()  # the loads above
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: unknown scheduler 'nope'") and not (tmp_path / "out").exists()


def test_tensorrt_covers_the_unet_families_only(monkeypatch, caplog):
    monkeypatch.setattr(backends, "unavailable_reason", lambda name, device: None)  # as on a GPU with TensorRT
    cuda = torch.device("cuda")
    assert backends.resolve_backend("tensorrt", cuda, unsupported_backends(FAMILIES["sd2"])).name == "tensorrt"
    with pytest.raises(GenerateError) as error:
        backends.resolve_backend("tensorrt", cuda, unsupported_backends(FAMILIES["flux"]))
    message = str(error.value)
    assert "\n" not in message and "not FLUX.1 [dev]" in message and "Stable Diffusion 2.x" in message
    with caplog.at_level(logging.WARNING, logger="stablerep_fast.generate"):
        assert backends.resolve_backend("auto", cuda, unsupported_backends(FAMILIES["sd3"])).name == "compile"
    assert "TensorRT engines cover" in caplog.text and "running on compile" in caplog.text


def test_compile_backend_of_a_diffusers_family(family_dirs, monkeypatch, tmp_path):
    """The compile backend's plumbing for a family run by diffusers' __call__, with
    torch.compile replaced by the identity (compiling for real on a CPU takes minutes)."""
    compiled = []

    def fake_compile(fn, **kwargs):
        compiled.append((getattr(fn, "__qualname__", ""), kwargs))
        return fn

    monkeypatch.setattr(backends.torch, "compile", fake_compile)
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    generator = load_generator(family_dirs["sd3"], backend="compile", cache_dir=tmp_path, **CPU)
    eager = load_generator(family_dirs["sd3"], backend="eager", **CPU)
    assert generator.backend == "compile" and isinstance(generator.denoiser.forward, CompiledForward)
    assert sorted(name for name, _ in compiled) == ["AutoencoderKL.decode", "SD3Transformer2DModel.forward"]
    assert all(kwargs["dynamic"] is False for _, kwargs in compiled)
    np.testing.assert_array_equal(_images(generator, CAPTIONS, [0, 1]), _images(eager, CAPTIONS, [0, 1]))


def test_eager_set_up_is_one_rule_for_both_pipelines(family_dirs):
    """The same eager set-up for a UNet run by our loop (SD 2.x) or by diffusers' (SDXL): SDPA and
    fused QKV in the UNet and VAE; a transformer (SD3) keeps its family's attention processors."""
    for family in ("sd2", "sdxl"):
        applied = load_generator(family_dirs[family], backend="eager", **CPU).optimisations
        assert applied == ["unet: sdpa", "unet: fused qkv", "vae: sdpa", "vae: fused qkv"], family
    from diffusers import DiffusionPipeline

    ours = load_generator(family_dirs["sd3"], backend="eager", **CPU)
    own = DiffusionPipeline.from_pretrained(family_dirs["sd3"], local_files_only=True).transformer.attn_processors
    assert ours.optimisations == ["vae: sdpa", "vae: fused qkv"]
    assert {k: type(v) for k, v in ours.denoiser.attn_processors.items()} == {k: type(v) for k, v in own.items()}


def test_auto_dtype_is_bfloat16_on_gpu_for_the_t5_families(family_dirs):
    from stablerep_fast.generate.models.loader import resolve_dtype

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert resolve_dtype("auto", cuda, str(family_dirs["flux"])) == torch.bfloat16  # T5 overflows in float16
    assert resolve_dtype("auto", cuda, family_dirs["sd3"]) == torch.bfloat16
    assert resolve_dtype("auto", cuda, family_dirs["sdxl"]) == torch.float16
    assert resolve_dtype("auto", cuda, "shapes") == torch.float16
    assert resolve_dtype("auto", cpu, family_dirs["flux"]) == torch.float32
    assert resolve_dtype("float16", cuda, family_dirs["flux"]) == torch.float16  # an explicit dtype wins


def test_not_a_text_to_image_folder(tmp_path):
    folder = tmp_path / "weird"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "DDPMPipeline", "unet": ["diffusers", "UNet2DModel"]}))
    with pytest.raises(GenerateError, match="cannot load another diffusers text-to-image pipeline model"):
        load_generator(folder, **CPU)


@pytest.mark.gpu
def test_sdxl_tensorrt_matches_eager_on_gpu(family_dirs, tmp_path):
    pytest.importorskip("tensorrt")
    cuda = dict(device=torch.device("cuda"), dtype=torch.float16)
    eager = load_generator(family_dirs["sdxl-turbo"], backend="eager", **cuda)
    engines = load_generator(family_dirs["sdxl-turbo"], backend="tensorrt", cache_dir=tmp_path, **cuda)
    assert engines.backend == "tensorrt"
    diff = np.abs(_images(eager, CAPTIONS, [0, 1]).astype(np.int16) - _images(engines, CAPTIONS, [0, 1]))
    assert diff.max() <= 3  # fp16 kernels of another library, then rounding to 8 bits
