"""The job store's contract (:class:`JobStore`): what the service needs of any backend."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from svdpipe.service.store.records import JobRecord, JobStatus


@runtime_checkable
class JobStore(Protocol):
    """Where the service keeps jobs. Implementations must be safe to call from several threads and, for a shared
    backend, from several processes at once."""

    def create(self, record: JobRecord, image: bytes) -> None:
        """Store a new job and its input image; ``ValueError`` if the id is taken."""
        ...

    def get(self, job_id: str) -> JobRecord | None:
        """The job, or None if unknown."""
        ...

    def update(self, job_id: str, **fields: Any) -> JobRecord:
        """Change some fields of a job and return the new record; ``KeyError`` if unknown."""
        ...

    def list(self, limit: int = 20, after: str | None = None, status: str | None = None) -> list[JobRecord]:
        """Jobs newest first (created_at desc, id desc); ``after``: only jobs after that job in this order."""
        ...

    def delete(self, job_id: str) -> bool:
        """Remove a job with its image and video; False if unknown."""
        ...

    def image(self, job_id: str) -> bytes:
        """The job's input image; ``KeyError`` if unknown."""
        ...

    def put_content(self, job_id: str, data: bytes) -> None:
        """Store the finished video atomically and set ``content_bytes``; ``KeyError`` if unknown."""
        ...

    def put_content_file(self, job_id: str, source: str | Path) -> None:
        """Store the finished video from a file (moved into place, not read into memory; ``source`` is consumed)
        and set ``content_bytes``; ``KeyError`` if unknown."""
        ...

    def work_dir(self, job_id: str) -> Path:
        """The job's work directory for a multi-clip video (under the data directory; not created)."""
        ...

    def remove_work_dir(self, job_id: str) -> bool:
        """Remove the job's work directory; whether there was one."""
        ...

    def remove_orphan_work_dirs(self) -> int:
        """Remove the work directories of finished or unknown jobs; how many."""
        ...

    def content(self, job_id: str) -> bytes | None:
        """The finished video, or None if there is none."""
        ...

    def content_path(self, job_id: str) -> Path | None:
        """The finished video's file (to serve it without reading it into memory), or None if there is none."""
        ...

    def counts(self) -> dict[str, int]:
        """Number of jobs per status, every status present."""
        ...

    def claim(self, owner: str, lease_s: float, now: float | None = None) -> JobRecord | None:
        """Atomically start the oldest queued job for ``owner`` with a lease of ``lease_s``; None if none waits."""
        ...

    def heartbeat(
        self,
        owner: str,
        progress: dict[str, int],
        lease_s: float,
        now: float | None = None,
        clips_done: dict[str, int] | None = None,
    ) -> set[str]:
        """Renew ``owner``'s leases on these jobs and store their progress (and clips done, for those given);
        the ids ``owner`` still holds."""
        ...

    def finish(
        self, job_id: str, status: JobStatus, owner: str | None = None, now: float | None = None, **fields: Any
    ) -> JobRecord | None:
        """Move a job to a terminal status unless it already has one (and, with ``owner``, only if ``owner`` holds
        it); the new record, or None if nothing changed."""
        ...

    def release(self, owner: str) -> int:
        """Re-queue the jobs ``owner`` holds (it is shutting down); how many."""
        ...

    def requeue_expired(self, max_attempts: int, now: float | None = None) -> int:
        """Re-queue (or, after ``max_attempts`` starts, fail) running jobs whose lease expired; how many changed."""
        ...

    def queue_positions(self, job_ids: list[str]) -> dict[str, int]:
        """1-based position in the shared queue (oldest first) of each of these jobs that is queued."""
        ...

    def recover(self, max_attempts: int) -> list[JobRecord]:
        """Repair state at start-up (see the module docstring); the queued jobs, oldest first."""
        ...

    def purge_expired(self, retention_s: float, now: float | None = None) -> int:
        """Delete terminal jobs finished more than ``retention_s`` ago, with their files; how many."""
        ...

    def close(self) -> None:
        """Release the connection; calling it twice is harmless."""
        ...
