"""The replica's job watch: one reader of the store for all of its event streams.

Each event stream (GET /v1/videos/{id}/events) subscribes to its job here. One task per replica reads every
watched job from the store in one round, in a worker thread, once per poll interval (changes made by other
replicas) and soon after a change of status or queue made here (coalesced: at most one round per
`min_gap_s`), and wakes only the streams whose job changed. The progress of jobs running on this replica needs
no store round: it is copied into their snapshots at each step, so streams still see every step. A stream
never touches the store: it reads its job's latest snapshot. So 200 streams cost one store round per interval,
not 200, and no store call runs on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from svdpipe.errors import StoreUnavailableError
from svdpipe.service.events import ChangeSignal
from svdpipe.service.schemas import VideoJob, clip_in_progress

logger = logging.getLogger(__name__)

ReadMany = Callable[[list[str]], dict[str, VideoJob | None]]


class Watched:
    """One job's latest snapshot (None once deleted) and the signal its streams wait on."""

    def __init__(self, job: VideoJob | None) -> None:
        self.job = job
        self.changes = ChangeSignal()
        self.streams = 0

    def read(self) -> VideoJob | None:
        return self.job


class JobWatch:
    """Fans the store's view of watched jobs out to their event streams; `run()` is the replica's one reader."""

    def __init__(
        self,
        read_many: ReadMany,
        local_changes: ChangeSignal,
        poll_s: float,
        min_gap_s: float = 0.05,
        local_progress: Callable[[str], int | None] | None = None,
        local_clips: Callable[[str], int | None] | None = None,
    ) -> None:
        self.read_many = read_many  # blocking: called in a worker thread
        self.local_changes = local_changes
        self.local_progress = local_progress  # the live progress of a job running here, else None
        self.local_clips = local_clips  # the live clips done of a multi-clip job running here, else None
        self.poll_s, self.min_gap_s = poll_s, min_gap_s
        self._watched: dict[str, Watched] = {}
        self.rounds = 0  # store rounds so far (tests and logs)

    def subscribe(self, job: VideoJob) -> Watched:
        """Watch ``job`` (as just read by the caller); pair with :meth:`unsubscribe`."""
        watched = self._watched.get(job.id)
        if watched is None:
            watched = self._watched[job.id] = Watched(job)
        watched.streams += 1
        return watched

    def unsubscribe(self, job_id: str) -> None:
        watched = self._watched.get(job_id)
        if watched is not None:
            watched.streams -= 1
            if watched.streams <= 0:
                del self._watched[job_id]

    @property
    def watched(self) -> int:
        """How many jobs have a stream open."""
        return len(self._watched)

    async def refresh(self) -> None:
        """One round: read every watched job (in a worker thread) and wake the streams of those that changed."""
        ids = list(self._watched)
        if not ids:
            return
        try:
            jobs = await asyncio.to_thread(self.read_many, ids)
        except StoreUnavailableError:
            return  # streams keep their last snapshot; the next round asks again
        self.rounds += 1
        for job_id, job in jobs.items():
            watched = self._watched.get(job_id)
            if watched is not None:
                self._update(watched, _not_behind(job, watched.job))

    def overlay_local_progress(self) -> None:
        """Copy the live progress of jobs running here into their snapshots (no store call)."""
        if self.local_progress is None:
            return
        for job_id, watched in self._watched.items():
            job = watched.job
            progress = self.local_progress(job_id)
            if job is None or job.status != "in_progress" or progress is None or progress < job.progress:
                continue
            update: dict[str, object] = {"progress": progress}
            clips_done = self.local_clips(job_id) if self.local_clips is not None else None
            if clips_done is not None and clips_done >= job.clips_done:  # a long video's next clip, maybe
                update["clips_done"] = clips_done  # before the percentage of its many steps moves
                update["clip"] = clip_in_progress(job.status, clips_done, job.num_clips)
            self._update(watched, job.model_copy(update=update))

    @staticmethod
    def _update(watched: Watched, job: VideoJob | None) -> None:
        if job != watched.job:
            watched.job = job
            watched.changes.notify()

    async def run(self) -> None:
        """Refresh once per ``poll_s`` and ``min_gap_s`` after a change (not of progress alone) made on this
        replica, and copy local progress at every change; until cancelled."""
        overlay = asyncio.create_task(self._overlay_forever())
        try:
            await self._rounds_forever()
        finally:
            overlay.cancel()

    async def _overlay_forever(self) -> None:
        while True:
            await self.local_changes.waiter().wait()
            self.overlay_local_progress()

    async def _rounds_forever(self) -> None:
        while True:
            changed = self.local_changes.waiter(progress=False)
            try:
                await self.refresh()
            except Exception:
                logger.exception("reading watched jobs failed")
            # asyncio.wait, not wait_for: on Python 3.11 wait_for can swallow a cancel that lands as the event fires.
            waiter = asyncio.ensure_future(changed.wait())
            try:
                await asyncio.wait({waiter}, timeout=self.poll_s)
            finally:
                waiter.cancel()
            await asyncio.sleep(self.min_gap_s)  # progress of many jobs at once: one round for all of it


def _not_behind(job: VideoJob | None, shown: VideoJob | None) -> VideoJob | None:
    """``job`` as read, but never with less progress than a running job's snapshot already shows (a round that
    started before the latest step must not take it back)."""
    if job is None or shown is None or job.status != "in_progress" or shown.status != "in_progress":
        return job
    if (job.progress, job.clips_done) >= (shown.progress, shown.clips_done):
        return job
    return job.model_copy(update={"progress": shown.progress, "clips_done": shown.clips_done, "clip": shown.clip})
