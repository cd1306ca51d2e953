import math

import torch

from stablerep_fast.generate.farm.seeds import ANCHOR, initial_noise, noise_seed

SHAPE = (4, 8, 8)


def _direct(seed: int) -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed))


def test_noise_depends_only_on_seed_caption_and_image():
    batch = initial_noise(7, [3, 5, 11], 4, SHAPE)
    alone = initial_noise(7, [5], 4, SHAPE)
    assert batch.shape == (3, 4, *SHAPE)
    assert torch.equal(batch[1], alone[0])
    for row, i in enumerate([3, 5, 11]):
        for k in range(4):
            assert torch.equal(batch[row, k], _direct(noise_seed(7, i, k)))
    assert not torch.equal(batch[0, 0], batch[0, 1])
    assert not torch.equal(initial_noise(8, [3], 1, SHAPE), batch[:1, :1])


def test_latent_neighbors_follow_the_formula():
    sigma = 0.3
    views = initial_noise(1, [2], 3, SHAPE, views="latent-neighbors", latent_std=sigma)
    anchor = _direct(noise_seed(1, 2, ANCHOR))
    for k in range(3):
        expected = (anchor + sigma * _direct(noise_seed(1, 2, k))) / math.sqrt(1 + sigma**2)
        torch.testing.assert_close(views[0, k], expected)


def test_latent_neighbors_keep_unit_variance_and_the_stated_correlation():
    sigma = 0.5
    views = initial_noise(0, [0], 2, (64, 64, 64), views="latent-neighbors", latent_std=sigma)
    a, b = views[0, 0].flatten(), views[0, 1].flatten()
    assert abs(a.std().item() - 1) < 0.01 and abs(b.std().item() - 1) < 0.01
    corr = torch.corrcoef(torch.stack([a, b]))[0, 1].item()
    assert abs(corr - 1 / (1 + sigma**2)) < 0.01
