"""The planner's dispatch: which actor runs each call of a plan, decided when the call's input exists and an actor
is free (late binding), oldest request first. Pure: no Ray, no torch, no clock.

Why late: every model actor holds the whole model, so any actor can run any step range or decode chunk with the
same result; only the moment differs. Binding every call to an actor at admission (stage i on actor i) leaves
an actor idle whenever its next call's input is late, while another actor has one waiting: in the simulator,
with 7 actors, 25 steps of 250 ms and a 1.1 s decode per request, the pipeline delivered 0.957 of data-parallel's
full-load rate and its p95 latency was 1.45x data-parallel's. Giving each free actor the oldest request's
ready call (its planned actor first, the actor that holds the request's state next, else any free one) made it
0.997 with the same p95 (BENCHMARKS.md, "Late binding"). An actor takes one call at a time, so a call never waits
behind younger work in an actor's queue.

A call is pinned to its planned actor when the plan says so: the warm-up (every hop must run once) and a wide
call, which takes every actor of its group at once, when all of them are free. A call with a CFG helper runs on
any free actor but its helper (the owner computes one half, the helper the other). Pinning those too cost the
open loop at half load: p50 0.81 of data-parallel's and p95 10.4 s against 7.5 s in the simulator, 0.74 and 7.5
s unpinned.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from svdpipe.planner import ActorCall


@dataclass(order=True)
class _Ready:
    key: tuple[float, int, float, int]  # (request's admission, request's arrival, the call's priority, arrival)
    request_id: str = field(compare=False)
    call: ActorCall = field(compare=False)
    previous: int | None = field(compare=False)  # the actor that ran the request's previous call (holds its state)


@dataclass
class Dispatch:
    """Ready calls and free actors; `assign` pairs them."""

    num_actors: int
    _ready: list[_Ready] = field(default_factory=list)
    _busy: list[int] = field(default_factory=list)
    _arrivals: itertools.count = field(default_factory=itertools.count)
    _order: dict[str, int] = field(default_factory=dict)  # request id -> its first call's arrival (ties of `since`)

    def __post_init__(self) -> None:
        if self.num_actors < 1:
            raise ValueError(f"need at least one actor, got {self.num_actors}")
        self._busy = [0] * self.num_actors

    def ready(self, request_id: str, call: ActorCall, since: float, previous: int | None = None) -> None:
        """The call's input exists (or is on its way): it waits for an actor. `since` is when its request was
        first admitted (older first)."""
        if not 0 <= call.actor < self.num_actors:
            raise ValueError(f"call {call.index} of {request_id} names actor {call.actor} of {self.num_actors}")
        arrival = next(self._arrivals)
        order = self._order.setdefault(request_id, arrival)
        heapq.heappush(self._ready, _Ready((since, order, call.priority, arrival), request_id, call, previous))

    def assign(self) -> list[tuple[str, ActorCall]]:
        """Bind ready calls to free actors, oldest request first; returns each bound call with its actor set.
        The bound actors count as busy until `ended`."""
        bound: list[tuple[str, ActorCall]] = []
        waiting: list[_Ready] = []
        while self._ready and not all(self._busy):
            item = heapq.heappop(self._ready)
            actor = self._choose(item)
            if actor is None:  # pinned to a busy actor: it keeps its place
                waiting.append(item)
                continue
            for a in item.call.wide or (actor,):
                self._busy[a] += 1
            bound.append((item.request_id, dataclasses.replace(item.call, actor=actor)))
        for item in waiting:
            heapq.heappush(self._ready, item)
        return bound

    def ended(self, actor: int) -> None:
        """A call bound to `actor` ended (done, failed or cancelled): the actor takes the next one."""
        if self._busy[actor] < 1:
            raise ValueError(f"actor {actor} has no call running")
        self._busy[actor] -= 1

    def drop(self, request_id: str) -> None:
        """The request ended, failed or was cancelled: its calls still waiting will not run."""
        self._order.pop(request_id, None)
        kept = [item for item in self._ready if item.request_id != request_id]
        if len(kept) != len(self._ready):
            self._ready = kept
            heapq.heapify(self._ready)

    def free(self, actor: int) -> bool:
        """Whether `actor` runs nothing bound by this dispatch."""
        return not self._busy[actor]

    @property
    def waiting(self) -> int:
        """Calls ready and not yet bound."""
        return len(self._ready)

    def _choose(self, item: _Ready) -> int | None:
        planned = item.call.actor
        if item.call.wide:
            return planned if not any(self._busy[a] for a in item.call.wide) else None
        if item.call.pinned:
            return planned if not self._busy[planned] else None
        helper = item.call.helper  # a CFG-split call runs anywhere but on its own helper
        for actor in (planned, item.previous):
            if actor is not None and actor != helper and not self._busy[actor]:
                return actor
        return next((a for a in range(self.num_actors) if a != helper and not self._busy[a]), None)
