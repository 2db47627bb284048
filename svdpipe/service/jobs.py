"""The job manager: one replica's side of the shared job queue, between the job store and its stage engine.

Jobs wait in the store's queue, which every replica shares. A manager claims the oldest queued job whenever its
pipeline has a free slot (`engine.config.max_inflight` jobs inside the pipeline at once; the engine overlaps
them across stages), holds a lease on each job it runs and renews it every `poll_interval_s`, together with the
job's progress. The same heartbeat tells it which of its jobs were cancelled or deleted through another
replica, so it stops them within about one poll interval; a job whose replica died is re-queued by any replica
once the lease expires. If the store is unreachable, running jobs carry on, their results wait in memory, and
they are recorded when the store is back.

No torch, no Ray: the engine is anything with the Engine's `generate` / `cancel` / `health` methods, so this
logic is unit-tested with a fake.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

from svdpipe.config import OutputFormat, ResolvedParams, VideoParams, resolve_params
from svdpipe.errors import (
    InvalidRequestError,
    QueueFullError,
    RequestCancelledError,
    RequestFailedError,
    StoreUnavailableError,
    SvdpipeError,
)
from svdpipe.service.config import ServiceConfig
from svdpipe.service.events import ChangeSignal
from svdpipe.service.metrics import ServiceMetrics
from svdpipe.service.store import TERMINAL, JobRecord, JobStatus, JobStore

logger = logging.getLogger(__name__)

_HOUSEKEEPING_S = 1.0
_PURGE_EVERY_S = 600.0
_OUTAGE_LOG_EVERY_S = 10.0


class EngineLike(Protocol):
    """What the job manager needs of the engine."""

    config: Any
    spec: Any
    stats: Any
    max_decode_chunk: int | None  # GPU actors: the largest decode chunk that fits ('auto' requests)

    async def generate(
        self,
        image_png: bytes,
        params: VideoParams | ResolvedParams,
        output_format: OutputFormat = "mp4",
        request_id: str | None = None,
        on_progress: Any = None,
        timeout_s: float | None = None,
    ) -> Any: ...

    def cancel(self, request_id: str) -> bool: ...

    async def health(self) -> list[dict[str, Any]]: ...


class QueueFull(QueueFullError):
    """The queue is full; `retry_after_s` is when a slot is likely free."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class _Outcome:
    """How a job ended on this replica, kept until the store has recorded it."""

    status: JobStatus
    error: str | None = None
    video: bytes | None = None
    started_at: float = 0.0
    created_at: float = 0.0
    timings: Any = None
    parameters: dict[str, Any] | None = None  # the job's parameters with how it ran (completed jobs)


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
        self._wakeup = asyncio.Event()  # a slot freed up or a job was submitted here: claim now, not at next poll
        self._tasks: dict[str, asyncio.Task] = {}  # jobs running here
        self._progress: dict[str, int] = {}  # live progress of running jobs (stored with every heartbeat)
        self._unrecorded: dict[str, _Outcome] = {}  # finished here, not yet in the store (it was unreachable)
        self._completions: deque[float] = deque(maxlen=64)
        self._background: list[asyncio.Task] = []
        self._stopping = False
        # Notified on every status, queue or progress change made here (event streams wait on it; they also poll
        # the store, for changes made by other replicas).
        self.changes = ChangeSignal()
        self._store_down_since: float | None = None
        self._last_outage_log = self._last_purge = self._last_log = 0.0

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Repair what a crash left in the store, then start claiming jobs."""
        recovered = self.store.recover(self.config.max_job_attempts)
        if recovered:
            logger.info("%d job(s) waiting in the queue at start-up", len(recovered))
        loop = asyncio.get_running_loop()
        self._background = [
            loop.create_task(self._dispatch()),
            loop.create_task(self._forever(self._heartbeat_once, self.config.poll_interval_s)),
            loop.create_task(self._forever(self._housekeeping_once, _HOUSEKEEPING_S)),
        ]

    async def stop(self) -> None:
        """Stop taking work and put this replica's running jobs back in the queue for another replica (if the
        store is unreachable they stay `in_progress` and are re-queued when their lease expires)."""
        self._stopping = True
        for task in self._background:
            task.cancel()
        for task in list(self._tasks.values()):
            task.cancel()
        await asyncio.gather(*self._background, *self._tasks.values(), return_exceptions=True)
        self._flush_outcomes()
        try:
            released = self.store.release(self.owner)
        except StoreUnavailableError:
            logger.warning("job store unreachable at shutdown: this replica's jobs are re-queued once leases expire")
        else:
            if released:
                logger.info("re-queued %d running job(s) for other replicas", released)

    # ---------------------------------------------------------------- API operations

    def submit(self, image_png: bytes, params: VideoParams, output_format: OutputFormat) -> JobRecord:
        """Validate and queue a job. Raises InvalidRequestError, QueueFull or StoreUnavailableError."""
        resolved = resolve_params(params, self.engine.spec, self.engine.max_decode_chunk)
        # The whole shared queue counts. Two replicas may both admit the last slot at the same moment: the
        # bound is exact to within one job per replica, which is what back-pressure needs.
        waiting = self.store.counts()["queued"]
        if waiting >= self.config.max_queue:
            raise QueueFull(f"the queue is full ({waiting} jobs waiting); retry later", self._retry_after())
        record = JobRecord(
            id=f"video_{uuid.uuid4().hex}",
            status="queued",
            created_at=time.time(),
            seed=resolved.seed,
            parameters=resolved.model_dump(),
            output_format=output_format,
        )
        self.store.create(record, image_png)
        self._wakeup.set()
        self.metrics.job_status("queued")
        self.changes.notify()
        return record

    def get(self, job_id: str) -> JobRecord | None:
        record = self.store.get(job_id)
        return None if record is None else self.live(record)

    def live(self, record: JobRecord) -> JobRecord:
        """The record with this replica's newest progress of a job it runs (the store's is up to one poll old)."""
        if record.status == "in_progress" and record.id in self._progress:
            return record.model_copy(update={"progress": self._progress[record.id]})
        return record

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
        fields = {"progress": self._progress[job_id]} if job_id in self._progress else {}
        cancelled = self.store.finish(job_id, "cancelled", error=None, **fields)
        self._stop_local(job_id)
        if cancelled is not None:
            self.metrics.job_status("cancelled")
        self.changes.notify()
        return cancelled or self.store.get(job_id)

    def delete(self, job_id: str) -> bool:
        """Delete a job and its files, cancelling it first if it is still queued or running."""
        self.cancel(job_id)
        self._progress.pop(job_id, None)
        deleted = self.store.delete(job_id)
        self.changes.notify()
        return deleted

    async def health(self) -> dict[str, Any]:
        stages = await self.engine.health()
        return {
            "status": "ok" if all(s["state"] == "alive" for s in stages) else "degraded",
            "queued": self.store.counts()["queued"],
            "in_progress": len(self._tasks),
            "max_inflight": self.engine.config.max_inflight,
            "max_queue": self.config.max_queue,
            "stages": stages,
        }

    # ---------------------------------------------------------------- claiming and running

    async def _dispatch(self) -> None:
        """Claim the oldest queued job whenever the pipeline has a free slot."""
        while True:
            record = None
            self._wakeup.clear()  # before the claim: a submit during it must still wake the next wait
            if len(self._tasks) < self.engine.config.max_inflight:
                try:
                    record = self.store.claim(self.owner, self.config.lease_s)
                    self._store_ok()
                except StoreUnavailableError as exc:
                    self._store_failed(exc)
                except Exception:
                    logger.exception("claiming a job failed")
            if record is None:
                # Sleep until woken or the next poll (other replicas' jobs). asyncio.wait, not wait_for: in
                # Python 3.11 wait_for can swallow a cancel that arrives as the event fires, and stop() hangs.
                waiter = asyncio.ensure_future(self._wakeup.wait())
                try:
                    await asyncio.wait({waiter}, timeout=self.config.poll_interval_s)
                finally:
                    waiter.cancel()
                continue
            self.metrics.job_status("in_progress")
            self._progress[record.id] = 0
            self.changes.notify()  # it started, and every job behind it moved up
            task = asyncio.get_running_loop().create_task(self._run(record))
            self._tasks[record.id] = task
            task.add_done_callback(lambda _t, job_id=record.id: self._done(job_id))

    def _done(self, job_id: str) -> None:
        self._tasks.pop(job_id, None)
        self._progress.pop(job_id, None)
        self._wakeup.set()

    def _stop_local(self, job_id: str) -> None:
        """Stop a job running here (cancelled or deleted, here or through another replica)."""
        task = self._tasks.get(job_id)
        if task is not None and not self.engine.cancel(job_id):
            task.cancel()  # not inside the engine yet

    async def _run(self, record: JobRecord) -> None:
        job_id = record.id

        def on_progress(done: int, total: int) -> None:
            self._progress[job_id] = min(99, int(100 * done / total))  # 100 only once the video is stored
            self.changes.notify()

        ended = {"started_at": record.started_at or time.time(), "created_at": record.created_at}
        try:
            image = self.store.image(job_id)
            result = await self.engine.generate(
                image,
                ResolvedParams(**record.parameters),
                record.output_format,  # type: ignore[arg-type]
                request_id=job_id,
                on_progress=on_progress,
            )
        except (RequestCancelledError, asyncio.CancelledError):
            if self._stopping:
                raise  # shutting down: stop() re-queues the job for another replica
            self._record(job_id, _Outcome("cancelled", **ended))
            return
        except KeyError:
            return  # deleted before it started
        except StoreUnavailableError as exc:
            # Could not read the input: give the job back rather than fail it for our outage.
            logger.warning(
                "job %s: job store unreachable before start (%s); it is re-queued when its lease ends", job_id, exc
            )
            return
        except (InvalidRequestError, RequestFailedError, SvdpipeError) as exc:
            self._record(job_id, _Outcome("failed", str(exc), **ended))
            return
        except Exception as exc:
            logger.exception("job %s failed unexpectedly", job_id)
            self._record(job_id, _Outcome("failed", f"internal error: {type(exc).__name__}: {exc}", **ended))
            return
        # How the job ran (nothing of it changes the frames beyond fp32 rounding): kept with its parameters.
        ran: dict[str, Any] = {"latency_mode": self.engine.config.latency_mode, "cfg_split": result.split}
        if result.parareal is not None:  # issue 13: iterations, UNet evaluations in total, final change
            ran["parareal_iterations"] = result.parareal.iterations
            ran["parareal_unet_evals"] = result.parareal.unet_evals
            ran["parareal_final_change"] = result.parareal.final_change
        self.metrics.latency_mode(result.split, sum(t.helper_s for t in result.video.trace))
        self._record(
            job_id,
            _Outcome(
                "completed",
                video=result.video.data,
                timings=result.timings,
                parameters={**record.parameters, **ran},
                **ended,
            ),
        )

    def _record(self, job_id: str, outcome: _Outcome) -> None:
        """Write a job's end to the store, or keep it (with its lease renewed) until the store is back."""
        try:
            self._write_outcome(job_id, outcome)
        except StoreUnavailableError as exc:
            self._store_failed(exc)
            self._unrecorded[job_id] = outcome
            logger.warning("job %s %s; the store is unreachable, recording it when it is back", job_id, outcome.status)
            return
        self.changes.notify()

    def _write_outcome(self, job_id: str, outcome: _Outcome) -> None:
        if outcome.status == "completed":
            current = self.store.get(job_id)
            if current is None or current.status != "in_progress" or current.owner != self.owner:
                return  # cancelled, deleted or re-queued meanwhile: the video is not wanted from here
            try:
                self.store.put_content(job_id, outcome.video or b"")
            except KeyError:
                return  # deleted meanwhile
            extra = {"parameters": outcome.parameters} if outcome.parameters is not None else {}
            record = self.store.finish(job_id, "completed", owner=self.owner, progress=100, error=None, **extra)
            if record is not None:
                now = time.time()
                self._completions.append(now)
                self.metrics.job_status("completed")
                self.metrics.job_completed(now - outcome.created_at, outcome.timings)
            return
        fields: dict[str, Any] = {"error": outcome.error}
        if job_id in self._progress:
            fields["progress"] = self._progress[job_id]
        if self.store.finish(job_id, outcome.status, owner=self.owner, **fields) is not None:
            self.metrics.job_status(outcome.status)

    def _flush_outcomes(self) -> None:
        """Record the outcomes the store missed while it was down, oldest first; stop at the first failure."""
        for job_id, outcome in list(self._unrecorded.items()):
            try:
                self._write_outcome(job_id, outcome)
            except StoreUnavailableError as exc:
                self._store_failed(exc)
                return
            del self._unrecorded[job_id]
            self.changes.notify()
            logger.info("recorded job %s (%s) now that the store is back", job_id, outcome.status)

    # ---------------------------------------------------------------- leases, cancels from elsewhere, upkeep

    @staticmethod
    async def _forever(step: Any, interval_s: float) -> None:
        """Run ``step`` every ``interval_s``; a bug in one round is logged and does not end the loop."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                step()
            except Exception:
                logger.exception("%s failed", step.__name__)

    def _heartbeat_once(self) -> None:
        """Renew leases and store progress; stop jobs that were cancelled or deleted through another replica."""
        progress = {**{j: 99 for j in self._unrecorded}, **self._progress}
        if not progress:
            return
        try:
            held = self.store.heartbeat(self.owner, progress, self.config.lease_s)
            self._store_ok()
        except StoreUnavailableError as exc:
            self._store_failed(exc)
            return  # jobs keep running; their leases are renewed once the store answers again
        for job_id in progress.keys() - held:
            if job_id in self._unrecorded:
                del self._unrecorded[job_id]  # cancelled, deleted or re-run elsewhere meanwhile
            elif job_id in self._tasks:
                logger.info("job %s was cancelled or deleted through another replica: stopping it", job_id)
                self._stop_local(job_id)
        self._flush_outcomes()

    def _store_ok(self) -> None:
        if self._store_down_since is not None:
            logger.info("job store reachable again after %.1f s", time.time() - self._store_down_since)
            self._store_down_since = None

    def _store_failed(self, exc: Exception) -> None:
        now = time.time()
        if self._store_down_since is None:
            self._store_down_since = now
        if now - self._last_outage_log > _OUTAGE_LOG_EVERY_S:
            self._last_outage_log = now
            logger.warning("job store unreachable for %.0f s: %s", now - self._store_down_since, exc)

    def _retry_after(self) -> int:
        """Seconds until a queue slot is likely free, from the recent completion rate."""
        if len(self._completions) >= 2:
            span = self._completions[-1] - self._completions[0]
            rate = (len(self._completions) - 1) / span if span > 0 else 0.0
            if rate > 0:
                return max(1, min(300, math.ceil(1 / rate)))
        return 5

    def _housekeeping_once(self) -> None:
        now = time.time()
        summary = self.engine.stats.summary()
        self.metrics.stages(summary)
        try:
            # Any replica re-queues the jobs of a dead one; the store makes it safe to do so concurrently.
            self.store.requeue_expired(self.config.max_job_attempts)
            queued = self.store.counts()["queued"]
            if now - self._last_purge > _PURGE_EVERY_S:
                self._last_purge = now
                purged = self.store.purge_expired(self.config.retention_s)
                if purged:
                    logger.info("deleted %d job(s) past retention", purged)
        except StoreUnavailableError as exc:
            self._store_failed(exc)
            return
        self.metrics.occupancy(queued, len(self._tasks))
        if now - self._last_log > self.config.progress_log_interval_s and (self._tasks or queued):
            self._last_log = now
            logger.info(
                "queued %d (all replicas), in progress here %d; stages: %s",
                queued,
                len(self._tasks),
                ", ".join(
                    f"{s} busy {f['busy_fraction']:.2f} hop {f['hop_ms_p50']:.1f} ms" for s, f in summary.items()
                ),
            )
