"""A user-defined generator, as a user would write one (the README's example): a disc of the
caption's colour on its complement, placed and sized by the image's latent. Tests import it
in-process, or copy this file to a temporary folder and name it by import path."""

import zlib

import numpy as np

from stablerep_fast.generate import GenerationOutput


class Blobs:
    model_id = "blobs-v1"

    def latent_shape(self, resolution):
        return (3,)

    def __call__(self, prompts, latents, *, resolution, output_size, **options):
        y, x = np.mgrid[0:output_size, 0:output_size] / output_size
        images = np.empty((*latents.shape[:2], output_size, output_size, 3), np.uint8)
        for i, prompt in enumerate(prompts):
            colour = np.frombuffer(zlib.crc32(prompt.encode()).to_bytes(4, "little")[:3], np.uint8)
            for k, (dx, dy, r) in enumerate(np.tanh(latents[i].double().numpy())):
                inside = (x - 0.5 - 0.2 * dx) ** 2 + (y - 0.5 - 0.2 * dy) ** 2 < (0.25 + 0.1 * r) ** 2
                images[i, k] = np.where(inside[..., None], colour, 255 - colour)
        return GenerationOutput(images)


def expected_image(prompt: str, latent: np.ndarray, size: int) -> np.ndarray:
    """One image of Blobs written out pixel by pixel (the reference the tests compare with)."""
    colour = zlib.crc32(prompt.encode()).to_bytes(4, "little")[:3]
    dx, dy, r = np.tanh(np.asarray(latent, dtype=np.float64))
    image = np.empty((size, size, 3), np.uint8)
    for row in range(size):
        for col in range(size):
            inside = (col / size - 0.5 - 0.2 * dx) ** 2 + (row / size - 0.5 - 0.2 * dy) ** 2 < (0.25 + 0.1 * r) ** 2
            image[row, col] = [c if inside else 255 - c for c in colour]
    return image
