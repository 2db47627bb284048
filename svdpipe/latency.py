"""Pure decisions for single-request latency modes: which actor helps which stage range with CFG halves.

With guidance on, every step runs the UNet on [uncond, cond]. An idle actor holds the same UNet, so it can
compute one half while the range's owner computes the other. These functions decide, from plain numbers,
whether a request is split and who helps; the Ray layer only carries the decision out. No Ray or torch here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from svdpipe.ledger import IDLE_S

if TYPE_CHECKING:
    from svdpipe.config import LatencyMode
    from svdpipe.planner import Plan

__all__ = ["IDLE_S", "SplitPlan", "plan_cfg_split", "should_help", "split_work"]


@dataclass(frozen=True)
class SplitPlan:
    """Per stage range (chain order), the actor index helping with its guidance halves, or None (unsplit)."""

    helpers: tuple[int | None, ...]
    reason: str  # why this plan, for the log and the job's parameters

    @property
    def split(self) -> bool:
        return any(h is not None for h in self.helpers)


def plan_cfg_split(
    mode: LatencyMode,
    guidance: bool,
    owners: Sequence[int],
    load: Sequence[float],
    starts: Sequence[float] | None = None,
) -> SplitPlan:
    """Choose helpers for one request whose stage range i is owned by actor `owners[i]` (chain order).

    `load[a]` is the work (expected seconds) other requests have queued or running on actor a when this one
    is admitted. 'cfg-split' always takes a helper; 'auto' takes one only from actors with nothing queued, so
    under load it changes nothing. With `starts` (when the request reaches range i, in seconds from now, if no
    actor made it wait) 'auto' looks ahead: range i is split only if its owner and the helper will have done
    their queued work by then, so an actor busy now can still help a later range. Range i's candidates are
    the owners of the ranges after it in chain order (each idles until this request reaches it anyway, and
    helping is spread over the chain), then actors owning none of its ranges; never its own owner.
    (At run time a helper that has become busy declines each half and the owner computes it itself, so
    a request already split never holds back one admitted after it.)
    """
    n = len(owners)
    if any(x < 0 for x in load):
        raise ValueError(f"load must be >= 0, got {list(load)}")
    if any(not 0 <= a < len(load) for a in owners):
        raise ValueError(f"owners {list(owners)} name actors outside 0..{len(load) - 1}")
    if starts is not None and len(starts) != n:
        raise ValueError(f"{len(starts)} start times for {n} ranges")
    unsplit: tuple[int | None, ...] = (None,) * n
    if mode not in ("cfg-split", "auto"):
        return SplitPlan(unsplit, f"latency_mode {mode}")
    if not guidance:
        return SplitPlan(unsplit, "guidance off (max_guidance_scale <= 1): a single batch, nothing to split")
    if len(load) < 2:
        return SplitPlan(unsplit, "one model actor: no second actor to help")
    others = [a for a in range(len(load)) if a not in owners]
    helpers: list[int | None] = []
    for i in range(n):
        candidates = [owners[(i + d) % n] for d in range(1, n)] + others
        candidates = [c for c in dict.fromkeys(candidates) if c != owners[i]]
        if mode == "auto":
            start = starts[i] if starts is not None else 0.0
            owner_free = starts is None or load[owners[i]] <= start + IDLE_S
            candidates = [c for c in candidates if owner_free and load[c] <= start + IDLE_S]
        helpers.append(candidates[0] if candidates else None)
    if not any(h is not None for h in helpers):
        return SplitPlan(unsplit, "auto: no idle actor to borrow")
    taken = sum(h is not None for h in helpers)
    return SplitPlan(tuple(helpers), f"{mode}: {taken} of {n} ranges split")


def should_help(busy: bool, pending_stage_calls: int) -> bool:
    """A helper takes a half only when it is doing nothing else and nothing waits for it (run-time check)."""
    return not busy and pending_stage_calls == 0


def split_work(plan: Plan, split: SplitPlan, step_s: float) -> tuple[float, ...]:
    """The plan's expected seconds per actor once split: each helped stage moves half of its steps' cost (the
    conditional half, a batch of one) from its owner to its helper."""
    if len(split.helpers) != len(plan.stages):
        raise ValueError(f"{len(split.helpers)} helpers for {len(plan.stages)} stages")
    work = list(plan.work_s)
    for stage, helper in zip(plan.stages, split.helpers, strict=True):
        if helper is not None:
            half = len(stage.steps) * step_s / 2
            work[stage.actor] -= half
            work[helper] += half
    return tuple(work)
