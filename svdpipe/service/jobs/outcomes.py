"""Recording how jobs ended, and keeping the outcomes the store missed while it was unreachable."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from svdpipe.errors import StorageFullError, StoreUnavailableError
from svdpipe.service.jobs.local import LocalJobs
from svdpipe.service.jobs.outage import StoreOutage
from svdpipe.service.metrics import ServiceMetrics
from svdpipe.service.store import JobStatus, JobStore

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """How a job ended on this replica, kept until the store has recorded it."""

    status: JobStatus
    error: str | None = None
    video: bytes | None = None
    video_path: str | None = None  # the finished video as a file (multi-clip jobs), moved into the store
    started_at: float = 0.0
    created_at: float = 0.0
    timings: Any = None
    parameters: dict[str, Any] | None = None  # the job's parameters with how it ran (completed jobs)


class OutcomeRecorder:
    """Writes a job's end to the store; while the store is down, keeps it in memory until it is back."""

    def __init__(
        self, store: JobStore, owner: str, local: LocalJobs, metrics: ServiceMetrics, outage: StoreOutage
    ) -> None:
        self.store, self.owner, self.local, self.metrics, self.outage = store, owner, local, metrics, outage
        self.unrecorded: dict[str, Outcome] = {}  # finished here, not yet in the store (it was unreachable)

    async def record(self, job_id: str, outcome: Outcome) -> None:
        """Write a job's end to the store (in a worker thread: the event loop never waits on the store or the
        disk), or keep it (with its lease renewed) until the store is back."""
        try:
            await asyncio.to_thread(self._write, job_id, outcome)
        except StoreUnavailableError as exc:
            self.outage.failed(exc)
            self.unrecorded[job_id] = outcome
            logger.warning("job %s %s; the store is unreachable, recording it when it is back", job_id, outcome.status)
            return
        except StorageFullError as exc:
            # Not even the failure could be written (SQLite's file is on the full disk): the job's lease runs out
            # and it is re-queued (or, after max_job_attempts, failed) once the store can be written again.
            logger.error("job %s %s but could not be recorded: %s", job_id, outcome.status, exc)
            return
        self.local.changes.notify()

    def _write(self, job_id: str, outcome: Outcome) -> None:
        if outcome.status == "completed":
            current = self.store.get(job_id)
            if current is None or current.status != "in_progress" or current.owner != self.owner:
                return  # cancelled, deleted or re-queued meanwhile: the video is not wanted from here
            try:
                if outcome.video_path is not None:
                    self.store.put_content_file(job_id, outcome.video_path)
                else:
                    self.store.put_content(job_id, outcome.video or b"")
            except KeyError:
                return  # deleted meanwhile
            except StorageFullError as exc:
                # No partial file is left (the write goes to a temporary file that is removed); the job fails
                # with the reason, rather than waiting, holding its video in memory, for space that may not come.
                logger.error("job %s: its video could not be stored: %s", job_id, exc)
                error = f"the finished video could not be stored: {exc}; please submit the job again"
                if self.store.finish(job_id, "failed", owner=self.owner, error=error) is not None:
                    self.metrics.job_status("failed")
                return
            extra: dict[str, Any] = {"parameters": outcome.parameters} if outcome.parameters is not None else {}
            if outcome.parameters is not None:
                extra["clips_done"] = int(outcome.parameters.get("num_clips", 1))
            record = self.store.finish(job_id, "completed", owner=self.owner, progress=100, error=None, **extra)
            if record is not None:
                now = time.time()
                self.local.completions.append(now)
                self.metrics.job_status("completed")
                self.metrics.job_completed(now - outcome.created_at, outcome.timings)
            return
        fields: dict[str, Any] = {"error": outcome.error}
        if job_id in self.local.progress:
            fields["progress"] = self.local.progress[job_id]
        if job_id in self.local.clips_done:
            fields["clips_done"] = self.local.clips_done[job_id]
        if self.store.finish(job_id, outcome.status, owner=self.owner, **fields) is not None:
            self.metrics.job_status(outcome.status)

    async def flush(self) -> None:
        """Record the outcomes the store missed while it was down, oldest first; stop at the first failure."""
        for job_id, outcome in list(self.unrecorded.items()):
            try:
                await asyncio.to_thread(self._write, job_id, outcome)
            except StoreUnavailableError as exc:
                self.outage.failed(exc)
                return
            self.unrecorded.pop(job_id, None)
            self.local.changes.notify()
            logger.info("recorded job %s (%s) now that the store is back", job_id, outcome.status)
