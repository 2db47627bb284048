"""The job manager's lifecycle, queue, cancel and recovery, against a fake engine (no Ray, no torch)."""

from __future__ import annotations

import asyncio
import contextlib
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
    split: bool = False  # what the engine reports: the request's guidance halves ran on two actors
    parareal: Any = None  # what the engine reports of a parareal solve (PararealStats), or None

    def __post_init__(self) -> None:
        self.config = EngineConfig(num_stages=2, max_inflight=self.max_inflight)
        self.spec = model_spec("tiny")
        self.max_decode_chunk = None
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
        video = SimpleNamespace(data=f"video:{request_id}:{params.seed}".encode(), trace=(), path=None)
        return SimpleNamespace(
            video=video, timings=[], latency_s=0.0, split=self.split, parareal=self.parareal, plan=None
        )

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


def _ran(tmp_path, engine: FakeEngine) -> dict[str, Any]:
    """The parameters a completed job is recorded with."""

    async def scenario():
        manager = _manager(tmp_path, engine)
        await manager.start()
        record = manager.submit(_png(), VideoParams(num_inference_steps=3, seed=1), "mp4")
        done = await _wait_status(manager, record.id, ("completed",))
        await manager.stop()
        return done

    ran = asyncio.run(scenario()).parameters
    assert ran["num_inference_steps"] == 3 and ran["seed"] == 1
    return ran


def test_a_split_job_records_it(tmp_path):
    engine = FakeEngine(split=True)
    engine.config = EngineConfig(num_stages=2, max_inflight=2, latency_mode="cfg-split")
    ran = _ran(tmp_path, engine)
    assert ran["latency_mode"] == "cfg-split" and ran["cfg_split"] is True
    assert not any(k.startswith("parareal_") for k in ran)


def test_a_parareal_job_records_its_solve(tmp_path):
    from svdpipe.parareal import PararealStats

    stats = PararealStats(iterations=2, exact=False, final_change=0.125, fine_solves=5, coarse_solves=4, unet_evals=9)
    ran = _ran(tmp_path, FakeEngine(parareal=stats))
    assert ran["cfg_split"] is False
    # issue 13: iterations, UNet evaluations in total, final change
    assert (ran["parareal_iterations"], ran["parareal_unet_evals"], ran["parareal_final_change"]) == (2, 9, 0.125)


def test_bad_parameters_are_rejected_before_queueing(tmp_path):
    manager = _manager(tmp_path)
    with pytest.raises(InvalidRequestError, match="multiples of 8"):
        manager.submit(_png(), VideoParams(height=60), "mp4")
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


# -- several replicas on one store (each manager has its own connection, as replicas in other processes do) --------

FAST = {"poll_interval_s": 0.05, "lease_s": 1.0}


def _replica(open_store, tmp_path, name: str, engine: FakeEngine, **cfg: Any) -> JobManager:
    config = ServiceConfig(data_dir=str(tmp_path), **{**FAST, **cfg})
    return JobManager(engine, open_store(), config, owner=name)


async def _crash(manager: JobManager) -> None:
    """The replica's process dies: its loops and jobs stop, nothing is released or recorded."""
    manager.local.stopping = True
    tasks = [*manager._background, *manager.local.tasks.values()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def test_two_replicas_share_one_queue_and_serve_each_others_jobs(open_store, tmp_path):
    async def scenario():
        engines = [FakeEngine(max_inflight=1, step_s=0.02), FakeEngine(max_inflight=1, step_s=0.02)]
        a, b = (_replica(open_store, tmp_path, n, e) for n, e in zip("ab", engines, strict=True))
        await a.start()
        await b.start()
        records = [a.submit(_png(), VideoParams(num_inference_steps=4, seed=i), "mp4") for i in range(8)]
        # One global queue, oldest first (a claim running in a worker thread may already have taken the oldest).
        positions = b.queue_positions([r.id for r in records])
        waiting = [r.id for r in records][len(records) - len(positions) :]
        assert [positions.get(i) for i in waiting] == list(range(1, len(waiting) + 1)) and len(waiting) >= 2
        done = [await _wait_status(b, r.id, ("completed",)) for r in records]
        contents = [b.store.content(r.id) for r in records]
        await a.stop()
        await b.stop()
        return engines, records, done, contents

    engines, records, done, contents = asyncio.run(scenario())
    calls = engines[0].calls + engines[1].calls
    assert sorted(calls) == sorted(r.id for r in records)  # every job ran exactly once, on one replica
    assert engines[0].calls and engines[1].calls  # and both replicas took jobs from the queue
    assert {d.owner for d in done} == {"a", "b"} and {d.attempts for d in done} == {1}
    assert contents == [f"video:{r.id}:{i}".encode() for i, r in enumerate(records)]


def test_cancel_through_another_replica_stops_the_job_where_it_runs(open_store, tmp_path):
    async def scenario():
        engine_a = FakeEngine(max_inflight=1, step_s=0.05)
        a = _replica(open_store, tmp_path, "a", engine_a)
        b = _replica(open_store, tmp_path, "b", FakeEngine(max_inflight=1))
        await a.start()
        long = a.submit(_png(), VideoParams(num_inference_steps=400), "mp4")
        await _wait_status(a, long.id, ("in_progress",))
        await b.start()  # after a holds the job (b's claim loop would race a's for it)
        for _ in range(100):  # wait for a heartbeat to carry a's progress to the store
            if b.get(long.id).progress > 0:
                break
            await asyncio.sleep(0.02)
        seen_progress = b.get(long.id).progress
        cancelled = b.cancel(long.id)  # b does not run it
        for _ in range(500):
            if long.id in engine_a.cancelled:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)
        final = b.get(long.id)
        await a.stop()
        await b.stop()
        return engine_a, long, seen_progress, cancelled, final

    engine_a, long, seen_progress, cancelled, final = asyncio.run(scenario())
    assert seen_progress > 0  # any replica shows the progress of a job running elsewhere
    assert cancelled is not None and cancelled.status == "cancelled"
    assert long.id in engine_a.cancelled  # the owner was told, through the store, and stopped it
    assert final.status == "cancelled" and final.content_bytes is None


def test_a_dead_replicas_job_is_requeued_by_lease_and_finishes_elsewhere(open_store, tmp_path):
    async def scenario():
        a = _replica(open_store, tmp_path, "a", FakeEngine(max_inflight=1, step_s=0.05))
        engine_b = FakeEngine(max_inflight=1, step_s=0.01)
        b = _replica(open_store, tmp_path, "b", engine_b)
        await a.start()
        job = a.submit(_png(), VideoParams(num_inference_steps=400, seed=77), "mp4")
        running = await _wait_status(a, job.id, ("in_progress",))
        await _crash(a)
        await b.start()  # b's housekeeping re-queues the job once a's lease has run out, then b claims it
        done = await _wait_status(b, job.id, ("completed",), timeout=20)
        content = b.store.content(job.id)
        await b.stop()
        return job, running, done, content, engine_b

    job, running, done, content, engine_b = asyncio.run(scenario())
    assert running.owner == "a" and running.attempts == 1
    assert done.owner == "b" and done.attempts == 2 and engine_b.calls == [job.id]
    assert content == f"video:{job.id}:77".encode()  # same seed, same output


def test_a_job_that_kills_every_replica_fails_after_max_attempts(open_store, tmp_path):
    async def scenario():
        job_id = None
        for attempt in range(3):
            replica = _replica(open_store, tmp_path, f"r{attempt}", FakeEngine(step_s=0.05), max_job_attempts=2)
            await replica.start()
            if job_id is None:
                job_id = replica.submit(_png(), VideoParams(num_inference_steps=400), "mp4").id
            for _ in range(2000):  # until this replica runs it (after the last one's lease ran out) or it failed
                record = replica.get(job_id)
                if record.status == "failed" or record.owner == replica.owner:
                    break
                await asyncio.sleep(0.01)
            if record.status == "failed":
                await replica.stop()
                return record, attempt
            await _crash(replica)
        raise AssertionError("never gave up")

    record, attempt = asyncio.run(scenario())
    assert attempt == 2 and record.attempts == 2
    assert record.error == "the service restarted while this job was running, 2 times; giving up"


def test_store_outage_running_job_keeps_going_and_is_recorded_when_back(tmp_path):
    """PostgreSQL goes away mid-job: the API side gets StoreUnavailableError (503), the job finishes anyway, and
    its result is in the store once the database is back."""
    from tests.pg import PgCluster, find_bin_dir

    if find_bin_dir() is None:
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl) are not installed")
    from svdpipe.errors import StoreUnavailableError
    from svdpipe.service.store.postgres import PostgresJobStore

    cluster = PgCluster()
    cluster.start()
    try:

        async def scenario():
            store = PostgresJobStore(cluster.dsn, tmp_path, reconnect_interval_s=0.05)
            manager = JobManager(
                FakeEngine(max_inflight=1, step_s=0.02), store, ServiceConfig(data_dir=str(tmp_path), **FAST), owner="a"
            )
            await manager.start()
            job = manager.submit(_png(), VideoParams(num_inference_steps=60, seed=5), "mp4")
            await _wait_status(manager, job.id, ("in_progress",))
            await asyncio.to_thread(cluster.stop)
            errors = []
            for call in (manager.get, manager.cancel):
                try:
                    call(job.id)
                except StoreUnavailableError as exc:
                    errors.append(exc)
            try:
                manager.submit(_png(), VideoParams(num_inference_steps=2), "mp4")
            except StoreUnavailableError as exc:
                errors.append(exc)
            for _ in range(500):  # the job ends while the database is down: its result waits in memory
                if job.id in manager.recorder.unrecorded:
                    break
                await asyncio.sleep(0.01)
            waited = job.id in manager.recorder.unrecorded
            await asyncio.to_thread(cluster.start)
            done = None
            for _ in range(2000):  # reads fail fast (503) until the store reconnects, then show the result
                with contextlib.suppress(StoreUnavailableError):
                    done = manager.get(job.id)
                if done is not None and done.status == "completed":
                    break
                await asyncio.sleep(0.01)
            content = store.content(job.id)
            await manager.stop()
            store.close()
            return errors, waited, done, content

        errors, waited, done, content = asyncio.run(scenario())
    finally:
        cluster.destroy()
    assert len(errors) == 3  # get, cancel and submit each said "unavailable", none pretended to succeed
    assert waited
    assert done.status == "completed" and done.attempts == 1  # not re-run: recorded from memory
    assert content == f"video:{done.id}:5".encode()


def test_health_answers_from_stage_states_refreshed_in_the_background(tmp_path):
    """Health requests do not each ask the engine (it reads Ray's control plane): one refresh per interval."""

    class CountingEngine(FakeEngine):
        asked = 0

        async def health(self):
            self.asked += 1
            return await super().health()

    async def scenario():
        engine = CountingEngine()
        manager = _manager(tmp_path, engine)
        await manager.start()
        answers = [await manager.health() for _ in range(50)]
        await manager.stop()
        return engine.asked, answers

    asked, answers = asyncio.run(scenario())
    assert asked <= 2  # once at start (and perhaps one refresh), not 50 times
    assert all(a["status"] == "ok" and a["stages"][0]["state"] == "alive" for a in answers)


def test_drain_lets_running_jobs_finish_and_claims_nothing_more(tmp_path):
    async def scenario():
        manager = _manager(tmp_path, FakeEngine(max_inflight=1))
        await manager.start()
        first = manager.submit(_png(), VideoParams(num_inference_steps=5, seed=1), "mp4")
        second = manager.submit(_png(), VideoParams(num_inference_steps=5, seed=2), "mp4")
        await _wait_status(manager, first.id, ("in_progress",))
        await manager.drain(grace_s=30)  # far longer than the job: it ends by finishing
        return manager.store.get(first.id), manager.store.get(second.id)

    first, second = asyncio.run(scenario())
    assert first.status == "completed"
    assert second.status == "queued" and second.attempts == 0  # never claimed while stopping


def test_drain_hands_jobs_past_the_grace_back_with_their_lease_released(tmp_path):
    async def scenario():
        manager = _manager(tmp_path, FakeEngine(max_inflight=1, step_s=10.0))
        await manager.start()
        job = manager.submit(_png(), VideoParams(num_inference_steps=5, seed=1), "mp4")
        await _wait_status(manager, job.id, ("in_progress",))
        await manager.drain(grace_s=0.01)
        return manager.store.get(job.id)

    record = asyncio.run(scenario())
    assert record.status == "queued" and record.owner is None and record.lease_expires_at is None
    assert record.attempts == 1


def test_a_failed_jobs_error_is_its_root_cause_in_one_line(tmp_path):
    from tests.unit.test_errors import PADDING, _task_error

    failure = _task_error("mux", _task_error("encode", RuntimeError(PADDING)), actor="MuxWorker")

    async def scenario():
        manager = _manager(tmp_path, FakeEngine(fail_with=failure))
        await manager.start()
        job = manager.submit(_png(), VideoParams(num_inference_steps=1, seed=1), "mp4")
        record = await _wait_status(manager, job.id, ("failed",))
        await manager.stop()
        return record

    assert asyncio.run(scenario()).error == f"internal error: RuntimeError: {PADDING}"
