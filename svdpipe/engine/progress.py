"""The engine's side of the actors' reports (svdpipe/reporting.py): owns the sink actor and hands what it drains
to the engine: each request's steps done (progress) and each call's events (the planner's ledger)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from svdpipe.ledger import CallEvent
from svdpipe.reporting import ProgressSink, StepReporter

logger = logging.getLogger(__name__)

_DRAIN_WAIT_S = 1.0  # how long one fetch waits for news before it returns empty (and the loop asks again)


class ProgressFeed:
    """Owns the sink actor; hands each fetched (request id, steps done) to `deliver` and each call event to
    `on_event`."""

    def __init__(self, deliver: Callable[[str, int], None], on_event: Callable[[CallEvent], None]) -> None:
        self._deliver = deliver
        self._on_event = on_event
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
                fetched, events = await self._sink.drain.remote(_DRAIN_WAIT_S)
            except ray.exceptions.RayError as exc:  # sink restarting: progress pauses, requests do not
                logger.warning("progress sink unavailable (%s); retrying", type(exc).__name__)
                await asyncio.sleep(_DRAIN_WAIT_S)
                continue
            for event in events:
                try:
                    self._on_event(event)
                except Exception:
                    logger.exception("call event %s failed", event)
            for request_id, steps_done in fetched.items():
                try:
                    self._deliver(request_id, steps_done)
                except Exception:
                    logger.exception("progress delivery for %s failed", request_id)
