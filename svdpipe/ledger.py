"""The planner's ledger: the work each actor still has to do, per planned call, kept from the executor's events.

Pure: no Ray, no torch, no clock of its own (every method takes `now`), so it runs the same on a fake clock in
tests, on the engine's wall clock, and in a simulator. A plan enters the ledger call by call, each call with the
seconds the cost model expects of it on each actor it loads (its owner, and a CFG helper for the halves it
computes). Actors report when a call starts and ends; a started call counts only its expected remainder, an
ended one nothing. So the planner sees an actor as free as soon as its part of a request is done, not when the
whole request ends, and codec placement and `auto`'s "is this actor idle" test work from the actors' present.
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
    work: dict[int, float]  # expected seconds per actor
    mux: int | None  # the mux actor this call occupies, if it is the mux call
    started: float | None = None


@dataclass
class Ledger:
    """Expected outstanding seconds per model actor and outstanding calls per mux actor."""

    num_actors: int
    num_mux: int
    _calls: dict[tuple[str, int], _Entry] = field(default_factory=dict)
    _requests: dict[str, float] = field(default_factory=dict)  # request id -> when it entered

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
        self._requests[request_id] = now
        at = now if started else None
        for index, work in calls:
            if any(not 0 <= a < self.num_actors for a in work):
                raise ValueError(f"call {index} of {request_id} names an actor outside 0..{self.num_actors - 1}")
            self._calls[(request_id, index)] = _Entry(dict(work), None, at)
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
        elif entry.started is None:
            entry.started = event.at

    def release(self, request_id: str) -> None:
        """The request ended (done, failed, cancelled): whatever it still had planned is gone."""
        self._requests.pop(request_id, None)
        for key in [k for k in self._calls if k[0] == request_id]:
            del self._calls[key]

    @property
    def requests(self) -> list[str]:
        """Requests in the ledger, oldest first."""
        return sorted(self._requests, key=self._requests.__getitem__)

    def backlog(self, now: float) -> list[float]:
        """Expected seconds until each model actor has done everything planned on it: calls not started count
        whole, a running call its expected remainder (never below zero: an overrunning call looks nearly done)."""
        out = [0.0] * self.num_actors
        for entry in self._calls.values():
            elapsed = 0.0 if entry.started is None else max(0.0, now - entry.started)
            for actor, work in entry.work.items():
                out[actor] += max(0.0, work - elapsed)
        return out

    def mux_backlog(self) -> list[float]:
        """Outstanding mux calls per mux actor."""
        out = [0.0] * self.num_mux
        for entry in self._calls.values():
            if entry.mux is not None:
                out[entry.mux] += 1.0
        return out
