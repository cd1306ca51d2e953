"""The ``tensorrt`` backend's set-up: the networks' calls routed to TensorRT engines (``runner.py``).

Each forward stands in for a module's own, taking the call as the pipeline makes it: a diffusers
UNet's (SD 1.x/2.x/XL layouts; SDXL's pooled text and time ids come as ``added_cond_kwargs``),
a CLIP text model's, an AutoencoderKL's ``decode``. The ONNX export of each network runs its
class's own forward (``onnx_export.py``), never these.
"""

from __future__ import annotations

from stablerep_fast.errors import GenerateError
from stablerep_fast.generate.runtime.networks import BackendOptions, Networks
from stablerep_fast.generate.runtime.tensorrt.runner import TensorRTBackend


class UNetEngineForward:
    """A diffusers UNet's forward run by the UNet engines."""

    def __init__(self, runner: TensorRTBackend):
        self.runner = runner

    def __call__(self, sample, timestep, encoder_hidden_states, *, added_cond_kwargs=None, timestep_cond=None,
                 return_dict: bool = True, **unused):  # fmt: skip
        if timestep_cond is not None:
            raise GenerateError("TensorRT engines of a UNet take no timestep_cond (an LCM UNet); use --backend compile")
        added = {name: added_cond_kwargs[name] for name in ("text_embeds", "time_ids")} if added_cond_kwargs else {}
        noise = self.runner.unet(sample, timestep, encoder_hidden_states, **added)
        if not return_dict:
            return (noise,)
        from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

        return UNet2DConditionOutput(sample=noise)


class TextEncoderEngineForward:
    """A CLIP text model's forward run by the text encoder engines: (last hidden state,)."""

    def __init__(self, runner: TensorRTBackend):
        self.runner = runner

    def __call__(self, input_ids, *args, **unused):
        return (self.runner.encode_text(input_ids),)


class DecoderEngineForward:
    """An AutoencoderKL's ``decode`` run by the VAE decoder engines."""

    def __init__(self, runner: TensorRTBackend):
        self.runner = runner

    def __call__(self, latents, return_dict: bool = True, **unused):
        images = self.runner.decode(latents)
        if not return_dict:
            return (images,)
        from diffusers.models.autoencoders.vae import DecoderOutput

        return DecoderOutput(sample=images)


def setup_tensorrt(networks: Networks, options: BackendOptions = BackendOptions()) -> list[str]:
    """The denoiser (a UNet) on engines built per input shapes and cached as ``runner.py`` says;
    with ``networks.text_encoder`` the text encoder and the VAE decoder too, else those stay in torch."""
    runner = TensorRTBackend(networks.text_encoder, networks.denoiser, networks.vae, options)
    networks.denoiser.forward = UNetEngineForward(runner)
    if networks.text_encoder is None:
        return ["unet: TensorRT engines"]
    networks.text_encoder.forward = TextEncoderEngineForward(runner)
    networks.vae.decode = DecoderEngineForward(runner)
    return ["text_encoder, unet, vae_decoder: TensorRT engines"]
