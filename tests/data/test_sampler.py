"""The n x m-of-K sampler: disjoint ranks, epoch coverage and reshuffle, resumable position."""

import numpy as np
import pytest

from stablerep_fast.data import GroupSampler

COUNTS = [4, 5, 3, 4, 6, 2, 4, 4, 5, 4, 4, 4, 3, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 10, 1]


def _captions(sampler, step=0):
    return [b.captions.tolist() for b in sampler.batches(step)]


def test_ranks_are_disjoint_and_equal():
    ranks = [GroupSampler(COUNTS, 3, 3, seed=1, rank=r, world_size=3) for r in range(3)]
    eligible = {i for i, c in enumerate(COUNTS) if c >= 3}
    assert len(eligible) == 24
    assert {len(s) for s in ranks} == {2}  # 24 // 3 = 8 per rank, 2 batches of 3
    seen = [set(np.concatenate([b.captions for b in s.batches(0)]).tolist()) for s in ranks]
    assert all(not (seen[a] & seen[b]) for a in range(3) for b in range(a + 1, 3))
    assert set().union(*seen) <= eligible


def test_epoch_covers_every_caption_once_and_reshuffles():
    sampler = GroupSampler(COUNTS, 4, 2, seed=0)
    assert len(sampler) == 6  # 25 eligible captions
    epoch0 = sum(_captions(sampler, 0), [])
    epoch1 = sum(_captions(sampler, len(sampler)), [])
    assert len(set(epoch0)) == len(epoch0) == 24
    assert epoch0 != epoch1
    assert _captions(GroupSampler(COUNTS, 4, 2, seed=0)) == _captions(sampler)
    assert _captions(GroupSampler(COUNTS, 4, 2, seed=1)) != _captions(sampler)


def test_orders_are_permutations_of_each_captions_images():
    sampler = GroupSampler(COUNTS, 5, 3, seed=2)
    for batch in sampler.batches(0):
        for caption, order in zip(batch.captions, batch.orders):
            assert sorted(order.tolist()) == list(range(COUNTS[caption]))


def test_resume_from_step_continues_the_same_sequence():
    sampler = GroupSampler(COUNTS, 4, 2, seed=3)
    full = list(sampler.batches(len(sampler)))  # epoch 1
    resumed = list(GroupSampler(COUNTS, 4, 2, seed=3).batches(len(sampler) + 2))
    assert [b.step for b in resumed] == [b.step for b in full[2:]]
    for a, b in zip(resumed, full[2:]):
        assert a.captions.tolist() == b.captions.tolist() and a.seed == b.seed
        assert all(np.array_equal(x, y) for x, y in zip(a.orders, b.orders))


@pytest.mark.parametrize(
    "kwargs, message",
    [(dict(rank=2, world_size=2), "rank 2"), (dict(world_size=9), "cannot fill one batch"), (dict(n=0), ">= 1")],
)
def test_bad_arguments(kwargs, message):
    n = kwargs.pop("n", 4)
    with pytest.raises(ValueError, match=message):
        GroupSampler(COUNTS, n, 2, **kwargs)
