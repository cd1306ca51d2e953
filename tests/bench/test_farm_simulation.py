"""The farm simulation: makespans checked against schedules worked out by hand."""

import numpy as np
import pytest

from stablerep_fast.bench.farm import FarmModel, dynamic_makespan, simulate, static_makespan

NEVER = np.inf


def test_static_and_dynamic_makespans_by_hand():
    work = np.array([1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    slowdown = np.array([1.0, 3.0])  # rank 1 is a straggler
    alive = np.array([NEVER, NEVER])
    # Static: rank 0 runs shards 0, 2, 4 (3 s); rank 1 runs 1, 3, 5 at 3 s each (9 s).
    assert static_makespan(work, slowdown, alive) == 9.0
    # Dynamic, claims free: rank 0 takes 0 @0-1, 2 @1-2, 3 @2-3; at 3 both are free: rank 0 takes
    # 4 @3-4 and the straggler the last one, 5 @3-6 (greedy claiming: a straggler's tail remains).
    assert dynamic_makespan(work, slowdown, alive, claim=0.0, lease=10.0) == 6.0
    # Each claim costs 0.5 s: rank 0 finishes shards at 1.5, 3, 4.5, 6; rank 1 at 3.5 then 7.
    assert dynamic_makespan(work, slowdown, alive, claim=0.5, lease=10.0) == 7.0


def test_a_dead_rank_costs_static_a_rerun_and_dynamic_a_lease():
    work = np.ones(4)
    slowdown = np.ones(2)
    deaths = np.array([NEVER, 0.5])  # rank 1 dies half-way through its first shard
    # Static: rank 0 ends at 2; rank 1's two shards rerun afterwards: 2 + 2.
    assert static_makespan(work, slowdown, deaths) == 4.0
    # Dynamic: rank 0 runs 0 @0-1, 2 @1-2, 3 @2-3; shard 1 is claimable at 0.5 + lease 5 = 5.5: ends 6.5.
    assert dynamic_makespan(work, slowdown, deaths, claim=0.0, lease=5.0) == 6.5
    assert dynamic_makespan(work, slowdown, np.array([0.5, 0.5]), claim=0.0, lease=5.0) == np.inf


def test_dynamic_beats_static_with_stragglers_and_stays_near_the_bound():
    record = simulate(64, FarmModel(), seeds=2)
    assert record["shards"] == 512 and record["ideal_h"] <= record["dynamic_h"] < record["static_h"]
    # Static waits for a straggler's 8 shards at 3x: about 24 shard-times against a bound of 8/0.933.
    assert record["static_h"] == pytest.approx(8 * 3 * 1000 / 3600, rel=0.15)
    assert record["ideal_h"] == pytest.approx(8 * 1000 / 3600 / (0.9 + 0.1 / 3), rel=0.05)
