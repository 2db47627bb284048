"""Splitting T denoising steps into N contiguous stage ranges (pure, no torch or Ray)."""

from __future__ import annotations

from collections.abc import Sequence


def partition_steps(num_steps: int, num_stages: int, weights: Sequence[float] | None = None) -> list[range]:
    """Split steps 0..num_steps-1 into `num_stages` contiguous, non-empty ranges.

    With `weights` (one positive cost per step) the ranges are balanced by total cost, not count:
    the largest stage cost is minimised. Without weights every step costs the same and range
    lengths differ by at most one, the longer ranges first.
    """
    if num_stages < 1:
        raise ValueError(f"num_stages must be at least 1, got {num_stages}")
    if num_steps < num_stages:
        raise ValueError(
            f"cannot split {num_steps} denoising step(s) over {num_stages} stages: every stage needs at "
            f"least one step (use num_inference_steps >= {num_stages} or fewer stages)"
        )
    if weights is None:
        base, extra = divmod(num_steps, num_stages)
        sizes = [base + (1 if i < extra else 0) for i in range(num_stages)]
    else:
        if len(weights) != num_steps:
            raise ValueError(f"expected {num_steps} step weights, got {len(weights)}")
        if any(not w > 0 for w in weights):
            raise ValueError("step weights must be positive")
        sizes = _balanced_sizes(list(weights), num_stages)
    ranges, start = [], 0
    for size in sizes:
        ranges.append(range(start, start + size))
        start += size
    return ranges


def request_ranges(num_steps: int, num_stages: int, profile: Sequence[float] | None) -> list[range]:
    """Step ranges for one request: balanced by the cost profile when it was measured for this step count,
    by count otherwise (a profile for 25 steps says nothing about a 30-step request)."""
    weights = profile if profile is not None and len(profile) == num_steps else None
    return partition_steps(num_steps, num_stages, weights)


def _balanced_sizes(weights: list[float], num_stages: int) -> list[int]:
    """Contiguous split minimising the heaviest stage, then the spread (exact DP; T and N are small).

    The secondary key (sum of squared stage costs) keeps ranges balanced where several splits share the
    same bottleneck, e.g. 7 equal steps over 3 stages gives 3-2-2 rather than 3-3-1.
    """
    n = len(weights)
    prefix = [0.0]
    for w in weights:
        prefix.append(prefix[-1] + w)
    inf = (float("inf"), float("inf"))
    # best[k][i]: (max stage cost, sum of squared stage costs) splitting the first i steps into k stages.
    best = [[inf] * (n + 1) for _ in range(num_stages + 1)]
    cut = [[0] * (n + 1) for _ in range(num_stages + 1)]
    best[0][0] = (0.0, 0.0)
    for k in range(1, num_stages + 1):
        for i in range(k, n - (num_stages - k) + 1):
            for j in range(k - 1, i):
                prev_max, prev_sq = best[k - 1][j]
                cost = prefix[i] - prefix[j]
                cand = (round(max(prev_max, cost), 9), round(prev_sq + cost * cost, 9))
                # Ties go to the later cut, so longer ranges come first.
                if cand <= best[k][i]:
                    best[k][i], cut[k][i] = cand, j
    sizes, i = [], n
    for k in range(num_stages, 0, -1):
        j = cut[k][i]
        sizes.append(i - j)
        i = j
    return sizes[::-1]


def stage_costs(ranges: Sequence[range], weights: Sequence[float]) -> list[float]:
    """Total weight of each range."""
    return [sum(weights[i] for i in r) for r in ranges]
