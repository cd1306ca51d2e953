"""TensorRT engines of the text encoder, UNet and VAE decoder, run on torch tensors.

Per component and per set of input shapes (batch, latent size, text length): export the module
to ONNX with those static shapes (``onnx_export.py``), build an engine with the TensorRT Python
API (one optimisation profile pinned to the shapes, a timing cache on disk), and keep it in the
engine cache under a key of everything it depends on (``engine_cache.py``); concurrent workers
on one node build it once. A call uses the engine whose inputs match its shapes in every
dimension but the batch and whose batch is at least the call's (the smaller batch, the last of a
shard, is padded); any other shape (a new resolution or text length) gets its own engine.
Engines run on torch tensors: static buffers bound once by data pointer, ``execute_async_v3`` on
torch's current stream, optionally replayed as a CUDA graph.

Precision follows the modules' dtype (fp16 on GPU). TensorRT 10 builds a weakly typed network
with the FP16 (or BF16) builder flag; TensorRT 11, which removed those flags and weak typing,
builds a strongly typed network whose types are the ONNX graph's, exported from the fp16 modules.

Written against the documented Python API of TensorRT 10 and 11. On the machines this was
written on TensorRT cannot be installed: everything around the engine is tested there (export,
parity via onnxruntime, keys, locking, engine selection, the build's API calls against stand-in
modules of both API generations), the engine build and run themselves only where TensorRT and a
GPU exist.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
from torch.nn import Module

from stablerep_fast.atomic import atomic_write, file_lock
from stablerep_fast.generate.runtime.networks import BackendOptions, default_cache_dir
from stablerep_fast.generate.runtime.padding import pad_batch
from stablerep_fast.generate.runtime.tensorrt.engine_cache import (
    WEIGHTS_MEMO,
    EngineKey,
    build_once,
    files_fingerprint,
    gpu_identity,
    slug,
    weights_hash,
)
from stablerep_fast.generate.runtime.tensorrt.onnx_export import GraphSpec, export_onnx, graph_spec_for

INSTALL_HINT = "pip install 'stablerep_fast[tensorrt]' on a machine with an NVIDIA GPU, or use --backend compile or eager"


class TensorRTUnavailable(RuntimeError):
    pass


def import_tensorrt():
    """The ``tensorrt`` module (>= 10), or TensorRTUnavailable saying why not in one line."""
    try:
        import tensorrt as trt
    except Exception as exc:  # ImportError, or OSError when its CUDA libraries are missing
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TensorRTUnavailable(f"the tensorrt package cannot be imported ({detail}); {INSTALL_HINT}") from exc
    major = int(str(getattr(trt, "__version__", "0")).split(".")[0] or 0)
    if major < 10:
        raise TensorRTUnavailable(f"TensorRT >= 10 is needed, found {trt.__version__}; {INSTALL_HINT}")
    return trt


def tensorrt_unavailable_reason() -> str | None:
    try:
        import_tensorrt()
    except TensorRTUnavailable as exc:
        return str(exc)
    return None


def profile_shapes(input_shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[tuple[int, ...], ...]]:
    """One optimisation profile pinned to the static shapes: name -> (min, opt, max)."""
    return {name: (tuple(shape),) * 3 for name, shape in input_shapes.items()}


def timing_cache_path(cache_dir: Path, trt_version: str, gpu: str, capability: str) -> Path:
    """Timing caches hold kernel timings of one GPU model and TensorRT version."""
    return Path(cache_dir) / f"timing-{slug(gpu)}-sm{capability.replace('.', '')}-trt{trt_version}.cache"


def _progress_monitor(trt, log: Callable[[str], None]):
    """An IProgressMonitor logging top-level phases and every tenth of a long phase's steps."""

    class Monitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)
            self.steps: dict[str, int] = {}
            self.started: dict[str, float] = {}

        def phase_start(self, phase_name, parent_phase, num_steps):
            self.steps[phase_name] = num_steps
            self.started[phase_name] = time.perf_counter()
            if parent_phase is None:
                log(f"  TensorRT: {phase_name} ({num_steps} steps)")

        def step_complete(self, phase_name, step):
            total = self.steps.get(phase_name, 0)
            if total >= 20 and (step + 1) % (total // 10) == 0:
                log(f"  TensorRT: {phase_name} {step + 1}/{total}")
            return True  # False would cancel the build

        def phase_finish(self, phase_name):
            started = self.started.pop(phase_name, None)
            if started is not None and time.perf_counter() - started > 10:
                log(f"  TensorRT: {phase_name} done in {time.perf_counter() - started:.0f} s")

    return Monitor()


PRECISIONS = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


def network_flags(trt, precision: str) -> tuple[int, list]:
    """(create_network flags, builder flags) for ``precision`` on this TensorRT. With the
    weak-typing flags (TensorRT 10): a default network and FP16/BF16 flags; without them
    (TensorRT 11): a strongly typed network (its creation flag where the enum still names it)
    and no precision flags, the ONNX graph's types being the engine's."""
    builder_flags = trt.BuilderFlag
    weak = {"fp16": "FP16", "bf16": "BF16"}.get(precision)
    if hasattr(builder_flags, "FP16"):
        return 0, ([getattr(builder_flags, weak)] if weak else [])
    creation = getattr(trt, "NetworkDefinitionCreationFlag", None)
    strongly_typed = getattr(creation, "STRONGLY_TYPED", None)
    return (0 if strongly_typed is None else 1 << int(strongly_typed)), []


def build_engine(
    onnx_path: Path,
    input_shapes: dict[str, tuple[int, ...]],
    *,
    precision: str = "fp16",
    timing_cache: Path | None = None,
    log: Callable[[str], None] = print,
) -> bytes:
    """Parse ``onnx_path`` and build a serialized engine: one optimisation profile pinned to
    ``input_shapes``, ``precision`` as ``network_flags`` says, the timing cache at
    ``timing_cache`` read first and merged back after."""
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    creation_flags, builder_flags = network_flags(trt, precision)
    network = builder.create_network(creation_flags)  # explicit batch is the only mode since TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # from the file: weights over 2 GB live beside it
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")

    config = builder.create_builder_config()
    for flag in builder_flags:
        config.set_flag(flag)
    profile = builder.create_optimization_profile()
    for name, (smallest, optimal, largest) in profile_shapes(input_shapes).items():
        profile.set_shape(name, smallest, optimal, largest)
    config.add_optimization_profile(profile)
    if timing_cache is not None and timing_cache.is_file():
        cache = config.create_timing_cache(timing_cache.read_bytes())
        log(f"  TensorRT: timing cache {timing_cache}")
    else:
        cache = config.create_timing_cache(b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    monitor = _progress_monitor(trt, log) if hasattr(trt, "IProgressMonitor") else None
    if monitor is not None:
        config.progress_monitor = monitor

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see its log above)")
    if timing_cache is not None:
        _save_timing_cache(config, timing_cache)
    return bytes(serialized)


def _save_timing_cache(config, path: Path) -> None:
    """Merge this build's timings with what other builds saved meanwhile, then replace."""
    with file_lock(path.with_name(path.name + ".lock")):
        merged = config.get_timing_cache()
        if path.is_file():
            merged.combine(config.create_timing_cache(path.read_bytes()), False)
        atomic_write(path, bytes(merged.serialize()))


def _torch_dtype(trt, dtype) -> torch.dtype:
    table = {
        trt.float32: torch.float32,
        trt.float16: torch.float16,
        trt.bfloat16: torch.bfloat16,
        trt.int32: torch.int32,
        trt.int64: torch.int64,
        trt.int8: torch.int8,
        trt.bool: torch.bool,
    }
    return table[dtype]


class Engine:
    """A deserialized engine bound to static torch buffers on ``device``.

    ``engine(name=tensor, ...)`` pads the ``batch_inputs`` (those whose first dimension is the
    batch) to the engine's batch, copies every input into its bound buffer (casting to the
    engine's dtype), runs on torch's current stream, and returns the outputs cut to the call's
    batch: views of buffers that the next call overwrites. With ``cuda_graph`` the enqueue is
    captured once and replayed."""

    def __init__(
        self,
        data: bytes,
        device: torch.device,
        *,
        batch_inputs: tuple[str, ...],
        cuda_graph: bool = True,
        log: Callable[[str], None] = print,
    ):
        trt = import_tensorrt()
        self.device = device
        self.log = log
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            raise RuntimeError("TensorRT could not deserialize the engine (built by another TensorRT version or GPU?)")
        self.context = self.engine.create_execution_context()
        self.inputs: dict[str, torch.Tensor] = {}
        self.outputs: dict[str, torch.Tensor] = {}
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            shape = tuple(self.engine.get_tensor_shape(name))
            buffer = torch.empty(shape, dtype=_torch_dtype(trt, self.engine.get_tensor_dtype(name)), device=device)
            if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                self.context.set_input_shape(name, shape)
                self.inputs[name] = buffer
            else:
                self.outputs[name] = buffer
            self.context.set_tensor_address(name, buffer.data_ptr())
        self.batch_inputs = batch_inputs
        self.batch = self.inputs[batch_inputs[0]].shape[0]
        self.use_graph = cuda_graph
        self.graph: torch.cuda.CUDAGraph | None = None

    def fits(self, shapes: dict[str, tuple[int, ...]]) -> bool:
        """Whether a call with inputs of ``shapes`` can run here: the same inputs, equal in
        every dimension but the batch, and a batch no larger than the engine's."""
        if shapes.keys() != self.inputs.keys():
            return False
        for name, shape in shapes.items():
            built = tuple(self.inputs[name].shape)
            if name in self.batch_inputs:
                if built[1:] != tuple(shape[1:]) or shape[0] > built[0]:
                    return False
            elif built != tuple(shape):
                return False
        return True

    def _enqueue(self, stream: torch.cuda.Stream) -> None:
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")

    def _capture(self) -> None:
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            self._enqueue(stream)  # a first run outside capture: TensorRT finishes lazy set-up
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, stream=stream):
                self._enqueue(stream)
        except RuntimeError as exc:
            self.log(f"  TensorRT: CUDA graph capture failed ({exc}); running without")
            self.use_graph = False
            return
        self.graph = graph

    def __call__(self, **feeds: torch.Tensor) -> dict[str, torch.Tensor]:
        n = feeds[self.batch_inputs[0]].shape[0]
        for name, value in feeds.items():
            self.inputs[name].copy_(pad_batch(value, self.batch) if name in self.batch_inputs else value)
        if self.use_graph and self.graph is None:
            self._capture()
        if self.graph is not None:
            self.graph.replay()
        else:
            self._enqueue(torch.cuda.current_stream(self.device))
        return {name: buffer[:n] for name, buffer in self.outputs.items()}


def cuda_device_of(module: Module) -> torch.device:
    """The CUDA device ``module`` is on; TensorRTUnavailable for any other device."""
    if module.device.type != "cuda":
        raise TensorRTUnavailable("TensorRT engines run on CUDA GPUs only")
    return module.device


class TensorRTBackend:
    """Engines for the three networks, built lazily per set of input shapes (see module doc).

    ``options.weights_files``: per component ("text_encoder", "unet", "vae_decoder"), the
    checkpoint files its weights were loaded from; the engine cache is keyed on them (``files_fingerprint``:
    a content hash computed once, then only size and mtime are checked). A component without
    files (modules built in memory) is keyed on a hash of its weights instead."""

    name = "tensorrt"

    def __init__(
        self, text_encoder: Module, unet: Module, vae: Module, options: BackendOptions = BackendOptions(), *,
        cuda_graph: bool = True, log: Callable[[str], None] = print,
    ):  # fmt: skip
        self.trt = import_tensorrt()
        self.modules = {"text_encoder": text_encoder, "unet": unet, "vae_decoder": vae}
        self.device = cuda_device_of(unet)
        self.dtype = unet.dtype
        self.precision = PRECISIONS[self.dtype]
        self.cache_dir = Path(options.cache_dir or default_cache_dir()) / "tensorrt"
        self.weights_files = options.weights_files or {}
        self.cuda_graph = cuda_graph
        self.log = log
        self.gpu, self.capability = gpu_identity(self.device)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self._weights: dict[str, str] = {}
        self._engines: dict[str, list[Engine]] = {}

    def weights_id(self, component: str) -> str:
        """What identifies the component's weights in engine keys (computed once per process)."""
        if component not in self._weights:
            files = self.weights_files.get(component)
            if files:
                self._weights[component] = files_fingerprint(files, self.cache_dir / WEIGHTS_MEMO)
            else:
                self._weights[component] = weights_hash(self.modules[component])
        return self._weights[component]

    def engine_key(self, spec: GraphSpec) -> EngineKey:
        """The cache key of ``spec``'s engine: weights, every input shape, precision, GPU, TensorRT."""
        shapes = spec.input_shapes()
        latent_side = shapes["sample"][-1] if "sample" in shapes else shapes.get("latent", (0,))[-1]
        return EngineKey(
            weights=self.weights_id(spec.component),
            component=spec.component,
            resolution=latent_side * self.vae_scale_factor,
            batch=spec.batch,
            precision=self.precision,
            gpu=self.gpu,
            compute_capability=self.capability,
            trt_version=self.trt.__version__,
            shapes=";".join(f"{name}={'x'.join(map(str, shape))}" for name, shape in shapes.items()),
        )

    def engine_for(self, component: str, shapes: dict[str, tuple[int, ...]]) -> Engine:
        """An engine that fits inputs of ``shapes`` (see Engine.fits): one already loaded, else
        the cache's or a new build for exactly these shapes."""
        engines = self._engines.setdefault(component, [])
        for engine in engines:
            if engine.fits(shapes):
                return engine
        spec = graph_spec_for(component, self.modules[component], shapes)

        def build() -> bytes:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=self.cache_dir, prefix=f".onnx-{component}-") as tmp:
                started = time.perf_counter()
                self.log(f"  exporting {component} to ONNX with inputs {spec.input_shapes()} ...")
                onnx_path = export_onnx(spec, Path(tmp) / f"{component}.onnx")
                self.log(f"  exported in {time.perf_counter() - started:.0f} s; building (this takes minutes) ...")
                timing = timing_cache_path(self.cache_dir, self.trt.__version__, self.gpu, self.capability)
                return build_engine(onnx_path, spec.input_shapes(), precision=self.precision, timing_cache=timing, log=self.log)

        _, data, _ = build_once(self.cache_dir, self.engine_key(spec), build, log=self.log)
        engine = Engine(data, self.device, batch_inputs=spec.batch_inputs, cuda_graph=self.cuda_graph, log=self.log)
        engines.append(engine)
        return engine

    def _run(self, component: str, output: str, **feeds: torch.Tensor) -> torch.Tensor:
        engine = self.engine_for(component, {name: tuple(t.shape) for name, t in feeds.items()})
        return engine(**feeds)[output].to(self.dtype, copy=True)

    def encode_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self._run("text_encoder", "text_embeddings", input_ids=input_ids)

    def unet(self, latents: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor, **added: torch.Tensor) -> torch.Tensor:
        """``added``: SDXL's text_embeds and time_ids (onnx_export.added_conditions)."""
        timestep = torch.as_tensor(timestep, device=self.device).reshape(1)
        return self._run("unet", "noise_pred", sample=latents, timestep=timestep, encoder_hidden_states=context, **added)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self._run("vae_decoder", "images", latent=latents)
