"""The order of work inside a model actor: one call in the model at a time, the planner's order among the rest.

Ray runs an actor's calls in the order their inputs arrive (out-of-order execution is on, so no call waits for
one still upstream). With several threads per actor, every call whose input has arrived waits here instead, and
the gate lets in the one with the smallest priority (the plan's: the call's place in its chain, upstream first),
ties in arrival order. No Ray, no torch: a threading primitive.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import threading
from collections.abc import Iterator


class PriorityGate:
    """A lock whose waiters enter in priority order (smallest first, then first come)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._held = False
        self._waiting: list[tuple[float, int]] = []
        self._arrivals = itertools.count()

    @contextlib.contextmanager
    def hold(self, priority: float) -> Iterator[None]:
        """Wait until no one holds the gate and no waiter has a smaller priority; hold it for the block."""
        with self._cond:
            ticket = (priority, next(self._arrivals))
            heapq.heappush(self._waiting, ticket)
            while self._held or self._waiting[0] != ticket:
                self._cond.wait()
            heapq.heappop(self._waiting)
            self._held = True
        try:
            yield
        finally:
            self.release()

    def try_acquire(self) -> bool:
        """Hold the gate only if it is free and nobody waits (a CFG helper's half never delays a call)."""
        with self._cond:
            if self._held or self._waiting:
                return False
            self._held = True
            return True

    def release(self) -> None:
        with self._cond:
            self._held = False
            self._cond.notify_all()

    @property
    def busy(self) -> bool:
        return self._held

    @property
    def waiting(self) -> int:
        return len(self._waiting)
