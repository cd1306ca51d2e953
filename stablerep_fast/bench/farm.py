"""Farm simulation: makespan of static vs dynamic shard assignment with stragglers (no generation).

A model of a generation farm with ``ranks`` GPUs and ``shards_per_rank * ranks`` shards. A shard
takes ``shard_seconds`` on a normal rank, times a per-shard factor (lognormal, ``jitter``: caption
lengths, I/O), times ``straggler_slowdown`` on the ``straggler_frac`` of ranks that are slow
(older GPUs, thermal throttling, a noisy neighbour). The same shard times serve both policies:

- static: rank r runs the shards s % ranks == r (``generate --assign static``);
- dynamic: a free rank claims the next unclaimed shard (``generate/farm/claims.py``), paying
  ``claim_seconds`` per shard (a folder listing and an exclusive create on an object store).

Optionally ``preempted`` ranks die at a uniformly random time within the ideal makespan. Static:
nobody takes their shards until someone reruns them by hand, modelled as one normal rank starting
when the rest of the job is done. Dynamic: the shard in flight is taken over ``lease`` seconds
after the death, and the dead rank claims nothing more. ``ideal`` is the fluid bound: total work
over total speed. Every number is the mean over ``seeds`` random draws.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np

TITLE = "farm: makespan of static vs dynamic shard assignment (simulated shard times, no generation)"
COLUMNS = ["ranks", "shards", "stragglers", "preempted", "static_h", "dynamic_h", "ideal_h", "speedup", "dynamic_eff"]


@dataclass(frozen=True)
class FarmModel:
    shards_per_rank: int = 8
    shard_seconds: float = 1000.0  # 1000 captions x 10 images at ~10 images/s (SD 1.5, 50 steps, one H100)
    jitter: float = 0.1  # sigma of the lognormal per-shard factor
    straggler_frac: float = 0.1
    straggler_slowdown: float = 3.0
    claim_seconds: float = 1.0
    lease: float = 300.0
    preempted: int = 0


def _draw(ranks: int, model: FarmModel, rng: np.random.Generator):
    shards = model.shards_per_rank * ranks
    work = model.shard_seconds * rng.lognormal(0.0, model.jitter, shards)
    slowdown = np.ones(ranks)
    slowdown[rng.choice(ranks, int(round(model.straggler_frac * ranks)), replace=False)] = model.straggler_slowdown
    ideal = work.sum() / (1.0 / slowdown).sum()
    deaths = np.full(ranks, np.inf)
    deaths[rng.choice(ranks, model.preempted, replace=False)] = rng.uniform(0, ideal, model.preempted)
    return work, slowdown, deaths, ideal


def static_makespan(work: np.ndarray, slowdown: np.ndarray, deaths: np.ndarray) -> float:
    """Rank r runs shards r, r + W, ...; a dead rank's unfinished shards rerun on one normal rank
    once everything else is done."""
    ranks = len(slowdown)
    end, orphaned = 0.0, 0.0
    for r in range(ranks):
        t = 0.0
        for i, w in enumerate(work[r::ranks]):
            if t + w * slowdown[r] > deaths[r]:
                orphaned += work[r::ranks][i:].sum()
                break
            t += w * slowdown[r]
        end = max(end, t)
    return end + orphaned


def dynamic_makespan(work: np.ndarray, slowdown: np.ndarray, deaths: np.ndarray, claim: float, lease: float) -> float:
    """Free ranks claim the next shard in order; a shard lost with its rank is claimable again a
    lease after the death."""
    free = [(0.0, r) for r in range(len(slowdown))]
    heapq.heapify(free)
    queue = list(range(len(work)))[::-1]  # pop() gives the next shard
    retry: list[tuple[float, int]] = []  # (claimable from, shard) of shards lost with their rank
    end = 0.0
    while queue or retry:
        if not free:  # every rank is dead: the job never ends
            return float("inf")
        t, r = heapq.heappop(free)
        if t >= deaths[r]:  # died while idle
            continue
        if retry and (not queue or retry[0][0] <= t):
            available, shard = heapq.heappop(retry)
            t = max(t, available)
        else:
            shard = queue.pop()
        finish = t + claim + work[shard] * slowdown[r]
        if finish > deaths[r]:  # the rank dies holding the shard: claimable again a lease later
            heapq.heappush(retry, (deaths[r] + lease, shard))
            continue
        end = max(end, finish)
        heapq.heappush(free, (finish, r))
    return end


def simulate(ranks: int, model: FarmModel = FarmModel(), seeds: int = 5) -> dict:
    """One record: the mean makespans (hours) over ``seeds`` draws, static vs dynamic vs ideal."""
    static, dynamic, ideal = [], [], []
    for seed in range(seeds):
        work, slowdown, deaths, bound = _draw(ranks, model, np.random.default_rng(seed))
        static.append(static_makespan(work, slowdown, deaths))
        dynamic.append(dynamic_makespan(work, slowdown, deaths, model.claim_seconds, model.lease))
        ideal.append(bound)
    hours = lambda xs: round(float(np.mean(xs)) / 3600, 3)  # noqa: E731
    return {
        "suite": "farm",
        "ranks": ranks,
        "shards": model.shards_per_rank * ranks,
        "stragglers": f"{model.straggler_frac:.0%} x{model.straggler_slowdown:g}",
        "preempted": model.preempted,
        "static_h": hours(static),
        "dynamic_h": hours(dynamic),
        "ideal_h": hours(ideal),
        "speedup": round(float(np.mean(static) / np.mean(dynamic)), 2),
        "dynamic_eff": round(float(np.mean(ideal) / np.mean(dynamic)), 3),
    }


def run_farm_simulation(ranks: tuple[int, ...] = (64, 128, 256, 512, 1024), model: FarmModel = FarmModel(),
                        preempted: tuple[int, ...] = (0, 1), seeds: int = 5) -> list[dict]:  # fmt: skip
    """A record per (ranks, number of preempted ranks)."""
    from dataclasses import replace

    return [simulate(w, replace(model, preempted=p), seeds) for p in preempted for w in ranks]
