"""The job manager's lifecycle, queue, cancel and recovery, against a fake engine (no Ray, no torch)."""

from __future__ import annotations

import asyncio
import io
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import PIL.Image
import pytest

from svdpipe.config import EngineConfig, VideoParams
from svdpipe.errors import InvalidRequestError, RequestCancelledError, RequestFailedError
from svdpipe.models import model_spec
from svdpipe.service.config import ServiceConfig
from svdpipe.service.jobs import JobManager, QueueFull
from svdpipe.service.store import SQLiteJobStore
from svdpipe.timing import StageStats


def _png() -> bytes:
    buf = io.BytesIO()
    PIL.Image.new("RGB", (64, 64), (10, 20, 30)).save(buf, "PNG")
    return buf.getvalue()


@dataclass
class FakeEngine:
    """Runs 'steps' as short sleeps; can be told to fail; honours cancel like the real engine."""

    max_inflight: int = 2
    step_s: float = 0.01
    fail_with: Exception | None = None
    calls: list[str] = field(default_factory=list)
    cancelled: set[str] = field(default_factory=set)
    running: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.config = EngineConfig(num_stages=2, max_inflight=self.max_inflight)
        self.spec = model_spec("tiny")
        self.stats = StageStats()

    async def generate(self, image_png, params, output_format="mp4", request_id=None, on_progress=None, timeout_s=None):
        self.calls.append(request_id)
        self.running.add(request_id)
        try:
            for done in range(1, params.num_inference_steps + 1):
                await asyncio.sleep(self.step_s)
                if request_id in self.cancelled:
                    raise RequestCancelledError("cancelled")
                if on_progress:
                    on_progress(done, params.num_inference_steps)
            if self.fail_with is not None:
                raise self.fail_with
        finally:
            self.running.discard(request_id)
        video = SimpleNamespace(data=f"video:{request_id}:{params.seed}".encode(), trace=())
        return SimpleNamespace(video=video, timings=[], latency_s=0.0, split=False, parareal=None)

    def cancel(self, request_id: str) -> bool:
        if request_id in self.running:
            self.cancelled.add(request_id)
            return True
        return False

    async def health(self) -> list[dict[str, Any]]:
        return [{"name": "s0", "role": "denoise", "state": "alive"}]


async def _wait_status(manager: JobManager, job_id: str, statuses: tuple[str, ...], timeout: float = 5) -> Any:
    for _ in range(int(timeout / 0.01)):
        record = manager.get(job_id)
        if record is not None and record.status in statuses:
            return record
        await asyncio.sleep(0.01)
    raise AssertionError(f"{job_id} never reached {statuses}: {manager.get(job_id)}")


def _manager(tmp_path, engine: FakeEngine | None = None, **cfg: Any) -> JobManager:
    return JobManager(engine or FakeEngine(), SQLiteJobStore(tmp_path), ServiceConfig(data_dir=str(tmp_path), **cfg))


def test_job_completes_with_content_and_progress(tmp_path):
    async def scenario():
        manager = _manager(tmp_path)
        await manager.start()
        record = manager.submit(_png(), VideoParams(num_inference_steps=10, seed=42), "mp4")
        assert record.status == "queued" and record.seed == 42
        running = await _wait_status(manager, record.id, ("in_progress",))
        assert running.attempts == 1
        done = await _wait_status(manager, record.id, ("completed",))
        await manager.stop()
        return done, manager.store.content(record.id)

    done, content = asyncio.run(scenario())
    assert done.progress == 100 and done.completed_at >= done.started_at >= done.created_at
    assert content == f"video:{done.id}:42".encode()


def test_random_seed_is_recorded(tmp_path):
    async def scenario():
        manager = _manager(tmp_path)
        return manager.submit(_png(), VideoParams(num_inference_steps=2), "gif")

    record = asyncio.run(scenario())
    assert 0 <= record.seed < 2**63 and record.parameters["seed"] == record.seed


def test_bad_parameters_are_rejected_before_queueing(tmp_path):
    manager = _manager(tmp_path)
    with pytest.raises(InvalidRequestError, match="multiples of 8"):
        manager.submit(_png(), VideoParams(height=60), "mp4")
    with pytest.raises(InvalidRequestError, match="at least the number of denoise stages"):
        manager.submit(_png(), VideoParams(num_inference_steps=1), "mp4")
    assert manager.store.counts()["queued"] == 0


def test_queue_full_gives_retry_after(tmp_path):
    async def scenario():
        manager = _manager(tmp_path, FakeEngine(max_inflight=1, step_s=0.05), max_queue=2)
        await manager.start()
        first = manager.submit(_png(), VideoParams(num_inference_steps=20), "mp4")
        await _wait_status(manager, first.id, ("in_progress",))
        queued = [manager.submit(_png(), VideoParams(num_inference_steps=20), "mp4") for _ in range(2)]
        assert [manager.queue_position(r.id) for r in queued] == [1, 2]
        with pytest.raises(QueueFull) as info:
            manager.submit(_png(), VideoParams(num_inference_steps=20), "mp4")
        await manager.stop()
        return info.value

    exc = asyncio.run(scenario())
    assert 1 <= exc.retry_after_s <= 300 and "queue is full" in str(exc)


def test_cancel_queued_and_running(tmp_path):
    async def scenario():
        engine = FakeEngine(max_inflight=1, step_s=0.05)
        manager = _manager(tmp_path, engine)
        await manager.start()
        running = manager.submit(_png(), VideoParams(num_inference_steps=40), "mp4")
        waiting = manager.submit(_png(), VideoParams(num_inference_steps=4), "mp4")
        await _wait_status(manager, running.id, ("in_progress",))
        assert manager.cancel(waiting.id).status == "cancelled"
        assert manager.cancel(running.id).status == "cancelled"
        await asyncio.sleep(0.2)
        nxt = manager.submit(_png(), VideoParams(num_inference_steps=2), "mp4")
        await _wait_status(manager, nxt.id, ("completed",))
        await manager.stop()
        return engine, running, waiting, manager

    engine, running, waiting, manager = asyncio.run(scenario())
    assert waiting.id not in engine.calls  # never entered the pipeline
    assert running.id in engine.cancelled  # the engine was told to stop it
    assert manager.store.get(running.id).status == "cancelled"
    assert manager.store.content(running.id) is None


def test_failures_are_recorded_with_their_message(tmp_path):
    async def scenario():
        manager = _manager(tmp_path, FakeEngine(fail_with=RequestFailedError("stage svdpipe-denoise-1 died twice")))
        await manager.start()
        record = manager.submit(_png(), VideoParams(num_inference_steps=2), "mp4")
        failed = await _wait_status(manager, record.id, ("failed",))
        await manager.stop()
        return failed

    failed = asyncio.run(scenario())
    assert failed.error == "stage svdpipe-denoise-1 died twice"


def test_delete_removes_a_running_job(tmp_path):
    async def scenario():
        manager = _manager(tmp_path, FakeEngine(step_s=0.05))
        await manager.start()
        record = manager.submit(_png(), VideoParams(num_inference_steps=20), "mp4")
        await _wait_status(manager, record.id, ("in_progress",))
        assert manager.delete(record.id)
        await asyncio.sleep(0.2)
        await manager.stop()
        return manager.get(record.id), manager.delete(record.id)

    assert asyncio.run(scenario()) == (None, False)


def test_jobs_survive_a_restart(tmp_path):
    async def first_run():
        manager = _manager(tmp_path, FakeEngine(max_inflight=1, step_s=0.05))
        await manager.start()
        done = manager.submit(_png(), VideoParams(num_inference_steps=2, seed=1), "mp4")
        await _wait_status(manager, done.id, ("completed",))
        running = manager.submit(_png(), VideoParams(num_inference_steps=100, seed=2), "mp4")
        queued = manager.submit(_png(), VideoParams(num_inference_steps=2, seed=3), "mp4")
        await _wait_status(manager, running.id, ("in_progress",))
        await manager.stop()  # the replica dies with a job in flight
        manager.store.close()
        return done.id, running.id, queued.id

    async def second_run(ids):
        manager = _manager(tmp_path, FakeEngine(max_inflight=1))
        await manager.start()
        records = [await _wait_status(manager, i, ("completed",)) for i in ids]
        await manager.stop()
        return records, [manager.store.content(i) for i in ids]

    ids = asyncio.run(first_run())
    records, contents = asyncio.run(second_run(ids))
    assert [r.attempts for r in records] == [1, 2, 1]  # the interrupted job ran again
    assert contents == [f"video:{i}:{s}".encode() for i, s in zip(ids, (1, 2, 3), strict=True)]
