"""Per-step progress from the stage actors: a fire-and-forget report per step to a sink actor, drained by the engine.

A round trip into the engine per denoising step would sit on the critical path of every step, and the engine is
not an actor the stages could call anyway. Instead a stage's per-step callback only puts (request, steps done) on
a queue; a thread of the stage actor submits it as a tiny actor task (`sink.report.remote(...)`, never waited
on), and the UNet goes straight on to the next step. The engine fetches
everything reported since its last fetch with one long-polling call (`drain` answers as soon as anything has
arrived), so a step reaches the caller's progress callback within about one round trip, and a burst of steps
costs one fetch. Only the latest count per request is kept: progress is a state, not a log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

logger = logging.getLogger(__name__)

StepCallback = Callable[[int], None]  # called with the index of the step just finished
_DRAIN_WAIT_S = 1.0  # how long one fetch waits for news before it returns empty (and the loop asks again)


class ProgressSink:
    """The sink (an async Ray actor): the latest steps-done count of each request, until the engine fetches it."""

    def __init__(self) -> None:
        self._latest: dict[str, int] = {}
        self._arrived = asyncio.Event()

    async def report(self, request_id: str, steps_done: int) -> None:
        # Stages of one request report from different actors: keep the furthest.
        if steps_done > self._latest.get(request_id, 0):
            self._latest[request_id] = steps_done
        self._arrived.set()

    async def drain(self, wait_s: float) -> dict[str, int]:
        """Everything reported since the last call; waits up to `wait_s` for the first report."""
        if not self._latest:
            self._arrived.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), wait_s)
        fetched, self._latest = self._latest, {}
        return fetched


class StepReporter:
    """What a stage actor holds (pickled with the sink's handle only): makes the per-step callback of a request.

    Submitting an actor task costs 0.3-0.5 ms of CPU (measured on a loaded 2-core machine), so the step only
    queues the report and a sender thread, started on first use in each actor process, submits it.
    """

    def __init__(self, sink: Any) -> None:
        self.sink = sink  # the ProgressSink's actor handle
        self._queue: queue.SimpleQueue[tuple[str, int]] | None = None
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

    def _sender(self) -> queue.SimpleQueue[tuple[str, int]]:
        with self._lock:
            if self._queue is None:
                self._queue = queue.SimpleQueue()
                threading.Thread(target=self._send, args=(self._queue,), name="svdpipe-progress", daemon=True).start()
            return self._queue

    def _send(self, pending: queue.SimpleQueue[tuple[str, int]]) -> None:
        while True:
            request_id, steps_done = pending.get()
            try:  # fire and forget: the returned ref is dropped, nothing waits for the sink
                self.sink.report.remote(request_id, steps_done)
            except Exception:  # progress is best effort: never fail a request over it
                logger.debug("progress report for %s failed", request_id, exc_info=True)


class ProgressFeed:
    """The engine's side: owns the sink actor and hands each fetched (request id, steps done) to `deliver`."""

    def __init__(self, deliver: Callable[[str, int], None]) -> None:
        self._deliver = deliver
        self._sink: Any = None
        self._task: asyncio.Task | None = None

    def start(self) -> StepReporter:
        """Start the sink (beside this process, no resources reserved) and the fetch loop; returns the reporter."""
        node = ray.get_runtime_context().get_node_id()
        self._sink = (
            ray.remote(ProgressSink)
            .options(
                num_cpus=0,
                max_restarts=-1,  # a restarted sink only forgets unfetched counts; stages keep their handle
                scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=True),
            )
            .remote()
        )
        self._task = asyncio.get_running_loop().create_task(self._fetch_loop())
        return StepReporter(self._sink)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        if self._sink is not None:
            with contextlib.suppress(Exception):
                ray.kill(self._sink)
            self._sink = None

    async def _fetch_loop(self) -> None:
        while True:
            try:
                fetched: dict[str, int] = await self._sink.drain.remote(_DRAIN_WAIT_S)
            except ray.exceptions.RayError as exc:  # sink restarting: progress pauses, requests do not
                logger.warning("progress sink unavailable (%s); retrying", type(exc).__name__)
                await asyncio.sleep(_DRAIN_WAIT_S)
                continue
            for request_id, steps_done in fetched.items():
                try:
                    self._deliver(request_id, steps_done)
                except Exception:
                    logger.exception("progress delivery for %s failed", request_id)
