"""Which failures rebuild: a request whose own computation raises fails at once, untouched actors and no retry;
a dead actor beside a survivor that answers nothing (as one stuck in a collective receive) is rebuilt within
the pool's timeouts, and the request in flight completes on its retry."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time

import pytest
import ray

from svdpipe.config import VideoParams
from svdpipe.errors import RequestFailedError
from svdpipe.worker import ModelWorker
from tests.ray.conftest import running_engine


class FailingWorker(ModelWorker):
    """A model actor whose step code raises for requests named "boom-*" (the request's own fault)."""

    def _run(self, item, call, exchange=None):
        if call.steps is not None and item.request_id.startswith("boom"):
            raise ValueError("the stage's own code raised on this input")
        return super()._run(item, call, exchange)

    def pid(self) -> int:
        return os.getpid()


def params(seed: int = 1) -> VideoParams:
    return VideoParams(num_inference_steps=4, num_frames=2, seed=seed)


def test_a_request_that_raises_in_its_own_computation_fails_once_and_rebuilds_nothing(aloop, png):
    with running_engine(
        aloop, num_stages=2, simulate_step_ms=20, name_prefix="svdpipe-boom", worker=FailingWorker
    ) as engine:
        actors = list(engine.pool.models)
        with pytest.raises(RequestFailedError, match="ValueError: the stage's own code raised") as info:
            aloop.run(engine.generate(png, params(), "npy", request_id="boom-1"))
        assert "attempt" not in str(info.value) and "\x1b[" not in str(info.value)
        assert engine.rebuilds == 0 and engine.pool.models == actors
        assert aloop.run(engine.generate(png, params(), "npy", request_id="fine-1")).attempts == 1


def test_dead_actor_beside_a_stuck_survivor_is_rebuilt_within_the_timeouts(aloop, png):
    with running_engine(
        aloop,
        num_stages=2,
        transport="gloo",
        simulate_step_ms=200,
        ping_timeout_s=2,
        start_timeout_s=240,
        name_prefix="svdpipe-stuck",
        worker=FailingWorker,
    ) as engine:
        survivor = engine.pool.models[1]
        survivor_pid = ray.get(survivor.pid.remote(), timeout=30)
        progressed = asyncio.Event()

        async def scenario() -> tuple[object, float]:
            task = asyncio.ensure_future(
                engine.generate(png, params(), "npy", on_progress=lambda d, t: progressed.set())
            )
            await asyncio.wait_for(progressed.wait(), 30)
            # The survivor stops answering anything (a process stuck in a receive that never completes), and the
            # actor it waits on dies.
            os.kill(survivor_pid, signal.SIGSTOP)
            ray.kill(engine.pool.models[0])
            began = time.monotonic()
            result = await asyncio.wait_for(task, 240)
            return result, time.monotonic() - began

        try:
            result, took = aloop.run(scenario(), timeout=300)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(survivor_pid, signal.SIGCONT)
        assert result.attempts == 2 and result.video.num_frames == 2
        assert engine.rebuilds >= 1 and survivor not in engine.pool.models
        health = aloop.run(engine.health())
        assert {h["state"] for h in health} == {"alive"}
        print(f"recovered and finished in {took:.1f} s")
