"""The job manager: a bounded queue in front of the engine, job state in the store, cancel and recovery.

It keeps `engine.config.max_inflight` jobs inside the pipeline at all times (the engine overlaps them across
stages) and at most `max_queue` more waiting. No torch, no Ray: the engine is anything with the Engine's
`generate` / `cancel` / `health` methods, so this logic is unit-tested with a fake.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections import deque
from typing import Any, Protocol

from svdpipe.config import OutputFormat, ResolvedParams, VideoParams, resolve_params
from svdpipe.errors import (
    InvalidRequestError,
    QueueFullError,
    RequestCancelledError,
    RequestFailedError,
    SvdpipeError,
)
from svdpipe.service.config import ServiceConfig
from svdpipe.service.metrics import ServiceMetrics
from svdpipe.service.store import TERMINAL, JobRecord, JobStore

logger = logging.getLogger(__name__)

_HOUSEKEEPING_S = 1.0
_PURGE_EVERY_S = 600.0


class EngineLike(Protocol):
    """What the job manager needs of the engine."""

    config: Any
    spec: Any
    stats: Any

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


class JobManager:
    """Owns the queue and the job lifecycle: queued -> in_progress -> completed | failed | cancelled."""

    def __init__(
        self, engine: EngineLike, store: JobStore, config: ServiceConfig, metrics: ServiceMetrics | None = None
    ) -> None:
        self.engine, self.store, self.config = engine, store, config
        self.metrics = metrics or ServiceMetrics(enabled=False)
        self._pending: deque[str] = deque()
        self._nonempty = asyncio.Event()
        self._tasks: dict[str, asyncio.Task] = {}  # running jobs
        self._progress: dict[str, int] = {}  # live progress of running jobs (persisted at the end)
        self._completions: deque[float] = deque(maxlen=64)
        self._background: list[asyncio.Task] = []
        self._stopping = False

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Recover jobs left by a previous run, then start the workers."""
        recovered = self.store.recover(self.config.max_job_attempts)
        for record in recovered:
            self._pending.append(record.id)
        if recovered:
            logger.info("re-queued %d job(s) left by a previous run", len(recovered))
            self._nonempty.set()
        loop = asyncio.get_running_loop()
        workers = self.engine.config.max_inflight
        self._background = [loop.create_task(self._worker()) for _ in range(workers)]
        self._background.append(loop.create_task(self._housekeeping()))

    async def stop(self) -> None:
        """Stop taking work; running jobs stay `in_progress` in the store and are re-queued on restart."""
        self._stopping = True
        for task in self._background:
            task.cancel()
        for task in list(self._tasks.values()):
            task.cancel()
        await asyncio.gather(*self._background, *self._tasks.values(), return_exceptions=True)

    # ---------------------------------------------------------------- API operations

    def submit(self, image_png: bytes, params: VideoParams, output_format: OutputFormat) -> JobRecord:
        """Validate and queue a job. Raises InvalidRequestError or QueueFull."""
        resolved = resolve_params(params, self.engine.spec, self.engine.config.num_stages)
        if len(self._pending) >= self.config.max_queue:
            raise QueueFull(f"the queue is full ({len(self._pending)} jobs waiting); retry later", self._retry_after())
        record = JobRecord(
            id=f"video_{uuid.uuid4().hex}",
            status="queued",
            created_at=time.time(),
            seed=resolved.seed,
            parameters=resolved.model_dump(),
            output_format=output_format,
        )
        self.store.create(record, image_png)
        self._pending.append(record.id)
        self._nonempty.set()
        self.metrics.job_status("queued")
        return record

    def get(self, job_id: str) -> JobRecord | None:
        record = self.store.get(job_id)
        return None if record is None else self.live(record)

    def live(self, record: JobRecord) -> JobRecord:
        """The record with a running job's in-memory progress (persisted only when the job ends)."""
        if record.status == "in_progress" and record.id in self._progress:
            return record.model_copy(update={"progress": self._progress[record.id]})
        return record

    def queue_position(self, job_id: str) -> int | None:
        """1 for the next job to enter the pipeline; None when not waiting."""
        try:
            return self._pending.index(job_id) + 1
        except ValueError:
            return None

    def cancel(self, job_id: str) -> JobRecord | None:
        """Cancel a queued or running job (a finished job is returned unchanged). None if unknown."""
        record = self.store.get(job_id)
        if record is None or record.status in TERMINAL:
            return record
        if job_id in self._pending:
            self._pending.remove(job_id)
            return self._finish(job_id, "cancelled", None)
        task = self._tasks.get(job_id)
        if task is not None and not self.engine.cancel(job_id):
            task.cancel()  # not inside the engine yet
        # Cancelled from the client's point of view now; whatever the pipeline still returns is discarded.
        return self._finish(job_id, "cancelled", None)

    def delete(self, job_id: str) -> bool:
        """Delete a job and its files, cancelling it first if it is still queued or running."""
        self.cancel(job_id)
        self._progress.pop(job_id, None)
        return self.store.delete(job_id)

    async def health(self) -> dict[str, Any]:
        stages = await self.engine.health()
        return {
            "status": "ok" if all(s["state"] == "alive" for s in stages) else "degraded",
            "queued": len(self._pending),
            "in_progress": len(self._tasks),
            "max_inflight": self.engine.config.max_inflight,
            "max_queue": self.config.max_queue,
            "stages": stages,
        }

    # ---------------------------------------------------------------- workers

    async def _worker(self) -> None:
        while True:
            while not self._pending:
                self._nonempty.clear()
                await self._nonempty.wait()
            job_id = self._pending.popleft()
            task = asyncio.get_running_loop().create_task(self._run(job_id))
            self._tasks[job_id] = task
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                if self._stopping:  # the worker itself is being stopped
                    task.cancel()
                    raise
                # else only the job was cancelled (before it reached the engine): carry on
            finally:
                self._tasks.pop(job_id, None)
                self._progress.pop(job_id, None)

    async def _run(self, job_id: str) -> None:
        record = self.store.get(job_id)
        if record is None or record.status != "queued":
            return  # deleted or cancelled while waiting
        record = self.store.update(
            job_id, status="in_progress", started_at=time.time(), attempts=record.attempts + 1, progress=0
        )
        self.metrics.job_status("in_progress")
        self._progress[job_id] = 0

        def on_progress(done: int, total: int) -> None:
            self._progress[job_id] = min(99, int(100 * done / total))  # 100 only once the video is stored

        try:
            result = await self.engine.generate(
                self.store.image(job_id),
                ResolvedParams(**record.parameters),
                record.output_format,  # type: ignore[arg-type]
                request_id=job_id,
                on_progress=on_progress,
            )
        except (RequestCancelledError, asyncio.CancelledError):
            if self._stopping:
                raise  # shutting down: the job stays in_progress and is re-queued on restart
            self._finish(job_id, "cancelled", None)
            return
        except (InvalidRequestError, RequestFailedError, SvdpipeError) as exc:
            self._finish(job_id, "failed", str(exc))
            return
        except Exception as exc:
            logger.exception("job %s failed unexpectedly", job_id)
            self._finish(job_id, "failed", f"internal error: {type(exc).__name__}: {exc}")
            return
        current = self.store.get(job_id)
        if current is None or current.status in TERMINAL:
            return  # deleted or cancelled while running
        try:
            self.store.put_content(job_id, result.video.data)
            # How the job ran (nothing of it changes the frames beyond fp32 rounding): kept with its parameters.
            ran = {"latency_mode": self.engine.config.latency_mode, "cfg_split": result.split}
            if result.parareal is not None:
                ran["parareal_iterations"] = result.parareal.iterations
            self.store.update(job_id, parameters={**record.parameters, **ran})
        except KeyError:
            return  # deleted while running
        self._completions.append(time.time())
        self._finish(job_id, "completed", None)
        self.metrics.job_completed(time.time() - record.created_at, result.timings)
        self.metrics.latency_mode(result.split, sum(t.helper_s for t in result.video.trace))

    def _finish(self, job_id: str, status: str, error: str | None) -> JobRecord | None:
        """Move a job to a terminal status, once: the first terminal status wins."""
        current = self.store.get(job_id)
        if current is None or current.status in TERMINAL:
            return current
        fields: dict[str, Any] = {"status": status, "completed_at": time.time(), "error": error}
        if status == "completed":
            fields["progress"] = 100
        elif job_id in self._progress:
            fields["progress"] = self._progress[job_id]
        try:
            record = self.store.update(job_id, **fields)
        except KeyError:
            return None  # deleted meanwhile
        self.metrics.job_status(status)
        return record

    def _retry_after(self) -> int:
        """Seconds until a queue slot is likely free, from the recent completion rate."""
        if len(self._completions) >= 2:
            span = self._completions[-1] - self._completions[0]
            rate = (len(self._completions) - 1) / span if span > 0 else 0.0
            if rate > 0:
                return max(1, min(300, math.ceil(1 / rate)))
        return 5

    async def _housekeeping(self) -> None:
        last_purge = last_log = 0.0
        while True:
            await asyncio.sleep(_HOUSEKEEPING_S)
            now = time.time()
            self.metrics.occupancy(len(self._pending), len(self._tasks))
            summary = self.engine.stats.summary()
            self.metrics.stages(summary)
            if now - last_purge > _PURGE_EVERY_S:
                last_purge = now
                with contextlib.suppress(Exception):
                    purged = self.store.purge_expired(self.config.retention_s)
                    if purged:
                        logger.info("deleted %d job(s) past retention", purged)
            if now - last_log > self.config.progress_log_interval_s and (self._tasks or self._pending):
                last_log = now
                logger.info(
                    "queued %d, in progress %d; stages: %s",
                    len(self._pending),
                    len(self._tasks),
                    ", ".join(
                        f"{s} busy {f['busy_fraction']:.2f} hop {f['hop_ms_p50']:.1f} ms" for s, f in summary.items()
                    ),
                )
