"""Pipeline fill, progress, cancel, timeout, stage crashes and config errors, on CPU actors."""

from __future__ import annotations

import asyncio
import io
import time

import numpy as np
import pytest
import ray

from svdpipe.config import EngineConfig, VideoParams
from svdpipe.engine import Engine
from svdpipe.errors import (
    ConfigError,
    InvalidRequestError,
    RequestCancelledError,
    RequestFailedError,
    RequestTimeoutError,
)
from tests.ray.conftest import running_engine

STEP_S = 0.15  # simulated UNet step: a wait that leaves the CPU free
STEPS, STAGES = 6, 3
STAGE_S = STEP_S * STEPS / STAGES


@pytest.fixture(scope="module")
def sim_engine(aloop):
    with running_engine(
        aloop, num_stages=STAGES, transport="object_store", simulate_step_ms=STEP_S * 1000, max_inflight=8
    ) as engine:
        yield engine


def params(seed: int) -> VideoParams:
    return VideoParams(num_inference_steps=STEPS, num_frames=2, seed=seed)


def test_pipeline_fill(aloop, sim_engine, png):
    m = 6

    async def burst():
        return await asyncio.gather(*[sim_engine.generate(png, params(i), "npy") for i in range(m)])

    results = aloop.run(burst())
    assert len({r.request_id for r in results}) == m
    # Overlap must be real, shown by the actors' own records rather than a wall-clock bound (BENCHMARKS.md
    # measures speed): denoise calls of different requests ran at the same time on different actors.
    spans = [(r.request_id, t.stage, t.started, t.finished) for r in results for t in r.video.trace if t.steps]
    overlapping = {
        (a[0], b[0]) for a in spans for b in spans if a[0] < b[0] and a[1] != b[1] and a[2] < b[3] and b[2] < a[3]
    }
    assert overlapping, spans


def test_progress_reports_every_step(aloop, sim_engine, png):
    # Steps are STEP_S apart and a report needs about one actor round trip: none coalesce.
    seen: list[tuple[int, int]] = []
    aloop.run(sim_engine.generate(png, params(1), "npy", on_progress=lambda d, t: seen.append((d, t))))
    assert seen == [(i, STEPS) for i in range(1, STEPS + 1)]


def test_cancel_mid_pipeline_frees_the_slot(aloop, sim_engine, png):
    progressed = asyncio.Event()

    async def scenario():
        task = asyncio.ensure_future(
            sim_engine.generate(
                png, params(2), "npy", request_id="to-cancel", on_progress=lambda d, t: progressed.set()
            )
        )
        await asyncio.wait_for(progressed.wait(), 10)
        assert sim_engine.cancel("to-cancel")
        t0 = time.perf_counter()
        with pytest.raises(RequestCancelledError):
            await task
        cancel_s = time.perf_counter() - t0
        assert sim_engine.inflight == 0
        t1 = time.perf_counter()
        await sim_engine.generate(png, params(3), "npy")  # the stages are not stalled by the cancelled calls
        return cancel_s, time.perf_counter() - t1

    cancel_s, next_s = aloop.run(scenario())
    assert cancel_s < STAGE_S * 2 + 1.0
    assert next_s < 10
    assert not sim_engine.cancel("unknown-id")


def test_timeout_fires_and_engine_keeps_serving(aloop, sim_engine, png):
    with pytest.raises(RequestTimeoutError, match=r"did not finish within 0\.5 s"):
        aloop.run(sim_engine.generate(png, params(4), "npy", timeout_s=0.5))
    assert sim_engine.inflight == 0
    result = aloop.run(sim_engine.generate(png, params(4), "npy"))
    assert result.attempts == 1


def test_bad_requests_are_client_errors(aloop, sim_engine, png):
    with pytest.raises(InvalidRequestError, match="multiples of 8"):
        aloop.run(sim_engine.generate(png, VideoParams(num_inference_steps=2, height=60), "npy"))
    with pytest.raises(InvalidRequestError, match="not a readable image"):
        aloop.run(sim_engine.generate(b"not an image", params(5), "npy"))


def _frames(result) -> np.ndarray:
    return np.load(io.BytesIO(result.video.data))


def test_killed_stage_is_replaced_and_request_retried(aloop, sim_engine, png):
    reference = _frames(aloop.run(sim_engine.generate(png, params(6), "npy")))
    progressed = asyncio.Event()
    victim = sim_engine.pool.models[1]  # a model actor: in a pipeline plan every one owns a step range

    async def scenario():
        task = asyncio.ensure_future(
            sim_engine.generate(png, params(6), "npy", on_progress=lambda d, t: progressed.set())
        )
        await asyncio.wait_for(progressed.wait(), 10)
        ray.kill(victim)
        return await asyncio.wait_for(task, 120)

    result = aloop.run(scenario(), timeout=200)
    assert result.attempts == 2
    np.testing.assert_array_equal(_frames(result), reference)
    assert sim_engine.pool.models[1] is not victim
    health = aloop.run(sim_engine.health())
    assert [h["state"] for h in health] == ["alive"] * (len(sim_engine.layout) + len(sim_engine.mux_layout))
    with pytest.raises(ray.exceptions.RayActorError):  # health's ping on a dead actor raises at once
        ray.get(victim.ping.options(concurrency_group="control").remote(), timeout=30)
    assert aloop.run(sim_engine.generate(png, params(7), "npy")).attempts == 1


def test_gloo_crash_without_retry_fails_clearly_then_recovers(aloop, png):
    with running_engine(
        aloop,
        num_stages=2,
        transport="gloo",
        simulate_step_ms=200,
        max_retries=0,
        name_prefix="svdpipe-gloo",
    ) as engine:
        progressed = asyncio.Event()

        async def scenario():
            task = asyncio.ensure_future(
                engine.generate(
                    png,
                    VideoParams(num_inference_steps=4, num_frames=2, seed=1),
                    "npy",
                    on_progress=lambda d, t: progressed.set(),
                )
            )
            await asyncio.wait_for(progressed.wait(), 10)
            ray.kill(engine.pool.models[1])
            with pytest.raises(RequestFailedError, match="failed after 1 attempt"):
                await asyncio.wait_for(task, 120)
            return await engine.generate(png, VideoParams(num_inference_steps=4, num_frames=2, seed=1), "npy")

        result = aloop.run(scenario(), timeout=300)
        assert result.attempts == 1 and result.video.num_frames == 2


def test_config_errors_before_any_actor_starts(aloop):
    with pytest.raises(ConfigError, match="need 3 GPUs; the cluster has 0"):
        aloop.run(Engine(EngineConfig(transport="nccl", num_gpus_per_actor=1, name_prefix="nccl-try")).start())
    with pytest.raises(ValueError, match="transport"):
        EngineConfig(transport="carrier-pigeon")  # type: ignore[arg-type]
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)]
    assert not [n for n in names if n.startswith("nccl-try-")]
