"""The job manager's API side: submit, read, cancel and delete jobs; start and stop the replica's loops."""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from svdpipe.config import OutputFormat, VideoParams, resolve_params
from svdpipe.errors import QueueFullError, StorageFullError, StoreUnavailableError
from svdpipe.service.config import ServiceConfig
from svdpipe.service.disk import MB, below_floor, clips_work_bytes, free_bytes
from svdpipe.service.events import ChangeSignal
from svdpipe.service.jobs.dispatcher import Dispatcher, EngineLike
from svdpipe.service.jobs.housekeeper import HOUSEKEEPING_S, Housekeeper
from svdpipe.service.jobs.lease_keeper import LeaseKeeper
from svdpipe.service.jobs.local import LocalJobs
from svdpipe.service.jobs.outage import StoreOutage
from svdpipe.service.jobs.outcomes import OutcomeRecorder
from svdpipe.service.metrics import ServiceMetrics
from svdpipe.service.store import TERMINAL, JobRecord, JobStore

logger = logging.getLogger(__name__)

STAGES_EVERY_S = 1.0  # how often the stages' states are refreshed for /v1/health


class QueueFull(QueueFullError):
    """The queue is full; `retry_after_s` is when a slot is likely free."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


def retry_after(completions: Sequence[float]) -> int:
    """Seconds until a queue slot is likely free, from the recent completion times (5 without a rate)."""
    if len(completions) >= 2:
        span = completions[-1] - completions[0]
        rate = (len(completions) - 1) / span if span > 0 else 0.0
        if rate > 0:
            return max(1, min(300, math.ceil(1 / rate)))
    return 5


class JobManager:
    """One replica's worker loop over the shared queue: queued -> in_progress -> completed | failed | cancelled."""

    def __init__(
        self,
        engine: EngineLike,
        store: JobStore,
        config: ServiceConfig,
        metrics: ServiceMetrics | None = None,
        owner: str | None = None,
    ) -> None:
        self.engine, self.store, self.config = engine, store, config
        self.metrics = metrics or ServiceMetrics(enabled=False)
        self.owner = owner or f"replica-{uuid.uuid4().hex[:12]}"  # who holds the leases of this replica's jobs
        self.local = LocalJobs()
        self.outage = StoreOutage()
        self.recorder = OutcomeRecorder(store, self.owner, self.local, self.metrics, self.outage)
        self.dispatcher = Dispatcher(
            engine, store, config, self.owner, self.local, self.recorder, self.metrics, self.outage
        )
        self.lease_keeper = LeaseKeeper(
            store, config, self.owner, self.local, self.recorder, self.dispatcher.stop_local, self.outage
        )
        self.housekeeper = Housekeeper(engine, store, config, self.local, self.metrics, self.outage)
        self._background: list[asyncio.Task] = []
        # The stages' states as the engine last reported them (refreshed every STAGES_EVERY_S): the engine reads
        # them from Ray's control plane, which is not something every health request should wait for.
        self._stages: list[dict[str, Any]] | None = None

    @property
    def changes(self) -> ChangeSignal:
        """Notified on every change made here (event streams wait on it)."""
        return self.local.changes

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Repair what a crash left in the store, then start claiming jobs."""
        recovered = await asyncio.to_thread(self.store.recover, self.config.max_job_attempts)
        if recovered:
            logger.info("%d job(s) waiting in the queue at start-up", len(recovered))
        loop = asyncio.get_running_loop()
        self.local.loop = loop
        await self._refresh_stages()
        self._background = [
            loop.create_task(_forever(self._refresh_stages, STAGES_EVERY_S)),
            loop.create_task(self.dispatcher.run()),
            loop.create_task(_forever(self.lease_keeper.heartbeat_once, self.config.poll_interval_s)),
            loop.create_task(_forever(self.housekeeper.housekeeping_once, HOUSEKEEPING_S)),
        ]

    async def drain(self, grace_s: float) -> None:
        """A graceful stop: claim nothing more, let the running jobs finish for up to `grace_s`, then `stop()`,
        which hands the rest back to the queue with their leases released."""
        self.local.draining = True
        running = list(self.local.tasks.values())
        if running and grace_s > 0:
            logger.info("stopping: waiting up to %.0f s for %d running job(s)", grace_s, len(running))
            await asyncio.wait(running, timeout=grace_s)
        await self.stop()

    async def stop(self) -> None:
        """Stop taking work and put this replica's running jobs back in the queue for another replica (if the
        store is unreachable they stay `in_progress` and are re-queued when their lease expires)."""
        self.local.stopping = True
        for task in self._background:
            task.cancel()
        for task in list(self.local.tasks.values()):
            task.cancel()
        await asyncio.gather(*self._background, *self.local.tasks.values(), return_exceptions=True)
        await self.recorder.flush()
        try:
            released = await asyncio.to_thread(self.store.release, self.owner)
        except StoreUnavailableError:
            logger.warning("job store unreachable at shutdown: this replica's jobs are re-queued once leases expire")
        else:
            if released:
                logger.info("re-queued %d running job(s) for other replicas", released)

    # ---------------------------------------------------------------- API operations

    def submit(self, image_png: bytes, params: VideoParams, output_format: OutputFormat) -> JobRecord:
        """Validate and queue a job. Raises InvalidRequestError, QueueFull, StorageFullError (the data directory
        is below ``min_free_mb`` or full) or StoreUnavailableError. Blocking: the API calls it in a worker thread.
        """
        # max_video_pixels bounds one clip (the engine holds one clip's frames at a time); max_clips bounds how
        # many a video may chain.
        resolved = resolve_params(
            params,
            self.engine.spec,
            self.engine.config.max_video_pixels,
            self.engine.max_decode_chunk,
            max_clips=self.engine.config.max_clips,
        )
        # A job accepted now must be able to store its video: refuse it while the disk is nearly full.
        free = free_bytes(self.config.data_dir)
        if below_floor(free, self.config.min_free_mb):
            raise StorageFullError(
                f"the data directory has {free / MB:.1f} MB free, below the service's floor of "
                f"{self.config.min_free_mb:g} MB; retry later"
            )
        # A long video also needs room for its clips while it runs: not a reservation (jobs accepted together
        # share the room), but a video that cannot fit now is refused now rather than failed after hours.
        clips = resolved.num_clips
        work = clips_work_bytes(clips, resolved.num_frames, resolved.height, resolved.width)
        if work and free - work < self.config.min_free_mb * MB:
            raise StorageFullError(
                f"a video of {clips} clips needs about {work / MB:.0f} MB in the data directory while it runs; "
                f"it has {free / MB:.1f} MB free (floor {self.config.min_free_mb:g} MB); retry later or ask "
                "for fewer clips"
            )
        # The whole shared queue counts. Two replicas may both admit the last slot at the same moment: the
        # bound is exact to within one job per replica, which is what back-pressure needs.
        waiting = self.store.counts()["queued"]
        if waiting >= self.config.max_queue:
            raise QueueFull(
                f"the queue is full ({waiting} jobs waiting); retry later", retry_after(self.local.completions)
            )
        record = JobRecord(
            id=f"video_{uuid.uuid4().hex}",
            status="queued",
            created_at=time.time(),
            seed=resolved.seed,
            parameters=resolved.model_dump(),
            output_format=output_format,
        )
        self.store.create(record, image_png)
        self.local.wake()
        self.metrics.job_status("queued")
        self.changes.notify()
        return record

    def get(self, job_id: str) -> JobRecord | None:
        record = self.store.get(job_id)
        return None if record is None else self.live(record)

    def live(self, record: JobRecord) -> JobRecord:
        """The record with this replica's newest progress of a job it runs (the store's is up to one poll old)."""
        progress = self.local.progress.get(record.id) if record.status == "in_progress" else None
        if progress is None:
            return record
        update: dict[str, Any] = {"progress": progress}
        if record.id in self.local.clips_done:
            update["clips_done"] = self.local.clips_done[record.id]
        return record.model_copy(update=update)

    def queue_positions(self, job_ids: list[str]) -> dict[str, int]:
        """Position in the shared queue (1 = next to start) of each of these jobs that is waiting."""
        return self.store.queue_positions(job_ids)

    def queue_position(self, job_id: str) -> int | None:
        return self.queue_positions([job_id]).get(job_id)

    def cancel(self, job_id: str) -> JobRecord | None:
        """Cancel a queued or running job, wherever it runs (a finished job is returned unchanged). None if unknown.

        The store records the cancel at once; a job running here is stopped now, one running on another replica
        when that replica's next heartbeat sees it.
        """
        record = self.store.get(job_id)
        if record is None or record.status in TERMINAL:
            return record
        progress = self.local.progress.get(job_id)
        fields: dict[str, Any] = {"progress": progress} if progress is not None else {}
        if job_id in self.local.clips_done:
            fields["clips_done"] = self.local.clips_done[job_id]
        cancelled = self.store.finish(job_id, "cancelled", error=None, **fields)
        self.local.call(self.dispatcher.stop_local, job_id)
        if cancelled is not None:
            self.metrics.job_status("cancelled")
        self.changes.notify()
        return cancelled or self.store.get(job_id)

    def delete(self, job_id: str) -> bool:
        """Delete a job and its files, cancelling it first if it is still queued or running."""
        self.cancel(job_id)
        self.local.progress.pop(job_id, None)
        self.local.clips_done.pop(job_id, None)
        deleted = self.store.delete(job_id)
        self.changes.notify()
        return deleted

    async def _refresh_stages(self) -> None:
        self._stages = await self.engine.health()

    async def health(self) -> dict[str, Any]:
        """Stages, queue and free space; ``degraded`` if a stage is down or the data directory is below its floor.

        The stages are as last refreshed (at most ``STAGES_EVERY_S`` old once started); the store and the disk are
        asked in worker threads, so health answers quickly even when they do not."""
        stages = self._stages if self._stages is not None else await self.engine.health()
        free = await asyncio.to_thread(free_bytes, self.config.data_dir)
        counts = await asyncio.to_thread(self.store.counts)
        ok = all(s["state"] == "alive" for s in stages) and not below_floor(free, self.config.min_free_mb)
        return {
            "status": "ok" if ok else "degraded",
            "data_dir_free_mb": round(free / MB, 1),
            "min_free_mb": self.config.min_free_mb,
            "queued": counts["queued"],
            "in_progress": len(self.local.tasks),
            "max_inflight": self.engine.config.max_inflight,
            "max_queue": self.config.max_queue,
            "max_clips": self.engine.config.max_clips,
            "stages": stages,
        }


async def _forever(step: Callable[[], Awaitable[None]], interval_s: float) -> None:
    """Run ``step`` every ``interval_s``; a bug in one round is logged and does not end the loop."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await step()
        except Exception:
            logger.exception("%s failed", getattr(step, "__name__", step))
