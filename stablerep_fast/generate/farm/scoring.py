"""Scoring generated images against their captions, and redrawing those that score low.

``generate --score NAME`` scores every image (``models/scorers.py``) and records the scores in
its sample's KEY.json (``scores``, aligned with the images); ``--regenerate-below X`` redraws an
image scoring below X from the noise of ``seeds.attempt_index(k, r, K)`` for attempts r = 1..R
(``--max-regenerations R``), stopping at the first attempt that reaches X and keeping the
best-scoring attempt otherwise (the earliest among equals). Every draw depends only on (seed,
caption, k, r), so a resumed or re-split run writes the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from stablerep_fast.generate.farm.config import GenerateConfig
from stablerep_fast.generate.farm.seeds import attempt_index, image_noise, noise_seed
from stablerep_fast.generate.models.protocol import Generator, generated_images
from stablerep_fast.generate.models.scorers import score_images


@dataclass
class ScoredBatch:
    images: np.ndarray  # uint8 [B, K, S, S, 3], low scorers replaced
    scores: np.ndarray  # float64 [B, K]
    attempts: np.ndarray  # int [B, K]: the attempt each kept image comes from (0: the first draw)

    def metadata(self, config: GenerateConfig, caption_index: int, b: int) -> dict:
        """What sample ``b`` (caption ``caption_index``) adds to its KEY.json: scores, and with
        regeneration the attempt of each image and the noise seeds of the images kept."""
        record = {"scores": [float(s) for s in self.scores[b]]}
        if config.regenerate_below is not None:
            attempts = [int(a) for a in self.attempts[b]]
            record["attempts"] = attempts
            record["seeds"] = [noise_seed(config.seed, caption_index, attempt_index(k, a, config.images_per_caption))
                               for k, a in enumerate(attempts)]  # fmt: skip
        return record


def score_batch(config: GenerateConfig, pipe: Generator, scorer: object, prompts: list[str], batch: list[int],
                noise: torch.Tensor, images: np.ndarray) -> ScoredBatch:  # fmt: skip
    """Score ``images`` (uint8 [B, K, S, S, 3] of captions ``batch``, texts ``prompts``, drawn from
    ``noise`` [B, K, ...]) and, with ``config.regenerate_below``, redraw the low scorers (module
    docstring), all images of one attempt in one generator call."""
    b_count, k_count = images.shape[:2]
    flat_prompts = [p for p in prompts for _ in range(k_count)]
    scores = score_images(scorer, flat_prompts, images.reshape(-1, *images.shape[2:]),
                          noise.reshape(b_count * k_count, *noise.shape[2:]), config.guidance).reshape(b_count, k_count)  # fmt: skip
    attempts = np.zeros((b_count, k_count), dtype=np.int64)
    if config.regenerate_below is None:
        return ScoredBatch(images, scores, attempts)
    images = images.copy()
    best = scores.copy()
    for attempt in range(1, config.max_regenerations + 1):
        low = [(b, k) for b in range(b_count) for k in range(k_count) if best[b, k] < config.regenerate_below]
        if not low:
            break
        pairs = [[(batch[b], attempt_index(k, attempt, config.images_per_caption))] for b, k in low]
        retry_noise = image_noise(config.seed, pairs, tuple(noise.shape[2:]), views=config.views, latent_std=config.latent_std)
        retry_prompts = [prompts[b] for b, _ in low]
        retried = generated_images(pipe, retry_prompts, retry_noise, (len(low), 1, *images.shape[2:]),
                                   resolution=config.resolution, output_size=config.save_size,
                                   num_inference_steps=config.steps, guidance_scale=config.guidance)[:, 0]  # fmt: skip
        retry_scores = score_images(scorer, retry_prompts, retried, retry_noise[:, 0], config.guidance)
        for (b, k), image, score in zip(low, retried, retry_scores):
            if score > best[b, k]:
                images[b, k], best[b, k], attempts[b, k] = image, score, attempt
    return ScoredBatch(images, best, attempts)
