"""Multi-clip jobs in the job manager, against a fake engine that keeps clips in its work directory as the real
one does (no Ray, no torch): progress names the clip, the finished file is moved into the store, the work
directory goes when the job ends, and a replica that takes over a dead one's job resumes at the clip in progress.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest

from svdpipe.config import EngineConfig, VideoParams
from svdpipe.errors import InvalidRequestError, RequestCancelledError, StorageFullError
from svdpipe.service.jobs import JobManager
from svdpipe.service.schemas import VideoJob
from tests.unit.test_jobs import FakeEngine, _crash, _manager, _png, _replica, _wait_status


@dataclass
class ClipEngine(FakeEngine):
    """The engine's clip contract: clip k is written to work_dir when done, clips found there are not run again,
    progress counts every clip's steps, the finished video is a file in work_dir (video.data empty)."""

    max_clips: int = 40
    computed: list[tuple[str, int]] = field(default_factory=list)  # (request id, clip) actually run here
    work_dirs: list[Path] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.config = EngineConfig(num_stages=2, max_inflight=self.max_inflight, max_clips=self.max_clips)

    async def generate(
        self,
        image_png,
        params,
        output_format="mp4",
        request_id=None,
        on_progress=None,
        timeout_s=None,
        work_dir=None,
    ):
        clips, steps = params.num_clips, params.num_inference_steps
        if clips == 1:
            assert work_dir is None  # a single clip runs as before
            return await super().generate(image_png, params, output_format, request_id, on_progress, timeout_s)
        assert work_dir is not None
        work = Path(work_dir)
        work.mkdir(parents=True, exist_ok=True)
        self.work_dirs.append(work)
        self.calls.append(request_id)
        self.running.add(request_id)
        try:
            for clip in range(clips):
                done_file = work / f"clip-{clip}.done"
                if done_file.exists():
                    continue
                for step in range(1, steps + 1):
                    await asyncio.sleep(self.step_s)
                    if request_id in self.cancelled:
                        raise RequestCancelledError("cancelled")
                    if on_progress:
                        on_progress(clip * steps + step, clips * steps)
                self.computed.append((request_id, clip))
                tmp = work / f".clip-{clip}.tmp"
                tmp.write_text(f"{params.seed + clip}")
                tmp.rename(done_file)
        finally:
            self.running.discard(request_id)
        video = work / "video.mp4"
        video.write_bytes(b"".join((work / f"clip-{k}.done").read_bytes() + b";" for k in range(clips)))
        data = SimpleNamespace(data=b"", path=str(video), trace=())
        return SimpleNamespace(video=data, timings=[], latency_s=0.0, split=False, parareal=None, plan=None)


async def _gone(path: Path, timeout_s: float = 5.0) -> bool:
    """Whether ``path`` is removed within ``timeout_s`` (the dispatcher tidies just after the job is recorded)."""
    for _ in range(int(timeout_s / 0.01)):
        if not path.exists():
            return True
        await asyncio.sleep(0.01)
    return False


def _expected(seed: int, clips: int) -> bytes:
    return b"".join(f"{seed + k};".encode() for k in range(clips))


async def _watch_clips(manager: JobManager, job_id: str, seen: list[VideoJob]) -> None:
    while True:
        record = manager.get(job_id)
        if record is not None:
            seen.append(VideoJob.from_record(record, None))
            if record.status in ("completed", "failed", "cancelled"):
                return
        await asyncio.sleep(0.005)


def test_a_multi_clip_job_completes_with_every_clip_and_its_work_dir_removed(tmp_path):
    async def scenario():
        engine = ClipEngine(step_s=0.01)
        manager = _manager(tmp_path, engine)
        await manager.start()
        record = manager.submit(_png(), VideoParams(num_inference_steps=4, num_clips=3, seed=10), "mp4")
        seen: list[VideoJob] = []
        await asyncio.wait_for(_watch_clips(manager, record.id, seen), 10)
        done = await _wait_status(manager, record.id, ("completed",))
        removed = await _gone(engine.work_dirs[0])
        await manager.stop()
        return engine, done, seen, manager.store.content(record.id), removed

    engine, done, seen, content, removed = asyncio.run(scenario())
    assert content == _expected(10, 3)
    assert done.clips_done == 3 and done.progress == 100 and done.parameters["num_clips"] == 3
    assert removed and engine.work_dirs[0] == tmp_path / "clips" / done.id
    running = [j for j in seen if j.status == "in_progress"]
    clips = [j.clip for j in running]
    assert clips == sorted(clips) and {1, 2, 3} <= set(clips), clips  # every clip named while it ran
    assert all(j.num_clips == 3 for j in seen) and seen[-1].clip is None and seen[-1].clips_done == 3
    progress = [j.progress for j in running]
    assert progress == sorted(progress)


def test_one_clip_jobs_run_as_before(tmp_path):
    async def scenario():
        engine = ClipEngine()
        manager = _manager(tmp_path, engine)
        await manager.start()
        record = manager.submit(_png(), VideoParams(num_inference_steps=2, seed=3), "mp4")
        done = await _wait_status(manager, record.id, ("completed",))
        await manager.stop()
        return done, manager.store.content(record.id)

    done, content = asyncio.run(scenario())
    assert content == f"video:{done.id}:3".encode()
    assert not (tmp_path / "clips").exists() or not any((tmp_path / "clips").iterdir())
    job = VideoJob.from_record(done, None)
    assert (job.num_clips, job.clip) == (1, None)


def test_more_clips_than_max_clips_is_refused_naming_the_limit(tmp_path):
    manager = _manager(tmp_path, ClipEngine(max_clips=4))
    with pytest.raises(InvalidRequestError, match="max_clips"):
        manager.submit(_png(), VideoParams(num_clips=5), "mp4")
    manager.submit(_png(), VideoParams(num_clips=4, num_frames=2, height=64, width=64), "mp4")
    assert manager.store.counts()["queued"] == 1


def test_a_video_whose_clips_cannot_fit_on_disk_is_refused(tmp_path, monkeypatch):
    from svdpipe.service.jobs import facade

    monkeypatch.setattr(facade, "free_bytes", lambda _path: 300 * 2**20)  # 300 MB free, floor 256 MB
    manager = _manager(tmp_path, ClipEngine())
    small = VideoParams(num_clips=2, num_frames=2, height=64, width=64)
    manager.submit(_png(), small, "mp4")
    with pytest.raises(StorageFullError, match="40 clips needs about"):
        manager.submit(_png(), VideoParams(num_clips=40, num_frames=14, height=256, width=256), "mp4")


def test_cancel_after_the_first_clip_removes_the_work_dir(tmp_path):
    async def scenario():
        engine = ClipEngine(step_s=0.02)
        manager = _manager(tmp_path, engine)
        await manager.start()
        record = manager.submit(_png(), VideoParams(num_inference_steps=5, num_clips=4, seed=1), "mp4")
        for _ in range(500):
            if (record.id, 0) in engine.computed:
                break
            await asyncio.sleep(0.01)
        cancelled = manager.cancel(record.id)
        removed = await _gone(engine.work_dirs[0])
        final = manager.get(record.id)
        await manager.stop()
        return engine, record, cancelled, final, removed

    engine, record, cancelled, final, removed = asyncio.run(scenario())
    assert cancelled.status == "cancelled" and final.status == "cancelled"
    assert cancelled.clips_done >= 1  # how far it got is kept
    assert record.id in engine.cancelled and removed
    assert final.content_bytes is None


def test_delete_of_a_running_multi_clip_job_removes_its_work_dir(tmp_path):
    async def scenario():
        engine = ClipEngine(step_s=0.02)
        manager = _manager(tmp_path, engine)
        await manager.start()
        record = manager.submit(_png(), VideoParams(num_inference_steps=5, num_clips=4), "mp4")
        for _ in range(500):
            if (record.id, 0) in engine.computed:
                break
            await asyncio.sleep(0.01)
        assert manager.delete(record.id)
        removed = await _gone(engine.work_dirs[0])
        await manager.stop()
        return removed

    assert asyncio.run(scenario())


def test_a_replica_taking_over_a_dead_ones_job_resumes_at_the_clip_in_progress(open_store, tmp_path):
    async def scenario():
        engine_a = ClipEngine(max_inflight=1, step_s=0.02)
        a = _replica(open_store, tmp_path, "a", engine_a)
        engine_b = ClipEngine(max_inflight=1, step_s=0.01)
        b = _replica(open_store, tmp_path, "b", engine_b)
        await a.start()
        job = a.submit(_png(), VideoParams(num_inference_steps=5, num_clips=4, seed=20), "mp4")
        for _ in range(1000):  # a is inside clip 2 (0-based: two clips written)
            if len(engine_a.computed) == 2:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.03)
        await _crash(a)  # the replica dies: nothing released, its work directory stays
        assert engine_a.work_dirs[0].is_dir()
        await b.start()  # b re-queues the job once a's lease has run out, then claims it
        done = await _wait_status(b, job.id, ("completed",), timeout=20)
        content = b.store.content(job.id)
        removed = await _gone(tmp_path / "clips" / job.id)
        await b.stop()
        return job, engine_a, engine_b, done, content, removed

    job, engine_a, engine_b, done, content, removed = asyncio.run(scenario())
    assert engine_a.computed == [(job.id, 0), (job.id, 1)]
    assert engine_b.computed == [(job.id, 2), (job.id, 3)]  # clips 0 and 1 were not made again
    assert content == _expected(20, 4)  # the same video as an uninterrupted run
    assert done.owner == "b" and done.attempts == 2 and done.clips_done == 4
    assert removed


def test_a_replica_stopping_gracefully_keeps_the_work_dir_for_the_next(tmp_path):
    async def scenario():
        engine = ClipEngine(max_inflight=1, step_s=0.05)
        manager = _manager(tmp_path, engine)
        await manager.start()
        job = manager.submit(_png(), VideoParams(num_inference_steps=4, num_clips=5), "mp4")
        for _ in range(500):
            if engine.computed:
                break
            await asyncio.sleep(0.01)
        await manager.drain(grace_s=0.01)  # the job goes back to the queue
        return manager.store.get(job.id), engine.work_dirs[0]

    record, work = asyncio.run(scenario())
    assert record.status == "queued" and (work / "clip-0.done").is_file()


def test_heartbeats_carry_the_clip_to_other_replicas(open_store, tmp_path):
    async def scenario():
        engine = ClipEngine(max_inflight=1, step_s=0.08)
        a = _replica(open_store, tmp_path, "a", engine)
        b = _replica(open_store, tmp_path, "b", ClipEngine(max_inflight=1))
        await a.start()
        job = a.submit(_png(), VideoParams(num_inference_steps=3, num_clips=3), "mp4")
        seen: set[int | None] = set()
        for _ in range(1000):
            record = b.store.get(job.id)  # b runs nothing: what it shows came through the store
            seen.add(VideoJob.from_record(record, None).clip)
            if record.status == "completed":
                break
            await asyncio.sleep(0.01)
        await a.stop()
        return seen

    assert {1, 2, 3} <= asyncio.run(scenario())


def test_a_record_whose_parameters_cannot_be_read_fails_with_the_reason(tmp_path):
    """The dispatcher reads a job's parameters before it runs it (to know its clips): a record it cannot read
    fails, as an engine error would, instead of sitting in progress until its lease runs out."""
    from svdpipe.service.store import JobRecord

    async def scenario():
        manager = _manager(tmp_path, ClipEngine())
        bad = JobRecord(
            id="bad", status="queued", created_at=1.0, seed=1, parameters={"height": "x"}, output_format="mp4"
        )
        manager.store.create(bad, _png())
        await manager.start()
        failed = await _wait_status(manager, "bad", ("failed",))
        await manager.stop()
        return failed

    failed = asyncio.run(scenario())
    assert failed.error.startswith("internal error: ValidationError") and "ResolvedParams" in failed.error
