"""Frozen features: an encoder over uint8 images, ImageNet-normalised, in inference mode."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stablerep_fast.data.augment import MEAN, STD


@torch.inference_mode()
def extract_features(
    encoder: nn.Module, images: np.ndarray, *, image_size: int, batch_size: int = 256, device: str | torch.device = "cpu"
) -> np.ndarray:
    """images: uint8 [N, H, W, 3] -> float32 [N, D]: resized to ``image_size`` (bilinear,
    antialiased), normalised, run through ``encoder`` in eval mode (bf16 autocast on GPU)."""
    device = torch.device(device)
    was_training = encoder.training
    encoder.eval().to(device)
    mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=device).view(1, 3, 1, 1)
    out = []
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(images[start : start + batch_size]).to(device).permute(0, 3, 1, 2).float() / 255
        if x.shape[-1] != image_size or x.shape[-2] != image_size:
            x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out.append(encoder((x - mean) / std).float().cpu())
    encoder.train(was_training)
    return torch.cat(out).numpy()
