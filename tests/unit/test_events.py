"""The job event stream (SSE): ids, event names, resume, the end, against the job manager with a fake engine."""

from __future__ import annotations

import asyncio
import json

import pytest

from svdpipe.config import VideoParams
from svdpipe.service.events import (
    ChangeSignal,
    JobState,
    already_final,
    event_name,
    format_event,
    job_events,
)
from svdpipe.service.schemas import VideoJob
from tests.unit.test_jobs import FakeEngine, _manager, _png


def _job(status: str = "in_progress", progress: int = 0, queue_position: int | None = None) -> VideoJob:
    return VideoJob(
        id="video_1",
        status=status,
        progress=progress,
        queue_position=queue_position,
        created_at=1.0,
        started_at=None,
        completed_at=None,
        error=None,
        seed=1,
        parameters={},
        output_format="mp4",
    )


def _parse(stream: str) -> list[dict[str, str]]:
    """SSE text -> messages (dicts of field -> value); comments and retry-only messages dropped."""
    messages = []
    for block in stream.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if line and not line.startswith(":"))
        if "event" in fields:
            messages.append(fields)
    return messages


async def _collect(read, changes, last_event_id=None, **kwargs) -> str:
    return "".join([chunk async for chunk in job_events(read, changes, last_event_id, **kwargs)])


def test_event_ids_round_trip_and_reject_foreign_ids():
    state = JobState.of(_job("queued", 0, 3))
    assert state.event_id == "queued.0.3" and JobState.parse(state.event_id) == state
    for foreign in (None, "", "42", "running.1.0", "queued.x.1", "queued.1"):
        assert JobState.parse(foreign) is None


def test_event_names_say_what_changed():
    queued = JobState("queued", 0, 2)
    assert event_name(None, queued) == "status"
    assert event_name(queued, queued._replace(queue_position=1)) == "queue_position"
    running = JobState("in_progress", 0, 0)
    assert event_name(queued, running) == "status"
    assert event_name(running, running._replace(progress=40)) == "progress"
    for final in ("completed", "failed", "cancelled"):
        assert event_name(running, JobState(final, 40, 0)) == final


def test_format_event():
    assert format_event("progress", '{"a": 1}', "in_progress.5.0") == (
        'id: in_progress.5.0\nevent: progress\ndata: {"a": 1}\n\n'
    )


def test_stream_of_a_job_from_queue_to_completion(tmp_path):
    """Through the real job manager: one progress event per step, strictly increasing, then `completed`."""
    steps = 5

    async def scenario():
        manager = _manager(tmp_path, FakeEngine(max_inflight=1, step_s=0.02))
        await manager.start()
        manager.submit(_png(), VideoParams(num_inference_steps=steps, seed=1), "mp4")  # ours waits behind it
        record = manager.submit(_png(), VideoParams(num_inference_steps=steps, seed=2), "mp4")

        def read():
            r = manager.get(record.id)
            return None if r is None else VideoJob.from_record(r, manager.queue_position(r.id))

        text = await asyncio.wait_for(_collect(read, manager.changes), 10)
        await manager.stop()
        return text

    text = asyncio.run(scenario())
    assert text.startswith("retry: 1000\n\n")
    events = _parse(text)
    names = [e["event"] for e in events]
    assert names[0] == "status" and names[-1] == "completed"
    jobs = [json.loads(e["data"]) for e in events]
    assert jobs[0]["status"] == "queued" and jobs[0]["queue_position"] in (1, 2)
    assert jobs[-1]["status"] == "completed" and jobs[-1]["progress"] == 100
    running = [j["progress"] for j in jobs if j["status"] == "in_progress"]
    assert running == sorted(set(running))  # strictly increasing
    # Every step is seen but the last, whose 99 % the fake engine turns into `completed` at once.
    assert {100 * i // steps for i in range(1, steps)} <= set(running)
    assert names.count("progress") >= steps - 1
    assert all(e["id"] == JobState.of(VideoJob(**j)).event_id for e, j in zip(events, jobs, strict=True))


def test_resume_sends_only_what_changed_and_ends_after_the_final_event():
    changes = ChangeSignal()
    states = iter([_job("in_progress", 40), _job("in_progress", 40), _job("in_progress", 60), _job("completed", 100)])

    def read():
        job = next(states)
        asyncio.get_running_loop().call_soon(changes.notify)  # the next state is "already there"
        return job

    events = _parse(asyncio.run(_collect(read, changes, last_event_id="in_progress.40.0", poll_s=5)))
    assert [(e["event"], e["id"]) for e in events] == [
        ("progress", "in_progress.60.0"),
        ("completed", "completed.100.0"),
    ]
    assert already_final(_job("completed", 100), "completed.100.0")
    assert not already_final(_job("completed", 100), "in_progress.60.0")
    assert not already_final(_job("in_progress", 60), "in_progress.60.0")


def test_deleted_job_ends_the_stream_with_an_error_and_quiet_streams_get_keepalives():
    changes = ChangeSignal()
    states = iter([_job("queued", 0, 1), _job("queued", 0, 1), None])
    text = asyncio.run(_collect(lambda: next(states), changes, poll_s=0.01, keepalive_s=0))
    assert ": keep-alive\n\n" in text
    events = _parse(text)
    assert [e["event"] for e in events] == ["status", "error"]
    assert "deleted" in json.loads(events[-1]["data"])["error"]["message"]


@pytest.mark.parametrize("waiters", [1, 3])
def test_change_signal_wakes_every_waiter_taken_before_the_change(waiters):
    async def scenario():
        signal = ChangeSignal()
        taken = [signal.waiter() for _ in range(waiters)]
        signal.notify()
        later = signal.waiter()
        return all(e.is_set() for e in taken), later.is_set()

    assert asyncio.run(scenario()) == (True, False)


def test_a_new_clip_is_an_event_even_when_the_percentage_stays():
    """A video of many clips moves its percentage less often than its clips change: the clip is in the state."""
    job = _job("in_progress", 40).model_copy(update={"num_clips": 300, "clip": 120})
    state = JobState.of(job)
    assert state.event_id == "in_progress.40.0.120" and JobState.parse(state.event_id) == state
    nxt = JobState.of(job.model_copy(update={"clip": 121}))
    assert nxt != state and event_name(state, nxt) == "progress"
    single = JobState.of(_job("in_progress", 40).model_copy(update={"clip": 1}))
    assert single.event_id == "in_progress.40.0"  # one clip: the ids stay as they were
