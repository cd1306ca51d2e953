"""ONNX export of the three Stable Diffusion networks with the run's static shapes.

One entry per component: a thin wrapper module with tensor-only inputs and outputs, the names
of those tensors (the engine's bindings use the same names), and example inputs with the
run's batch and latent size. A wrapper runs its network's class forward (or ``decode``), not the
instance's: the backend puts the engine itself there (``forwards.py``). ``export_onnx`` writes the graph; ``check_onnx`` runs it with
onnxruntime on CPU against torch (the check CI can make without TensorRT or a GPU).

Shapes are static on purpose: TensorRT builds its fastest kernels for one shape and a static
engine can be replayed as a CUDA graph (dynamic shapes cost about 10%, docs/method.md).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

COMPONENTS = ("text_encoder", "unet", "vae_decoder")
DEFAULT_OPSET = 17


class TextEncoderGraph(torch.nn.Module):
    """input_ids int32 [N, L] -> text_embeddings [N, L, D] (the last hidden state)."""

    def __init__(self, text_encoder: torch.nn.Module):
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return type(self.text_encoder).forward(self.text_encoder, input_ids.long())[0]


class UNetGraph(torch.nn.Module):
    """sample [N, C, h, w], timestep float32 [1], encoder_hidden_states [N, L, D] -> noise_pred;
    SDXL's UNet also takes text_embeds [N, P] (the pooled text) and time_ids [N, 6] (sizes, crop)."""

    def __init__(self, unet: torch.nn.Module):
        super().__init__()
        self.unet = unet

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        text_embeds: torch.Tensor | None = None,
        time_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        added = None if text_embeds is None else {"text_embeds": text_embeds, "time_ids": time_ids}
        return type(self.unet).forward(self.unet, sample, timestep, encoder_hidden_states=encoder_hidden_states,
                                       added_cond_kwargs=added, return_dict=False)[0]  # fmt: skip


def added_conditions(unet: torch.nn.Module) -> dict[str, int]:
    """SDXL's extra UNet inputs and their widths (name -> P), none for SD 1.x/2.x."""
    cfg = unet.config
    if cfg.get("addition_embed_type") != "text_time":
        return {}
    time_ids = 6  # original size, crop corner, target size
    return {"text_embeds": cfg.projection_class_embeddings_input_dim - time_ids * cfg.addition_time_embed_dim, "time_ids": time_ids}


class VAEDecoderGraph(torch.nn.Module):
    """Unscaled latent [N, C, h, w] -> images [N, 3, H, W] in about [-1, 1]."""

    def __init__(self, vae: torch.nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return type(self.vae).decode(self.vae, latent, return_dict=False)[0]


@dataclass(frozen=True)
class GraphSpec:
    """A component's graph: wrapper, input tensors (name -> example) and output names."""

    component: str
    module: torch.nn.Module
    inputs: dict[str, torch.Tensor]
    outputs: tuple[str, ...]  # every output's first dimension is the batch
    batch_inputs: tuple[str, ...]  # the inputs whose first dimension is the batch

    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: tuple(t.shape) for name, t in self.inputs.items()}

    @property
    def batch(self) -> int:
        return self.inputs[self.batch_inputs[0]].shape[0]


def graph_spec(component: str, module: torch.nn.Module, *, batch: int, latent_side: int = 0, text_len: int = 77) -> GraphSpec:
    """The wrapper and example inputs of ``component`` for a static ``batch``.

    module: the CLIP text model, the UNet (SD 1.x/2.x/XL) or the AutoencoderKL, on its device and dtype.
    latent_side: h = w of the latents (UNet, VAE decoder); text_len: tokens per prompt.
    """
    params = next(module.parameters())
    device, dtype = params.device, params.dtype
    gen = torch.Generator().manual_seed(0)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=gen).to(device, dtype)

    if component == "text_encoder":
        vocab = module.config.vocab_size
        ids = torch.randint(0, vocab, (batch, text_len), generator=gen, dtype=torch.int32).to(device)
        return GraphSpec(component, TextEncoderGraph(module), {"input_ids": ids}, ("text_embeddings",), ("input_ids",))
    if component == "unet":
        cfg = module.config
        inputs = {
            "sample": randn(batch, cfg.in_channels, latent_side, latent_side),
            "timestep": torch.tensor([500.0], device=device),
            "encoder_hidden_states": randn(batch, text_len, cfg.cross_attention_dim),
            **{name: randn(batch, width) for name, width in added_conditions(module).items()},
        }
        batched = ("sample", "encoder_hidden_states", *added_conditions(module))
        return GraphSpec(component, UNetGraph(module), inputs, ("noise_pred",), batched)
    if component == "vae_decoder":
        inputs = {"latent": randn(batch, module.config.latent_channels, latent_side, latent_side)}
        return GraphSpec(component, VAEDecoderGraph(module), inputs, ("images",), ("latent",))
    raise ValueError(f"unknown component {component!r}; one of {COMPONENTS}")


def graph_spec_for(component: str, module: torch.nn.Module, shapes: dict[str, tuple[int, ...]]) -> GraphSpec:
    """The graph of ``component`` whose inputs have exactly ``shapes`` (name -> shape, as a call
    feeds them); ValueError if the component cannot take them."""
    if component == "text_encoder":
        batch, text_len = shapes["input_ids"]
        spec = graph_spec(component, module, batch=batch, text_len=text_len)
    elif component == "unet":
        batch, text_len = shapes["encoder_hidden_states"][:2]
        spec = graph_spec(component, module, batch=batch, latent_side=shapes["sample"][-1], text_len=text_len)
    elif component == "vae_decoder":
        spec = graph_spec(component, module, batch=shapes["latent"][0], latent_side=shapes["latent"][-1])
    else:
        raise ValueError(f"unknown component {component!r}; one of {COMPONENTS}")
    if spec.input_shapes() != {name: tuple(shape) for name, shape in shapes.items()}:
        raise ValueError(f"{component}: inputs of shapes {shapes} do not fit its graph, which takes {spec.input_shapes()}")
    return spec


def export_onnx(spec: GraphSpec, path: Path, *, opset: int = DEFAULT_OPSET, dynamo: bool = False) -> Path:
    """Write ``spec``'s graph to ``path`` with static shapes (weights as external data when
    over 2 GB, beside it). dynamo=False: the TorchScript exporter (what TensorRT's diffusion
    demo uses; a few times faster to export); True: torch.export + onnxscript."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    args = tuple(spec.inputs.values())
    names = dict(input_names=list(spec.inputs), output_names=list(spec.outputs))
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and deprecation warnings, one per diffusers assert
        if dynamo:
            program = torch.onnx.export(spec.module, args, dynamo=True, opset_version=max(opset, 18), verbose=False, **names)
            program.save(str(path), external_data=_size_bytes(spec.module) > 2**31 - 2**26)
        else:
            torch.onnx.export(spec.module, args, str(path), dynamo=False, opset_version=opset, do_constant_folding=True, **names)
    return path


def _size_bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


def onnx_input_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Input name -> static shape as written in the ONNX file (a symbolic dim raises)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    shapes = {}
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        if any(not d.HasField("dim_value") for d in dims):
            raise ValueError(f"{path}: input {value.name} has a dynamic dimension")
        shapes[value.name] = tuple(d.dim_value for d in dims)
    return shapes


def run_onnxruntime(path: Path, inputs: dict[str, torch.Tensor]) -> list[np.ndarray]:
    """Run an exported graph with onnxruntime on CPU."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {name: t.detach().cpu().numpy() for name, t in inputs.items()})


def check_onnx(spec: GraphSpec, path: Path) -> float:
    """Largest |onnxruntime - torch| of the graph's output over ``spec.inputs``, relative to
    the largest |torch| output (so one number fits every component's scale)."""
    with torch.no_grad():
        expected = spec.module(*spec.inputs.values()).float().cpu().numpy()
    (got,) = run_onnxruntime(path, spec.inputs)
    return float(np.abs(got.astype(np.float32) - expected).max() / max(np.abs(expected).max(), 1e-12))
