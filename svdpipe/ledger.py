"""The planner's ledger: each actor's expected finish time, kept call by call from the executor's events.

Pure: no Ray, no torch, no clock of its own (every method takes `now`), so it runs the same on a fake clock in
tests, on the engine's wall clock, and in a simulator. A plan enters the ledger call by call, each call with the
seconds the cost model expects of it on each actor it loads (its owner, and a CFG helper for the halves it
computes): the actor's expected finish time moves to max(finish, now) + those seconds. When a call ends, the
finish time moves by the difference between what it took and what was expected; a request that fails or is
cancelled takes back the calls that never started.

Why finish times and not "work not yet done": in a pipeline every request's later stages wait for its earlier
ones, so at any moment the actors late in the chain hold more not-yet-done work than the early ones although
they are no busier. Balancing on that steered every decode to the first actors (busy 0.97 against 0.64 for the
last, measured at 250 ms steps); balancing on finish times gives each actor the same work over a stream of
requests, as data-parallel does, and still lets an actor that sat idle catch up from `now`, not from its past.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

# Float residue of adding and removing expected seconds: below this an actor is idle.
IDLE_S = 1e-9


@dataclass(frozen=True)
class CallEvent:
    """What the executor reports of one call of a plan: it started, or it ended after `duration_s`."""

    request_id: str
    call: int  # the call's index in the plan (svdpipe.planner.plan_calls)
    kind: Literal["started", "ended"]
    at: float  # seconds on the reporting actor's clock (time.time() on every host of one deployment)
    duration_s: float = 0.0  # for "ended": how long the call ran


@dataclass
class _Entry:
    work: dict[int, float]  # expected seconds per actor (the owner's first)
    mux: int | None  # the mux actor this call occupies, if it is the mux call
    started: float | None = None


@dataclass
class Ledger:
    """Expected finish time per model actor and outstanding calls per mux actor."""

    num_actors: int
    num_mux: int
    _calls: dict[tuple[str, int], _Entry] = field(default_factory=dict)
    _requests: dict[str, float] = field(default_factory=dict)  # request id -> when it entered
    _finish: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._finish = [0.0] * self.num_actors

    def add(
        self,
        request_id: str,
        calls: Iterable[tuple[int, dict[int, float]]],
        mux_call: int,
        mux_actor: int,
        now: float,
        started: bool = False,
    ) -> None:
        """Enter a request's calls: (call index, expected seconds per actor) each, and its mux call. With
        `started` every call counts as running from `now` (a plan whose calls report no events, e.g. parareal)."""
        if request_id in self._requests:
            raise ValueError(f"request {request_id} is already in the ledger")
        at = now if started else None
        entries = [(index, dict(work)) for index, work in calls]
        for index, work in entries:
            if any(not 0 <= a < self.num_actors for a in work):
                raise ValueError(f"call {index} of {request_id} names an actor outside 0..{self.num_actors - 1}")
        self._requests[request_id] = now
        for index, work in entries:
            self._calls[(request_id, index)] = _Entry(work, None, at)
            for actor, seconds in work.items():
                self._finish[actor] = max(self._finish[actor], now) + seconds
        if not 0 <= mux_actor < self.num_mux:
            raise ValueError(f"mux actor {mux_actor} outside 0..{self.num_mux - 1}")
        self._calls[(request_id, mux_call)] = _Entry({}, mux_actor, at)

    def record(self, event: CallEvent) -> None:
        """Apply one event; events of requests no longer in the ledger (ended, cancelled) are ignored."""
        key = (event.request_id, event.call)
        entry = self._calls.get(key)
        if entry is None:
            return
        if event.kind == "ended":
            del self._calls[key]
            if len(entry.work) == 1:  # one actor's call: it took what it took (a split call's halves: as planned)
                ((actor, seconds),) = entry.work.items()
                self._finish[actor] += event.duration_s - seconds
        elif entry.started is None:
            entry.started = event.at

    def rebind(self, request_id: str, call: int, actor: int, now: float) -> None:
        """The dispatch gave the call to `actor` (free now): its owner's expected seconds move there (a CFG-split
        call's halves stay with its helper; a wide call is never moved)."""
        entry = self._calls.get((request_id, call))
        if entry is None or not entry.work:
            return
        owner = next(iter(entry.work))  # the owner's entry comes first
        if owner == actor or actor in entry.work:
            return
        seconds = entry.work.pop(owner)
        self._finish[owner] -= seconds
        self._finish[actor] = max(self._finish[actor], now) + seconds
        entry.work = {actor: seconds, **entry.work}

    def release(self, request_id: str, completed: bool = True) -> None:
        """The request ended. Done: its calls all ran (events still on their way change nothing more). Failed or
        cancelled: the calls that never started give their expected seconds back."""
        self._requests.pop(request_id, None)
        for key in [k for k in self._calls if k[0] == request_id]:
            entry = self._calls.pop(key)
            if not completed and entry.started is None:
                for actor, seconds in entry.work.items():
                    self._finish[actor] -= seconds

    @property
    def requests(self) -> list[str]:
        """Requests in the ledger, oldest first."""
        return sorted(self._requests, key=self._requests.__getitem__)

    def backlog(self, now: float) -> list[float]:
        """Expected seconds until each model actor is free: its finish time from now (0 for an idle one)."""
        return [max(0.0, f - now) for f in self._finish]

    def mux_backlog(self) -> list[float]:
        """Outstanding mux calls per mux actor."""
        out = [0.0] * self.num_mux
        for entry in self._calls.values():
            if entry.mux is not None:
                out[entry.mux] += 1.0
        return out
