"""The simulator's virtual clock: a heap of timed callbacks, run in time order (ties in scheduling order)."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from typing import Any


class EventLoop:
    """A discrete-event loop: `at(t, fn, *args)` runs fn(*args) when the virtual clock reaches t."""

    def __init__(self) -> None:
        self.now = 0.0
        self.events = 0  # callbacks run so far (for the scale figures)
        self._heap: list[tuple[float, int, Callable[..., Any], tuple[Any, ...]]] = []
        self._order = itertools.count()

    def at(self, t: float, fn: Callable[..., Any], *args: Any) -> None:
        """Run fn(*args) at virtual time t (not before now: an event never goes back in time)."""
        assert t >= self.now - 1e-9, f"event at {t} scheduled in the past (now {self.now})"
        heapq.heappush(self._heap, (max(t, self.now), next(self._order), fn, args))

    def after(self, dt: float, fn: Callable[..., Any], *args: Any) -> None:
        self.at(self.now + dt, fn, *args)

    def run(self, until: float | None = None) -> None:
        """Run events in time order until none is left (or the next is after `until`)."""
        heap = self._heap
        while heap:
            if until is not None and heap[0][0] > until:
                return
            t, _, fn, args = heapq.heappop(heap)
            self.now = t
            self.events += 1
            fn(*args)
