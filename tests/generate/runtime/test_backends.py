"""The fast backends around their engines: ONNX export checked with onnxruntime, engine cache
keys, the build lock, static-batch plumbing and the "auto" rule (the TensorRT build and engine
selection against stand-in modules: test_tensorrt.py). Engine build and run need TensorRT and a
GPU: tested at the end, skipped without them."""

import json
import multiprocessing
import os
import sys
import time
import types
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch

from stablerep_fast.cli import main as cli_main
from stablerep_fast.generate import GenerateError, StableRepPipeline, initial_noise
from stablerep_fast.generate.runtime.backends import AUTO_ORDER, resolve_backend
from stablerep_fast.generate.runtime.padding import pad_batch
from stablerep_fast.generate.runtime.tensorrt.engine_cache import EngineKey, build_once, cached_engine, weights_hash
from stablerep_fast.generate.runtime.tensorrt.onnx_export import COMPONENTS, check_onnx, export_onnx, graph_spec, onnx_input_shapes
from stablerep_fast.generate.runtime.tensorrt.runner import profile_shapes, tensorrt_unavailable_reason

# fp32 on CPU, onnxruntime vs torch: the same arithmetic reordered by constant folding and
# ORT's fusions (measured about 1e-6 of the output's scale on the tiny models).
ONNX_RTOL = 1e-4
RES = 32
CAPTIONS = ["a small red striped star on a grey background", "a blue circle", "x"]


@pytest.fixture(scope="module")
def modules(tiny_sd_dir):
    """Fresh, unoptimised fp32 modules of the tiny model (what the TensorRT backend exports)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    return {
        "text_encoder": CLIPTextModel.from_pretrained(tiny_sd_dir / "text_encoder").eval(),
        "unet": UNet2DConditionModel.from_pretrained(tiny_sd_dir / "unet").eval(),
        "vae_decoder": AutoencoderKL.from_pretrained(tiny_sd_dir / "vae").eval(),
    }


# ---------------------------------------------------------------- ONNX export, onnxruntime parity


@pytest.mark.parametrize("component,batch", [("text_encoder", 3), ("unet", 6), ("vae_decoder", 5)])
def test_onnx_export_matches_torch(modules, tmp_path, component, batch):
    spec = graph_spec(component, modules[component], batch=batch, latent_side=8, text_len=77)
    path = export_onnx(spec, tmp_path / f"{component}.onnx")
    assert onnx_input_shapes(path) == spec.input_shapes()  # static: the run's batch, no symbolic dims
    assert next(iter(spec.input_shapes().values()))[0] == batch
    err = check_onnx(spec, path)
    assert err < ONNX_RTOL, f"{component}: onnxruntime differs from torch by {err:.2e} of the output scale"


def test_onnx_export_with_the_dynamo_exporter(modules, tmp_path):
    spec = graph_spec("text_encoder", modules["text_encoder"], batch=2, text_len=77)
    path = export_onnx(spec, tmp_path / "te.onnx", dynamo=True)
    assert onnx_input_shapes(path) == {"input_ids": (2, 77)}
    assert check_onnx(spec, path) < ONNX_RTOL


def test_graph_spec_shapes_and_profile(modules):
    spec = graph_spec("unet", modules["unet"], batch=8, latent_side=16, text_len=77)
    assert spec.input_shapes() == {"sample": (8, 4, 16, 16), "timestep": (1,), "encoder_hidden_states": (8, 77, 32)}
    assert spec.outputs == ("noise_pred",)
    profile = profile_shapes(spec.input_shapes())
    assert profile["sample"] == ((8, 4, 16, 16),) * 3  # min = opt = max: one static shape
    assert set(COMPONENTS) == {"text_encoder", "unet", "vae_decoder"}
    with pytest.raises(ValueError, match="unknown component"):
        graph_spec("safety_checker", modules["unet"], batch=1)


# ---------------------------------------------------------------- engine cache keys


BASE_KEY = EngineKey(
    weights="ab" * 32, component="unet", resolution=512, batch=40, precision="fp16",
    gpu="NVIDIA H100 80GB HBM3", compute_capability="9.0", trt_version="10.8.0.43", shapes="sample=40x4x64x64",
)  # fmt: skip
CHANGES = dict(
    weights="cd" * 32, component="vae_decoder", resolution=768, batch=20, precision="fp32",
    gpu="NVIDIA A100-SXM4-80GB", compute_capability="8.0", trt_version="10.9.0.34", shapes="sample=40x4x96x96", engine_format=99,
)  # fmt: skip


def test_every_key_ingredient_changes_the_key():
    assert set(CHANGES) == set(asdict(BASE_KEY))  # every field is exercised below
    same = EngineKey(**asdict(BASE_KEY))
    assert same.digest() == BASE_KEY.digest() and same.filename() == BASE_KEY.filename()
    seen = {BASE_KEY.digest()}
    for field, value in CHANGES.items():
        changed = replace(BASE_KEY, **{field: value})
        assert changed.digest() not in seen, field
        assert changed.filename() != BASE_KEY.filename(), field
        seen.add(changed.digest())
    assert BASE_KEY.filename().startswith("unet-512px-b40-fp16-")


def test_weights_hash_follows_weights_and_precision(modules):
    unet = modules["unet"]
    h = weights_hash(unet)
    assert weights_hash(unet) == h
    te = modules["text_encoder"]
    assert weights_hash(te) != h
    clone = type(te)(te.config).eval()
    clone.load_state_dict(te.state_dict())
    assert weights_hash(clone) == weights_hash(te)
    with torch.no_grad():
        next(clone.parameters()).view(-1)[0] += 1e-3
    assert weights_hash(clone) != weights_hash(te)
    assert weights_hash(clone.half()) != weights_hash(clone.float())


def test_an_engine_for_another_key_is_not_reused(tmp_path):
    builds = []
    path, data, built = build_once(tmp_path, BASE_KEY, lambda: builds.append(1) or b"engine-1", log=lambda m: None)
    assert built and data == b"engine-1" and path.name == BASE_KEY.filename()
    assert build_once(tmp_path, BASE_KEY, lambda: b"never", log=lambda m: None) == (path, b"engine-1", False)
    # A key file that does not match (e.g. a hand-copied engine) is not trusted.
    meta = path.with_suffix(".json")
    record = json.loads(meta.read_text())
    record["key"]["gpu"] = "some other GPU"
    meta.write_text(json.dumps(record))
    assert cached_engine(path, BASE_KEY) is None
    assert build_once(tmp_path, BASE_KEY, lambda: b"engine-2", log=lambda m: None)[1:] == (b"engine-2", True)


# ---------------------------------------------------------------- one build per node


def _worker(cache_dir: str, out: str, delay: float) -> None:
    time.sleep(delay)
    messages = []

    def slow_build() -> bytes:
        with open(Path(cache_dir) / "builds.log", "a") as f:
            f.write("build\n")
        time.sleep(1.5)
        return b"serialized engine"

    path, data, built = build_once(Path(cache_dir), BASE_KEY, slow_build, log=messages.append)
    Path(out).write_text(json.dumps({"built": built, "data": data.decode(), "messages": messages}))


def test_concurrent_workers_build_once(tmp_path):
    ctx = multiprocessing.get_context("fork")
    outs = [tmp_path / f"worker{i}.json" for i in range(2)]
    workers = [ctx.Process(target=_worker, args=(str(tmp_path), str(out), 0.3 * i)) for i, out in enumerate(outs)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(30)
        assert w.exitcode == 0
    results = [json.loads(out.read_text()) for out in outs]
    assert (tmp_path / "builds.log").read_text() == "build\n"  # one build
    assert [r["built"] for r in results] == [True, False]
    assert all(r["data"] == "serialized engine" for r in results)
    assert any("waiting for another process" in m for m in results[1]["messages"])
    assert any("reusing" in m for m in results[1]["messages"])


# ---------------------------------------------------------------- availability and "auto"


def test_tensorrt_import_failure_falls_back(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt raises ImportError
    reason = tensorrt_unavailable_reason()
    assert reason is not None and "cannot be imported" in reason and "\n" not in reason
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_backend("auto", torch.device("cuda")).name == "compile"  # a GPU without TensorRT
    assert resolve_backend("auto", torch.device("cpu")).name == "eager"
    with pytest.raises(GenerateError, match="backend 'tensorrt' cannot run on cuda: the tensorrt package cannot be imported"):
        resolve_backend("tensorrt", torch.device("cuda"))


def test_auto_prefers_tensorrt_when_it_imports_and_a_gpu_is_there(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.8.0.43"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_backend("auto", torch.device("cuda")).name == "tensorrt"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_backend("auto", torch.device("cuda")).name == "eager"  # no GPU: neither tensorrt nor compile
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="8.6.1"))
    assert "TensorRT >= 10 is needed" in tensorrt_unavailable_reason()
    assert AUTO_ORDER["cuda"] == ("tensorrt", "compile", "eager") and AUTO_ORDER["cpu"] == ("eager",)


def test_cli_backend_tensorrt_gives_a_one_line_error(tiny_sd_dir, captions_file, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    args = ["generate", "--captions", str(captions_file(2)), "--model", str(tiny_sd_dir), "--out", str(tmp_path / "out"),
            "--device", "cpu", "--backend", "tensorrt", "--no-progress"]  # fmt: skip
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: backend 'tensorrt' cannot run on cpu") and "Traceback" not in err
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- static batch plumbing


def test_pad_batch():
    x = torch.arange(6.0).reshape(3, 2)
    assert pad_batch(x, 3) is x
    padded = pad_batch(x, 5)
    assert padded.shape == (5, 2) and torch.equal(padded[:3], x) and torch.equal(padded[3:], x[:1].expand(2, 2))


def _images(pipe, captions, indices, k=2, steps=3):
    noise = initial_noise(0, indices, k, pipe.latent_shape(RES))
    return pipe(captions, noise, resolution=RES, output_size=RES, num_inference_steps=steps, guidance_scale=2.0).images


def test_compile_backend_static_batch_plumbing_on_cpu(tiny_sd_dir, monkeypatch, tmp_path):
    """The compile backend's padding and slicing, with torch.compile replaced by the identity
    (compiling for real on this CPU takes minutes: the real thing is tested on GPU)."""
    seen = []

    def fake_compile(fn, **kwargs):
        seen.append(kwargs)

        def run(x, *args, **kw):
            run.batches.append(x.shape[0])
            return fn(x, *args, **kw)

        run.batches = []
        return run

    monkeypatch.setattr(torch, "compile", fake_compile)
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    cpu = dict(device=torch.device("cpu"), dtype=torch.float32, cache_dir=tmp_path)
    compiled = StableRepPipeline.from_pretrained(tiny_sd_dir, backend="compile", **cpu)
    eager = StableRepPipeline.from_pretrained(tiny_sd_dir, backend="eager", **cpu)
    assert compiled.backend == "compile" and all(kw["dynamic"] is False for kw in seen)
    assert Path(os.environ["TORCHINDUCTOR_CACHE_DIR"]) == tmp_path / "inductor"  # where inductor keeps its artefacts
    full = _images(compiled, CAPTIONS, [0, 1, 2])
    last = _images(compiled, CAPTIONS[:1], [0])  # a smaller last batch runs padded to the static one
    assert set(compiled.unet.forward.compiled.batches) == {12}  # 3 captions x 2 images x 2 (guidance)
    assert set(compiled.vae.decode.compiled.batches) == {6}
    assert np.abs(full.astype(np.int16) - _images(eager, CAPTIONS, [0, 1, 2])).max() <= 1
    assert np.abs(last.astype(np.int16) - full[:1]).max() <= 1


def test_eager_backend_applies_its_optimisations(tiny_sd):
    assert "unet: fused qkv" in tiny_sd.optimisations and "unet: sdpa" in tiny_sd.optimisations


# ---------------------------------------------------------------- on a GPU


@pytest.mark.gpu
def test_tensorrt_backend_matches_eager_on_gpu(tiny_sd_dir, tmp_path):
    pytest.importorskip("tensorrt")
    cuda = dict(device=torch.device("cuda"), dtype=torch.float16, cache_dir=tmp_path)
    eager = StableRepPipeline.from_pretrained(tiny_sd_dir, backend="eager", **cuda)
    engines = StableRepPipeline.from_pretrained(tiny_sd_dir, backend="tensorrt", **cuda)
    diff = np.abs(_images(eager, CAPTIONS, [0, 1, 2]).astype(np.int16) - _images(engines, CAPTIONS, [0, 1, 2]))
    assert diff.max() <= 8  # fp16 kernels chosen by TensorRT vs PyTorch's, 3 steps, then 8 bits
    plans = sorted(p.name for p in (tmp_path / "tensorrt").glob("*.plan"))
    assert [p.split("-")[0] for p in plans] == ["text_encoder", "unet", "vae_decoder"]
    again = StableRepPipeline.from_pretrained(tiny_sd_dir, backend="tensorrt", **cuda)
    _images(again, CAPTIONS, [0, 1, 2])
    assert sorted(p.name for p in (tmp_path / "tensorrt").glob("*.plan")) == plans  # reused, none rebuilt
