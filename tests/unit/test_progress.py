"""The report sink and the actor-side reporter as plain objects (no Ray runtime): what the engine relies on."""

from __future__ import annotations

import asyncio
import pickle
import threading
from types import SimpleNamespace

from svdpipe.ledger import CallEvent
from svdpipe.reporting import ProgressSink, StepReporter


class FakeSink:
    """Stands in for the sink's actor handle: `report_many.remote(...)` records the reports."""

    def __init__(self) -> None:
        self.calls: list = []
        self.done = threading.Event()
        self.report_many = SimpleNamespace(remote=self._remote)

    def _remote(self, reports: list) -> None:
        self.calls.extend(reports)
        if any(isinstance(r, CallEvent) and r.kind == "ended" for r in reports):
            self.done.set()


def test_reporter_sends_steps_and_call_events_in_order_from_its_thread():
    sink = FakeSink()
    reporter = StepReporter(sink)
    started = reporter.call_started("r1", 2)
    on_step = reporter.for_request("r1")
    for step in range(3):  # global step indices 0, 1, 2 finished
        on_step(step)
    reporter.call_ended("r1", 2, started)
    assert sink.done.wait(5)
    assert sink.calls[1:4] == [("r1", 1), ("r1", 2), ("r1", 3)]
    first, last = sink.calls[0], sink.calls[4]
    assert (first.request_id, first.call, first.kind, first.at) == ("r1", 2, "started", started)
    assert (last.call, last.kind) == (2, "ended") and last.duration_s >= 0


def test_reporter_pickles_as_its_sink_only():
    reporter = StepReporter("handle")
    reporter.for_request("r")  # starts the sender thread: it must not travel
    copy = pickle.loads(pickle.dumps(reporter))
    assert copy.sink == "handle" and copy._queue is None


def test_sink_keeps_the_furthest_count_and_hands_it_out_once():
    async def scenario():
        sink = ProgressSink()
        for request_id, done in [("a", 2), ("b", 1), ("a", 1), ("a", 3)]:  # stages may report out of order
            await sink.report(request_id, done)
        await sink.report_many([CallEvent("a", 0, "started", 1.0), ("b", 2)])
        first = await sink.drain(0)
        empty = await sink.drain(0.01)
        return first, empty

    assert asyncio.run(scenario()) == (({"a": 3, "b": 2}, [CallEvent("a", 0, "started", 1.0)]), ({}, []))


def test_sink_drain_answers_as_soon_as_a_report_arrives():
    async def scenario():
        sink = ProgressSink()
        waiting = asyncio.ensure_future(sink.drain(30))
        await asyncio.sleep(0)
        assert not waiting.done()
        await sink.report("a", 1)
        return await asyncio.wait_for(waiting, 5)  # far below the 30 s the drain would otherwise wait

    assert asyncio.run(scenario()) == ({"a": 1}, [])
