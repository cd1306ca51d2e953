"""The TensorRT backend on a machine without TensorRT or a GPU: the build's API calls for both
API generations (stand-in ``tensorrt`` modules of 10.x and of 11.x, which lacks the weak-typing
flags), engines selected and built per input shape, the engine-cache key from checkpoint files,
and the inductor cache folder. Engine build and run themselves are tested on a GPU
(test_backends.py)."""

import functools
import json
import os
import sys
import types

import pytest
import torch

from stablerep_fast.generate.runtime.networks import BackendOptions, Networks
from stablerep_fast.generate.runtime.tensorrt import forwards, runner
from stablerep_fast.generate.runtime.tensorrt.engine_cache import files_fingerprint
from stablerep_fast.generate.runtime.tensorrt.onnx_export import graph_spec_for
from stablerep_fast.generate.runtime.tensorrt.runner import Engine, TensorRTBackend, build_engine, network_flags


OUTPUTS = {"input_ids": "text_embeddings", "sample": "noise_pred", "latent": "images"}  # the graphs' output names


class StandIn10:
    """A stand-in for the ``tensorrt`` module of TensorRT 10: the documented calls the backend
    makes, recorded; a runtime whose engines have the I/O tensors a build was asked for."""

    version = "10.8.0.43"
    builder_flags = {"FP16": "FP16", "BF16": "BF16", "OBEY_PRECISION_CONSTRAINTS": "OBEY"}

    def __init__(self):
        self.calls = []
        rec = self
        self.__version__ = self.version
        self.float32, self.float16, self.bfloat16, self.int32, self.int64, self.int8, self.bool = (
            "f32", "f16", "bf16", "i32", "i64", "i8", "b")  # fmt: skip
        self.TensorIOMode = types.SimpleNamespace(INPUT="in", OUTPUT="out")
        self.BuilderFlag = types.SimpleNamespace(**self.builder_flags)
        self.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=5)

        class Logger:
            WARNING = 2

            def __init__(self, severity):
                pass

        class TimingCache:
            def __init__(self, data):
                self.data = data

            def combine(self, other, ignore_mismatch):
                rec.calls.append(("combine", other.data))
                return True

            def serialize(self):
                return b"timings:" + self.data

        class Profile:
            def set_shape(self, name, smallest, optimal, largest):
                rec.calls.append(("set_shape", name, tuple(smallest), tuple(optimal), tuple(largest)))

        class Config:
            progress_monitor = None

            def set_flag(self, flag):
                rec.calls.append(("set_flag", flag))

            def add_optimization_profile(self, profile):
                rec.calls.append(("add_optimization_profile",))

            def create_timing_cache(self, data):
                rec.calls.append(("create_timing_cache", bytes(data)))
                return TimingCache(bytes(data))

            def set_timing_cache(self, cache, ignore_mismatch):
                self.cache = cache

            def get_timing_cache(self):
                return self.cache

        class Parser:
            num_errors = 0

            def __init__(self, network, logger):
                pass

            def parse_from_file(self, path):
                rec.calls.append(("parse_from_file", path))
                return True

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                rec.calls.append(("create_network", flags))
                return object()

            def create_builder_config(self):
                rec.config = Config()
                return rec.config

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                rec.calls.append(("build_serialized_network",))
                start = max(i for i, c in enumerate(rec.calls) if c[0] == "create_network")
                shapes = {c[1]: c[2] for c in rec.calls[start:] if c[0] == "set_shape"}
                return memoryview(json.dumps(shapes).encode())  # the "plan" records its input shapes

        class FakeEngine:
            """I/O tensors: the built inputs (fp32) and the graph's output, of its main input's shape."""

            def __init__(self, shapes):
                self.io = [(name, tuple(shape), "in") for name, shape in shapes.items()]
                self.source = next(name for name in shapes if name in OUTPUTS)
                self.io.append((OUTPUTS[self.source], tuple(shapes[self.source]), "out"))
                self.num_io_tensors = len(self.io)

            def get_tensor_name(self, i):
                return self.io[i][0]

            def get_tensor_shape(self, name):
                return next(shape for n, shape, _ in self.io if n == name)

            def get_tensor_dtype(self, name):
                return "f32"

            def get_tensor_mode(self, name):
                return next(mode for n, _, mode in self.io if n == name)

            def create_execution_context(self):
                return Context(self)

        class Context:
            """execute_async_v3 writes output = main input + 1 (through the bound addresses)."""

            def __init__(self, engine):
                self.engine, self.addresses = engine, {}

            def set_input_shape(self, name, shape):
                pass

            def set_tensor_address(self, name, address):
                self.addresses[name] = address

            def execute_async_v3(self, stream):
                rec.calls.append(("execute", self.engine.get_tensor_shape(self.engine.source)))
                rec.run(self)
                return True

        class Runtime:
            def __init__(self, logger):
                pass

            def deserialize_cuda_engine(self, data):
                rec.calls.append(("deserialize",))
                return FakeEngine(json.loads(bytes(data)))

        class IProgressMonitor:
            def __init__(self):
                pass

        self.Logger, self.Builder, self.OnnxParser, self.IProgressMonitor = Logger, Builder, Parser, IProgressMonitor
        self.Runtime = Runtime
        self.buffers = {}

    def run(self, context):
        source, out = context.engine.source, context.engine.io[-1][0]
        self.buffers[context.addresses[out]].copy_(self.buffers[context.addresses[source]] + 1)


class StandIn11(StandIn10):
    """TensorRT 11: BuilderFlag has no FP16, BF16 or precision-constraint flags (weak typing is
    gone); every network is strongly typed."""

    version = "11.0.0.8"
    builder_flags = {"REFIT": "REFIT"}


@pytest.fixture(params=[StandIn10, StandIn11], ids=["trt10", "trt11"])
def trt(request, monkeypatch):
    fake = request.param()
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    return fake


SHAPES = {"sample": (4, 4, 8, 8), "timestep": (1,), "encoder_hidden_states": (4, 77, 32)}


def test_build_engine_calls_per_api_generation(trt, tmp_path):
    cache = tmp_path / "timing.cache"
    plan = build_engine(tmp_path / "unet.onnx", SHAPES, precision="fp16", timing_cache=cache, log=lambda m: None)
    assert json.loads(plan) == {name: list(shape) for name, shape in SHAPES.items()}
    calls = trt.calls
    if isinstance(trt, StandIn11):  # strongly typed: the creation flag, no precision flags
        assert ("create_network", 1 << 5) in calls and not [c for c in calls if c[0] == "set_flag"]
    else:  # weakly typed with the FP16 flag
        assert ("create_network", 0) in calls and [c for c in calls if c[0] == "set_flag"] == [("set_flag", "FP16")]
    assert ("parse_from_file", str(tmp_path / "unet.onnx")) in calls
    assert [c[1:] for c in calls if c[0] == "set_shape"] == [(n, s, s, s) for n, s in SHAPES.items()]
    assert calls.count(("add_optimization_profile",)) == 1
    assert ("create_timing_cache", b"") in calls and cache.read_bytes() == b"timings:"
    assert trt.config.progress_monitor is not None
    trt.calls.clear()  # the second build starts from the saved timings and merges them back
    build_engine(tmp_path / "unet.onnx", SHAPES, timing_cache=cache, log=lambda m: None)
    assert ("create_timing_cache", b"timings:") in trt.calls and ("combine", b"timings:") in trt.calls


def test_network_flags_per_precision(trt):
    flags = {p: network_flags(trt, p) for p in ("fp16", "bf16", "fp32")}
    if isinstance(trt, StandIn11):
        assert flags == {p: (1 << 5, []) for p in flags}
        del trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED  # a later 11.x without the (ignored) flag
        assert network_flags(trt, "fp16") == (0, [])
    else:
        assert flags == {"fp16": (0, ["FP16"]), "bf16": (0, ["BF16"]), "fp32": (0, [])}


@pytest.fixture
def cpu_streams(monkeypatch, trt):
    """Engines on CPU tensors: the stand-in executes through the bound addresses, and torch's
    current CUDA stream is a placeholder."""
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: types.SimpleNamespace(cuda_stream=0))
    real_empty = torch.empty

    def empty(*args, **kwargs):
        tensor = real_empty(*args, **kwargs)
        trt.buffers[tensor.data_ptr()] = tensor
        return tensor

    monkeypatch.setattr(runner.torch, "empty", empty)
    return trt


def test_an_engine_pads_smaller_batches_and_reads_its_batch_from_a_batched_input(cpu_streams):
    shapes = {"timestep": (1,), "sample": (6, 4, 8, 8), "encoder_hidden_states": (6, 77, 32)}  # an unbatched input first
    engine = Engine(json.dumps(shapes).encode(), torch.device("cpu"), batch_inputs=("sample", "encoder_hidden_states"),
                    cuda_graph=False, log=lambda m: None)  # fmt: skip
    assert engine.batch == 6
    assert engine.fits({"timestep": (1,), "sample": (4, 4, 8, 8), "encoder_hidden_states": (4, 77, 32)})
    assert not engine.fits({"timestep": (1,), "sample": (7, 4, 8, 8), "encoder_hidden_states": (7, 77, 32)})  # larger batch
    assert not engine.fits({"timestep": (1,), "sample": (4, 4, 16, 16), "encoder_hidden_states": (4, 77, 32)})  # resolution
    assert not engine.fits({"timestep": (1,), "sample": (4, 4, 8, 8), "encoder_hidden_states": (4, 64, 32)})  # text length
    assert not engine.fits({"sample": (4, 4, 8, 8), "encoder_hidden_states": (4, 77, 32)})  # another graph


def test_each_input_shape_gets_its_engine(cpu_streams, tiny_sd_dir, tmp_path, monkeypatch):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    monkeypatch.setattr(runner, "gpu_identity", lambda device: ("Stand-in GPU", "9.0"))
    monkeypatch.setattr(runner, "export_onnx", lambda spec, path: path)  # the stand-in parses nothing
    modules = [CLIPTextModel.from_pretrained(tiny_sd_dir / "text_encoder"), UNet2DConditionModel.from_pretrained(tiny_sd_dir / "unet"),
               AutoencoderKL.from_pretrained(tiny_sd_dir / "vae")]  # fmt: skip
    monkeypatch.setattr(runner, "cuda_device_of", lambda module: module.device)  # the stand-in's engines run on CPU
    backend = TensorRTBackend(*modules, BackendOptions(cache_dir=tmp_path), cuda_graph=False, log=lambda m: None)

    def unet(batch, side, text_len):
        latents = torch.zeros(batch, 4, side, side)
        out = backend.unet(latents, torch.tensor(500.0), torch.zeros(batch, text_len, 32))
        assert out.shape == latents.shape and torch.equal(out, latents + 1)  # this call's rows, computed by its engine
        return [c for c in cpu_streams.calls if c[0] == "execute"][-1][1]

    assert unet(6, 8, 77) == (6, 4, 8, 8)
    assert unet(4, 8, 77) == (6, 4, 8, 8)  # a smaller batch runs padded on the same engine
    assert unet(4, 16, 77) == (4, 4, 16, 16)  # a new resolution: a new engine
    assert unet(4, 8, 64) == (4, 4, 8, 8)  # a new text length: a new engine
    assert unet(8, 8, 77) == (8, 4, 8, 8)  # a larger batch: a new engine
    assert len(backend._engines["unet"]) == 4
    plans = sorted(p.name for p in (tmp_path / "tensorrt").glob("unet-*.plan"))
    assert len(plans) == 4 and any("-32px-b4-" in p for p in plans) and any("-16px-b6-" in p for p in plans)  # the tiny VAE: 2x
    keys = [json.loads(p.with_suffix(".json").read_text())["key"] for p in (tmp_path / "tensorrt").glob("unet-*.plan")]
    assert {k["shapes"] for k in keys} >= {"sample=4x4x8x8;timestep=1;encoder_hidden_states=4x64x32"}
    assert {k["precision"] for k in keys} == {"fp32"}  # the modules' dtype
    out = backend.decode(torch.zeros(3, 4, 8, 8))
    assert out.shape == (3, 4, 8, 8) and [c for c in cpu_streams.calls if c[0] == "execute"][-1][1] == (3, 4, 8, 8)


def test_graph_spec_for_takes_the_call_shapes(tiny_sd_dir):
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(tiny_sd_dir / "unet")
    spec = graph_spec_for("unet", unet, SHAPES)
    assert spec.input_shapes() == SHAPES and spec.batch == 4 and spec.batch_inputs == ("sample", "encoder_hidden_states")
    with pytest.raises(ValueError, match="do not fit its graph"):
        graph_spec_for("unet", unet, {**SHAPES, "timestep": (2,)})


def test_checkpoint_files_are_hashed_once_and_remembered(tmp_path, monkeypatch):
    from stablerep_fast.generate.runtime.tensorrt import engine_cache

    hashed = []
    real = engine_cache.file_sha256
    monkeypatch.setattr(engine_cache, "file_sha256", lambda path: hashed.append(path.name) or real(path))
    weights, config = tmp_path / "model.safetensors", tmp_path / "config.json"
    weights.write_bytes(os.urandom(4096))
    config.write_text('{"layers": 2}')
    memo = tmp_path / "cache" / "weights-files.json"
    first = files_fingerprint([weights, config], memo)
    assert sorted(hashed) == ["config.json", "model.safetensors"]
    hashed.clear()
    assert files_fingerprint([config, weights], memo) == first and hashed == []  # a later start: stat only
    weights.write_bytes(os.urandom(4096))  # new weights (new mtime): hashed again, another key
    assert files_fingerprint([weights, config], memo) != first and hashed == ["model.safetensors"]
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched, same bytes: same key
    hashed.clear()
    again = files_fingerprint([weights, config], memo)
    assert hashed == ["model.safetensors"] and again == files_fingerprint([weights, config], memo)
    memo.write_text("not json")  # a damaged memo is rebuilt, not fatal
    assert files_fingerprint([weights, config], memo) == again


def test_the_pipeline_passes_its_checkpoint_files(tiny_sd_dir, monkeypatch):
    from stablerep_fast.generate import StableRepPipeline
    from stablerep_fast.generate.runtime import backends

    seen = {}

    def recorder(networks, options):
        seen.update(options.weights_files)
        return []

    monkeypatch.setitem(backends.BACKENDS, "eager", backends.Backend("eager", recorder, "recorder"))
    StableRepPipeline.from_pretrained(tiny_sd_dir, device=torch.device("cpu"), dtype=torch.float32, backend="eager")
    assert sorted(seen) == ["text_encoder", "unet", "vae_decoder"]
    assert {p.name for p in seen["unet"]} >= {"config.json"} and all(p.parent == tiny_sd_dir / "unet" for p in seen["unet"])
    assert any(p.suffix in (".safetensors", ".bin") for p in seen["vae_decoder"])


def test_engine_cache_sets_inductor_folder_even_after_inductor_chose_its_default(tmp_path, monkeypatch):
    from torch._inductor.runtime.runtime_utils import cache_dir

    from stablerep_fast.generate.runtime.compiled import configure_compile_cache

    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    default = cache_dir()  # inductor resolves its default and writes it to the environment
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == default
    assert configure_compile_cache(tmp_path / "mine") == tmp_path / "mine" / "inductor"
    assert cache_dir() == str(tmp_path / "mine" / "inductor")  # where inductor now reads and writes
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "users"))
    assert configure_compile_cache(None) == tmp_path / "users"  # a folder the user chose is kept
    assert configure_compile_cache(tmp_path / "flag") == tmp_path / "flag" / "inductor"  # --engine-cache wins


# ---------------------------------------------------------------- SDXL: the UNet's added conditions


def test_sdxl_unet_exports_with_its_added_conditions(tmp_path):
    from stablerep_fast.generate.runtime.tensorrt.onnx_export import check_onnx, export_onnx, graph_spec, onnx_input_shapes
    from stablerep_fast.testing import random_pipeline

    unet = random_pipeline("sdxl", tmp_path / "tokenizer").unet.eval()
    spec = graph_spec("unet", unet, batch=3, latent_side=8, text_len=77)
    assert spec.batch_inputs == ("sample", "encoder_hidden_states", "text_embeds", "time_ids")
    path = export_onnx(spec, tmp_path / "unet.onnx")
    assert onnx_input_shapes(path) == {"sample": (3, 4, 8, 8), "timestep": (1,), "encoder_hidden_states": (3, 77, 64),
                                       "text_embeds": (3, 32), "time_ids": (3, 6)}  # fmt: skip
    assert check_onnx(spec, path) < 1e-4  # onnxruntime vs torch in fp32 (as test_backends.ONNX_RTOL)


def test_sdxl_pipeline_runs_its_unet_on_engines(cpu_streams, tmp_path, monkeypatch):
    """diffusers' SDXL __call__ with the UNet forward on (stand-in) engines: every step's UNet
    call reaches an engine whose inputs include the pooled text and time ids; text encoders and
    VAE stay in torch."""
    from stablerep_fast.testing import random_pipeline

    monkeypatch.setattr(runner, "gpu_identity", lambda device: ("Stand-in GPU", "9.0"))
    monkeypatch.setattr(runner, "export_onnx", lambda spec, path: path)  # the stand-in parses nothing
    monkeypatch.setattr(runner, "cuda_device_of", lambda module: module.device)  # the stand-in's engines run on CPU
    monkeypatch.setattr(forwards, "TensorRTBackend", functools.partial(TensorRTBackend, cuda_graph=False, log=lambda m: None))
    pipe = random_pipeline("sdxl-turbo", tmp_path / "tokenizer")
    pipe.set_progress_bar_config(disable=True)
    networks = Networks(denoiser=pipe.unet, vae=pipe.vae)  # as DiffusersGenerator hands them over
    assert forwards.setup_tensorrt(networks, BackendOptions(cache_dir=tmp_path)) == ["unet: TensorRT engines"]
    pipe(prompt=["a red star"], num_images_per_prompt=2, num_inference_steps=2, guidance_scale=3.0, height=32, width=32,
         output_type="pt")  # fmt: skip
    runs = [c[1] for c in cpu_streams.calls if c[0] == "execute"]
    assert runs == [(4, 4, 16, 16)] * 2  # 2 steps of 2 images x 2 (guidance), latents at 32 / 2 px
    (key,) = [json.loads(p.read_text())["key"] for p in (tmp_path / "tensorrt").glob("unet-*.json")]
    assert key["shapes"] == "sample=4x4x16x16;timestep=1;encoder_hidden_states=4x77x64;text_embeds=4x32;time_ids=4x6"


# ---------------------------------------------------------------- SD 1.x/2.x: every network on engines


def _sd_modules(tiny_sd_dir):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    return (CLIPTextModel.from_pretrained(tiny_sd_dir / "text_encoder").eval(),
            UNet2DConditionModel.from_pretrained(tiny_sd_dir / "unet").eval(), AutoencoderKL.from_pretrained(tiny_sd_dir / "vae").eval())  # fmt: skip


def test_sd_networks_run_all_three_on_engines(cpu_streams, tiny_sd_dir, tmp_path, monkeypatch):
    """The networks StableRepPipeline hands over (its text encoder included), called as the
    pipeline calls them: each call reaches an engine of its own component (the stand-in's output
    is its main input + 1)."""
    monkeypatch.setattr(runner, "gpu_identity", lambda device: ("Stand-in GPU", "9.0"))
    monkeypatch.setattr(runner, "export_onnx", lambda spec, path: path)
    monkeypatch.setattr(runner, "cuda_device_of", lambda module: module.device)
    monkeypatch.setattr(forwards, "TensorRTBackend", functools.partial(TensorRTBackend, cuda_graph=False, log=lambda m: None))
    text_encoder, unet, vae = _sd_modules(tiny_sd_dir)
    networks = Networks(denoiser=unet, vae=vae, text_encoder=text_encoder, static_batch=True)
    assert forwards.setup_tensorrt(networks, BackendOptions(cache_dir=tmp_path)) == ["text_encoder, unet, vae_decoder: TensorRT engines"]
    ids, latents = torch.randint(0, 90, (3, 77)), torch.randn(3, 4, 8, 8)
    assert torch.equal(text_encoder(ids)[0], ids.float() + 1)
    assert torch.equal(unet(latents, torch.tensor(500.0), encoder_hidden_states=torch.zeros(3, 77, 32), return_dict=False)[0], latents + 1)
    assert torch.equal(vae.decode(latents, return_dict=False)[0], latents + 1)
    assert torch.equal(vae.decode(latents).sample, latents + 1)
    assert [c[1] for c in cpu_streams.calls if c[0] == "execute"] == [(3, 77), (3, 4, 8, 8), (3, 4, 8, 8), (3, 4, 8, 8)]
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "tensorrt").glob("*.plan")) == ["text_encoder", "unet", "vae_decoder"]


def test_the_exported_graphs_run_the_networks_not_the_engines_in_their_place(tiny_sd_dir):
    """The backend puts engines where the modules' forward and decode were; the graphs exported to
    build those engines still run the networks (their class's forward and decode)."""
    from stablerep_fast.generate.runtime.tensorrt.onnx_export import graph_spec

    def engine(*args, **kwargs):
        raise AssertionError("the export graph called the engine that stands in for its network")

    for component, module in zip(("text_encoder", "unet", "vae_decoder"), _sd_modules(tiny_sd_dir)):
        spec = graph_spec(component, module, batch=2, latent_side=8, text_len=77)
        with torch.no_grad():
            expected = spec.module(*spec.inputs.values())
            module.forward = module.decode = engine
            torch.testing.assert_close(spec.module(*spec.inputs.values()), expected, rtol=0, atol=0)
