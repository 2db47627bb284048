"""The job watch: one store round per interval for all of a replica's event streams, off the event loop."""

from __future__ import annotations

import asyncio
import threading

from svdpipe.errors import StoreUnavailableError
from svdpipe.service.events import ChangeSignal, job_events
from svdpipe.service.watch import JobWatch
from tests.unit.test_events import _job, _parse


class _Store:
    """What the watch reads: a dict of jobs; records which threads read it and how often."""

    def __init__(self, jobs):
        self.jobs = dict(jobs)
        self.calls = 0
        self.threads: set[int] = set()
        self.down = False

    def read_many(self, ids):
        self.calls += 1
        self.threads.add(threading.get_ident())
        if self.down:
            raise StoreUnavailableError("down")
        return {i: self.jobs.get(i) for i in ids}


def _named(job_id, **kw):
    return _job(**kw).model_copy(update={"id": job_id})


def test_many_streams_many_changes_few_store_rounds_and_only_changed_jobs_wake():
    async def scenario():
        store = _Store({"a": _named("a", progress=0), "b": _named("b", progress=0)})
        local = ChangeSignal()
        watch = JobWatch(store.read_many, local, poll_s=10.0, min_gap_s=0.05)
        subs = [watch.subscribe(store.jobs["a" if i % 2 else "b"]) for i in range(200)]
        a, b = subs[1], subs[0]
        a_waiter, b_waiter = a.changes.waiter(), b.changes.waiter()
        task = asyncio.create_task(watch.run())
        for pct in range(1, 51):  # 50 progress updates of job a, as fast as they come
            store.jobs["a"] = _named("a", progress=pct)
            local.notify()
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.2)
        task.cancel()
        return store, watch, a, a_waiter.is_set(), b_waiter.is_set()

    store, watch, a, a_woken, b_woken = asyncio.run(scenario())
    assert watch.watched == 2  # 200 streams, two jobs: each round reads two jobs
    assert 1 <= store.calls <= 10  # coalesced: far fewer rounds than the 50 changes x 200 streams
    assert threading.get_ident() not in store.threads  # never on the event loop's thread
    assert a.read().progress == 50 and a_woken and not b_woken


def test_unsubscribe_forgets_a_job_once_its_last_stream_ends():
    store = _Store({"a": _named("a")})
    watch = JobWatch(store.read_many, ChangeSignal(), poll_s=1.0)
    watch.subscribe(store.jobs["a"])
    watch.subscribe(store.jobs["a"])
    watch.unsubscribe("a")
    assert watch.watched == 1
    watch.unsubscribe("a")
    assert watch.watched == 0


def test_an_outage_keeps_the_snapshot_and_a_deletion_ends_the_stream():
    async def scenario():
        store = _Store({"a": _named("a", status="queued", queue_position=1)})
        watch = JobWatch(store.read_many, ChangeSignal(), poll_s=0.01, min_gap_s=0.0)
        watched = watch.subscribe(store.jobs["a"])
        store.down = True
        await watch.refresh()
        kept = watched.read()
        store.down = False
        task = asyncio.create_task(watch.run())
        del store.jobs["a"]
        text = "".join([c async for c in job_events(watched.read, watched.changes, poll_s=0.01)])
        task.cancel()
        return kept, text

    kept, text = asyncio.run(scenario())
    assert kept is not None and kept.status == "queued"
    assert [e["event"] for e in _parse(text)] == ["status", "error"]


def test_change_signal_notified_from_a_worker_thread_wakes_the_loop():
    async def scenario():
        signal = ChangeSignal()
        waiter = signal.waiter()
        await asyncio.to_thread(signal.notify)
        await asyncio.wait_for(waiter.wait(), 5)
        return waiter.is_set(), signal.waiter().is_set()

    assert asyncio.run(scenario()) == (True, False)


def test_local_progress_reaches_streams_at_every_step_without_store_rounds():
    async def scenario():
        store = _Store({"a": _named("a", progress=0)})
        local, live = ChangeSignal(), {"a": 0}
        watch = JobWatch(store.read_many, local, poll_s=10.0, min_gap_s=0.0, local_progress=live.get)
        watched = watch.subscribe(store.jobs["a"])
        task = asyncio.create_task(watch.run())
        await asyncio.sleep(0.01)
        rounds_before = store.calls
        seen = []
        for step in range(1, 11):
            waiter = watched.changes.waiter()
            live["a"] = 10 * step
            local.notify(progress_only=True)
            await asyncio.wait_for(waiter.wait(), 5)
            seen.append(watched.read().progress)
        # A store round that read an older progress does not take a step back.
        store.jobs["a"] = _named("a", progress=30)
        await watch.refresh()
        task.cancel()
        return seen, store.calls - rounds_before, watched.read().progress

    seen, store_rounds, after_stale_round = asyncio.run(scenario())
    assert seen == [10 * s for s in range(1, 11)]
    assert store_rounds == 1  # only the explicit refresh: steps cost no store call
    assert after_stale_round == 100


def test_a_progress_only_change_does_not_wake_waiters_for_other_changes():
    async def scenario():
        signal = ChangeSignal()
        anything, moved = signal.waiter(), signal.waiter(progress=False)
        signal.notify(progress_only=True)
        first = (anything.is_set(), moved.is_set())
        signal.notify()
        return first, moved.is_set()

    assert asyncio.run(scenario()) == ((True, False), True)


def test_local_clip_of_a_long_video_reaches_streams_with_its_progress():
    async def scenario():
        job = _named("a", progress=0).model_copy(update={"num_clips": 3, "clip": 1})
        store = _Store({"a": job})
        local, progress, clips = ChangeSignal(), {"a": 0}, {"a": 0}
        watch = JobWatch(
            store.read_many, local, poll_s=10.0, min_gap_s=0.0, local_progress=progress.get, local_clips=clips.get
        )
        watched = watch.subscribe(job)
        task = asyncio.create_task(watch.run())
        await asyncio.sleep(0.01)
        seen = []
        for step in range(1, 7):  # 3 clips x 2 steps
            waiter = watched.changes.waiter()
            progress["a"], clips["a"] = min(99, 100 * step // 6), min(step // 2, 2)
            local.notify(progress_only=True)
            await asyncio.wait_for(waiter.wait(), 5)
            seen.append((watched.read().clip, watched.read().clips_done))
        store.jobs["a"] = job.model_copy(update={"progress": 50, "clips_done": 1, "clip": 2})  # an older round
        await watch.refresh()
        stale = watched.read()
        store.jobs["a"] = job.model_copy(update={"progress": 99, "clips_done": 1, "clip": 2})  # same percentage
        await watch.refresh()
        task.cancel()
        return seen, stale, watched.read()

    seen, stale, same_percentage = asyncio.run(scenario())
    assert seen == [(1, 0), (2, 1), (2, 1), (3, 2), (3, 2), (3, 2)]
    assert (stale.progress, stale.clip) == (99, 3)  # not taken back
    assert (same_percentage.progress, same_percentage.clip) == (99, 3)
