"""What the actors report as they work: per-step progress and each call's start and end, fire and forget, to a
sink actor the engine drains. No Ray import: the actor bodies (worker.py) hold a reporter, the engine's
engine/progress.py owns the sink.

A round trip into the engine per denoising step would sit on the critical path of every step, and the engine is
not an actor the stages could call anyway. Instead a stage's callback only puts the report on a queue; a thread
of the actor sends everything queued as one tiny actor task (`sink.report_many.remote(...)`, never waited on),
and the UNet goes straight on. The engine fetches everything reported since its last fetch with one
long-polling call (`drain` answers as soon as anything has arrived), so a report reaches the engine within about
one round trip, and a burst costs one fetch. Of progress only the latest count per request is kept (a state, not
a log); call events are all kept, in order: the planner's ledger follows them (svdpipe/ledger.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from svdpipe.ledger import CallEvent

logger = logging.getLogger(__name__)

StepCallback = Callable[[int], None]  # called with the index of the step just finished
Report = tuple[str, int] | CallEvent  # (request id, steps done) or a call's start or end


class ProgressSink:
    """The sink (an async Ray actor): the latest steps-done count of each request and the call events, until the
    engine fetches them."""

    def __init__(self) -> None:
        self._latest: dict[str, int] = {}
        self._events: list[CallEvent] = []
        self._arrived = asyncio.Event()

    async def report(self, request_id: str, steps_done: int) -> None:
        # Stages of one request report from different actors: keep the furthest.
        if steps_done > self._latest.get(request_id, 0):
            self._latest[request_id] = steps_done
        self._arrived.set()

    async def report_many(self, reports: list[Report]) -> None:
        for item in reports:
            if isinstance(item, CallEvent):
                self._events.append(item)
                self._arrived.set()
            else:
                await self.report(*item)

    async def drain(self, wait_s: float) -> tuple[dict[str, int], list[CallEvent]]:
        """Everything reported since the last call; waits up to `wait_s` for the first report."""
        if not self._latest and not self._events:
            self._arrived.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), wait_s)
        fetched, self._latest = self._latest, {}
        events, self._events = self._events, []
        return fetched, events


class StepReporter:
    """What an actor holds (pickled with the sink's handle only): the per-step callback of a request, and the
    start and end of each call.

    Submitting an actor task costs 0.3-0.5 ms of CPU (measured on a loaded 2-core machine), so a report is only
    queued; a sender thread, started on first use in each actor process, sends whatever is queued in one task.
    """

    def __init__(self, sink: Any) -> None:
        self.sink = sink  # the ProgressSink's actor handle
        self._queue: queue.SimpleQueue[Report] | None = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {"sink": self.sink}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["sink"])  # type: ignore[misc]

    def for_request(self, request_id: str) -> StepCallback:
        pending = self._sender()

        def on_step(step: int) -> None:
            pending.put((request_id, step + 1))

        return on_step

    def call_started(self, request_id: str, call: int) -> float:
        """Report that call `call` of the request starts now; returns the start time."""
        now = time.time()
        self._sender().put(CallEvent(request_id, call, "started", now))
        return now

    def call_ended(self, request_id: str, call: int, started: float) -> None:
        now = time.time()
        self._sender().put(CallEvent(request_id, call, "ended", now, now - started))

    def _sender(self) -> queue.SimpleQueue[Report]:
        with self._lock:
            if self._queue is None:
                self._queue = queue.SimpleQueue()
                threading.Thread(target=self._send, args=(self._queue,), name="svdpipe-progress", daemon=True).start()
            return self._queue

    def _send(self, pending: queue.SimpleQueue[Report]) -> None:
        while True:
            batch = [pending.get()]
            while not pending.empty():
                batch.append(pending.get_nowait())
            try:  # fire and forget: the returned ref is dropped, nothing waits for the sink
                self.sink.report_many.remote(batch)
            except Exception:  # reports are best effort: never fail a request over them
                logger.debug("reports %s failed", batch[:3], exc_info=True)
