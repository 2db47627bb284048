"""One admitted request's record while it runs: its refs (for cancel), its plan, and its progress callback."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from svdpipe.parareal import PararealStats
from svdpipe.planner import Plan

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]  # (steps done, total steps)


@dataclass
class RequestRecord:
    request_id: str
    refs: list[Any] = field(default_factory=list)  # every submitted call's ObjectRef, for cancel and timeout
    cancelled: bool = False
    on_progress: ProgressCallback | None = None
    plan: Plan | None = None
    total_steps: int = 0
    reported: int = 0
    parareal: PararealStats | None = None
    lost: Any = None  # an asyncio.Future the health watch fails when an actor of the current plan is lost
    parent: str | None = None  # a long video's clip: the video's request id (cancel reaches its clips)
    next_image: Any = None  # a clip with a clip after it: an asyncio.Future of its last frame as a PNG
    tasks: list[Any] = field(default_factory=list)  # helper tasks of the current attempt, cancelled with it
    admitted: float = 0.0  # when the request was first admitted: the dispatch serves older requests first
    bound: set[int] = field(default_factory=set)  # model actors the current attempt's calls were given to

    def watch(self, task: Any) -> None:
        """Keep a helper task of this attempt, to cancel it with the attempt."""
        self.tasks.append(task)

    def report(self, steps_done: int) -> None:
        """Tell the caller about newly completed steps (each count once, never backwards)."""
        if self.on_progress is None or steps_done <= self.reported:
            return
        self.reported = steps_done
        try:
            self.on_progress(steps_done, self.total_steps)
        except Exception:  # a broken progress callback must not break the request
            logger.exception("progress callback for %s failed", self.request_id)

    def restart(self) -> None:
        """A retry starts over: no refs, no progress, no parareal statistics yet."""
        self.refs = []
        self.bound = set()
        for task in self.tasks:
            task.cancel()
        self.tasks = []
        self.reported = 0
        self.parareal = None
        self.lost = asyncio.get_running_loop().create_future()

    def uses(self, models: set[int], muxers: set[int]) -> bool:
        """Whether the current attempt runs, or ran, anything on these model or mux actors: the actors its calls
        were given to, its CFG helpers, its mux actor, and, for a parareal plan (not dispatched), every actor the
        plan names. A call not yet given to an actor is given to a live one, or fails there and retries."""
        plan = self.plan
        if plan is None:
            return False
        named = set(self.bound) | {h for h in plan.helpers if h is not None}
        if plan.parareal:
            named |= {plan.encode_actor, *(s.actor for s in plan.stages), *(d.actor for d in plan.decode)}
        return bool(named & models) or plan.mux_actor in muxers
