"""Step partition: contiguous, complete, balanced by count or by cost."""

from __future__ import annotations

import itertools

import pytest

from svdpipe.partition import partition_steps, stage_costs


@pytest.mark.parametrize(("steps", "stages"), [(s, n) for s in range(1, 30) for n in range(1, 9) if n <= s])
def test_equal_weights_contiguous_complete_balanced(steps, stages):
    ranges = partition_steps(steps, stages)
    assert len(ranges) == stages
    assert ranges[0].start == 0 and ranges[-1].stop == steps
    for a, b in itertools.pairwise(ranges):
        assert a.stop == b.start
    sizes = [len(r) for r in ranges]
    assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1
    assert ranges == partition_steps(steps, stages, [1.0] * steps)  # DP agrees with the closed form


def test_weights_move_the_cuts():
    # The first step costs as much as the next three: it gets a stage nearly to itself.
    assert partition_steps(6, 2, [3, 1, 1, 1, 1, 1]) == [range(0, 2), range(2, 6)]
    assert partition_steps(4, 2, [5, 1, 1, 1]) == [range(0, 1), range(1, 4)]


def test_weighted_split_minimises_the_bottleneck():
    weights = [4.0, 1.0, 1.0, 2.0, 2.0, 1.0, 3.0, 1.0]
    best = partition_steps(len(weights), 3, weights)
    got = max(stage_costs(best, weights))
    for cuts in itertools.combinations(range(1, len(weights)), 2):
        bounds = (0, *cuts, len(weights))
        ranges = [range(a, b) for a, b in itertools.pairwise(bounds)]
        assert got <= max(stage_costs(ranges, weights)) + 1e-9


def test_errors():
    with pytest.raises(ValueError, match="cannot split 3 denoising step"):
        partition_steps(3, 4)
    with pytest.raises(ValueError, match="at least 1"):
        partition_steps(3, 0)
    with pytest.raises(ValueError, match="expected 3 step weights"):
        partition_steps(3, 2, [1.0, 1.0])
    with pytest.raises(ValueError, match="positive"):
        partition_steps(3, 2, [1.0, 0.0, 1.0])


def test_request_ranges_uses_a_matching_profile_only():
    from svdpipe.partition import request_ranges

    profile = [5.0, 1.0, 1.0, 1.0]
    assert request_ranges(4, 2, profile) == [range(0, 1), range(1, 4)]
    assert request_ranges(6, 2, profile) == [range(0, 3), range(3, 6)]  # profile for another T: by count
    assert request_ranges(6, 2, None) == [range(0, 3), range(3, 6)]
