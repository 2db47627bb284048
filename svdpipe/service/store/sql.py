"""The shared SQL queue: all of the job store's logic, written once for every SQL backend (:class:`SQLJobStore`)."""

from __future__ import annotations

import abc
import contextlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from svdpipe.service.store.files import STALE_TMP_S, TMP_SUFFIX, fsync_dir, stage_file, write_tmp
from svdpipe.service.store.records import (
    FORMAT_RE,
    MISSING_IMAGE_ERROR,
    MISSING_VIDEO_ERROR,
    RESTART_ERROR,
    STATUSES,
    TERMINAL,
    JobRecord,
    JobStatus,
    is_valid_job_id,
    validate_job_id,
)

logger = logging.getLogger(__name__)

_COLUMNS: tuple[str, ...] = tuple(JobRecord.model_fields)
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM jobs"


class SQLJobStore(abc.ABC):
    """The :class:`JobStore` logic shared by the SQL backends: records in a ``jobs`` table, files under ``data_dir``.

    SQL is written once, with ``?`` placeholders; a backend supplies the connection (:meth:`_transaction` and
    :meth:`_reading`, yielding something with DB-API ``execute``), recognises a duplicate key
    (:meth:`_is_duplicate`) and says how rows are locked for a read-modify-write (``_FOR_UPDATE``) and how the
    claim skips rows other claimers hold (``_SKIP_LOCKED``). SQLite needs neither: it has one writer at a time.
    """

    _FOR_UPDATE = ""
    _SKIP_LOCKED = ""

    def __init__(self, data_dir: str | Path) -> None:
        self.data_dir = Path(data_dir)
        self.inputs_dir = self.data_dir / "inputs"
        self.videos_dir = self.data_dir / "videos"
        self.clips_dir = self.data_dir / "clips"  # work directories of multi-clip jobs (finished clips, to resume)
        for d in (self.data_dir, self.inputs_dir, self.videos_dir):
            d.mkdir(parents=True, exist_ok=True)

    # -- what a backend provides ------------------------------------------------------------------------------

    @abc.abstractmethod
    def _transaction(self) -> contextlib.AbstractContextManager[Any]:
        """A write transaction: commit on success, roll back on error."""

    @abc.abstractmethod
    def _reading(self) -> contextlib.AbstractContextManager[Any]:
        """A connection for reads (may be the same as a transaction)."""

    @abc.abstractmethod
    def _is_duplicate(self, exc: BaseException) -> bool:
        """Whether ``exc`` is the driver's unique-key violation."""

    def _now(self, conn: Any) -> float:
        """The database's clock, in seconds since the epoch: leases are compared with it, so replicas whose own
        clocks disagree still agree on when a lease expires. SQLite's clock is this host's clock (the database
        is a file on it), so the base class reads that; PostgreSQL asks the server."""
        return time.time()

    @abc.abstractmethod
    def close(self) -> None:
        """Release the connection; calling it twice is harmless."""

    def __enter__(self) -> SQLJobStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing ---------------------------------------------------------------------------------------------

    def _image_path(self, job_id: str) -> Path:
        return self.inputs_dir / validate_job_id(job_id)

    def _video_path(self, job_id: str, output_format: str) -> Path:
        if FORMAT_RE.fullmatch(output_format) is None:
            raise ValueError(f"invalid output format {output_format!r}")
        return self.videos_dir / f"{validate_job_id(job_id)}.{output_format}"

    @staticmethod
    def _row(record: JobRecord) -> tuple[Any, ...]:
        data = record.model_dump()
        data["parameters"] = json.dumps(data["parameters"])
        data["seed"] = str(data["seed"])  # TEXT: seeds up to 2**64 - 1 do not fit a 64-bit signed INTEGER
        return tuple(data[c] for c in _COLUMNS)

    @staticmethod
    def _record(row: Any) -> JobRecord:
        data = dict(zip(_COLUMNS, row, strict=True))
        data["parameters"] = json.loads(data["parameters"])
        data["seed"] = int(data["seed"])
        return JobRecord.model_validate(data)

    def _fetch(self, conn: Any, job_id: str, lock: bool = False) -> JobRecord | None:
        sql = f"{_SELECT} WHERE id = ?" + (self._FOR_UPDATE if lock else "")
        row = conn.execute(sql, (job_id,)).fetchone()
        return None if row is None else self._record(row)

    def _write(self, conn: Any, record: JobRecord) -> None:
        sets = ", ".join(f"{c} = ?" for c in _COLUMNS[1:])
        conn.execute(f"UPDATE jobs SET {sets} WHERE id = ?", (*self._row(record)[1:], record.id))

    def _remove_files(self, record: JobRecord) -> None:
        self._image_path(record.id).unlink(missing_ok=True)
        self._video_path(record.id, record.output_format).unlink(missing_ok=True)
        self.remove_work_dir(record.id)

    # -- records ----------------------------------------------------------------------------------------------

    def create(self, record: JobRecord, image: bytes) -> None:
        """Store a new job and its input image. ``ValueError`` if the id is invalid or already taken.

        The image is in place before the record is committed, so a stored job always has its image.
        """
        path = self._image_path(record.id)
        row = self._row(record)  # fails (TypeError/ValueError) on non-JSON parameters before touching anything
        tmp = write_tmp(path, bytes(image))
        try:
            with self._transaction() as conn:
                try:
                    conn.execute(f"INSERT INTO jobs ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(row))})", row)
                except Exception as exc:
                    if self._is_duplicate(exc):
                        raise ValueError(f"a job with id {record.id!r} already exists") from None
                    raise
                os.replace(tmp, path)
                fsync_dir(path.parent)
        finally:
            tmp.unlink(missing_ok=True)
        logger.debug("created job %s", record.id)

    def get(self, job_id: str) -> JobRecord | None:
        """The job, or None if unknown (also for ids that could never be valid)."""
        if not is_valid_job_id(job_id):
            return None
        with self._reading() as conn:
            return self._fetch(conn, job_id)

    def update(self, job_id: str, **fields: Any) -> JobRecord:
        """Set ``fields`` on the job and return the new record.

        ``KeyError`` if the job is unknown; ``ValueError`` for unknown fields, an attempt to change ``id``, or
        values the record does not accept (the record is left unchanged then).
        """
        unknown = sorted(set(fields) - set(_COLUMNS))
        if unknown:
            raise ValueError(f"unknown job field(s): {', '.join(unknown)}")
        if "id" in fields and fields["id"] != job_id:
            raise ValueError("the id of a job cannot be changed")
        validate_job_id(job_id)
        with self._transaction() as conn:
            current = self._fetch(conn, job_id, lock=True)
            if current is None:
                raise KeyError(job_id)
            updated = JobRecord.model_validate({**current.model_dump(), **fields})
            self._write(conn, updated)
        return updated

    def list(self, limit: int = 20, after: str | None = None, status: str | None = None) -> list[JobRecord]:
        """Up to ``limit`` jobs, newest first (created_at desc, then id desc), optionally of one ``status``.

        ``after`` is a cursor: the id of the last job of the previous page; only jobs strictly after it in this
        order are returned. ``ValueError`` for a negative limit, an unknown status or an unknown cursor.
        """
        if limit < 0:
            raise ValueError("limit must be >= 0")
        if status is not None and status not in STATUSES:
            raise ValueError(f"unknown status {status!r}; expected one of {', '.join(STATUSES)}")
        where: list[str] = []
        args: list[Any] = []
        with self._reading() as conn:
            if after is not None:
                cursor = self._fetch(conn, after) if is_valid_job_id(after) else None
                if cursor is None:
                    raise ValueError(f"unknown cursor {after!r}")
                where.append("(created_at < ? OR (created_at = ? AND id < ?))")
                args += [cursor.created_at, cursor.created_at, cursor.id]
            if status is not None:
                where.append("status = ?")
                args.append(status)
            sql = _SELECT
            if where:
                sql += " WHERE " + " AND ".join(where)
            sql += " ORDER BY created_at DESC, id DESC LIMIT ?"
            rows = conn.execute(sql, (*args, limit)).fetchall()
        return [self._record(r) for r in rows]

    def delete(self, job_id: str) -> bool:
        """Remove the job, its input image and its video; False if unknown. ``ValueError`` for an invalid id."""
        validate_job_id(job_id)
        with self._transaction() as conn:
            record = self._fetch(conn, job_id, lock=True)
            if record is None:
                return False
            conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
        self._remove_files(record)
        logger.debug("deleted job %s", job_id)
        return True

    def image(self, job_id: str) -> bytes:
        """The job's input image. ``KeyError`` if the job (or its image) is unknown."""
        path = self._image_path(job_id)
        if self.get(job_id) is None:
            raise KeyError(job_id)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise KeyError(job_id) from None

    def put_content(self, job_id: str, data: bytes) -> None:
        """Store the job's finished video atomically (tmp file + ``os.replace``) and set ``content_bytes``.

        ``KeyError`` if the job is unknown. The bytes are written and synced before the transaction starts, so a
        large video does not hold up other callers.
        """
        validate_job_id(job_id)
        data = bytes(data)
        record = self.get(job_id)
        if record is None:
            raise KeyError(job_id)
        path = self._video_path(job_id, record.output_format)
        self._install(job_id, write_tmp(path, data), len(data))

    def put_content_file(self, job_id: str, source: str | Path) -> None:
        """Store the job's finished video from the file ``source`` (moved into place, never read into memory)
        and set ``content_bytes``. ``KeyError`` if the job is unknown.

        ``source`` is consumed either way. On the data directory's filesystem (a multi-clip job's work
        directory is) it is renamed; elsewhere it is copied to a temporary file next to the video first. The
        video appears whole or not at all, as with :meth:`put_content`.
        """
        validate_job_id(job_id)
        record = self.get(job_id)
        if record is None:
            Path(source).unlink(missing_ok=True)
            raise KeyError(job_id)
        tmp = stage_file(Path(source), self._video_path(job_id, record.output_format))
        self._install(job_id, tmp, tmp.stat().st_size)

    def _install(self, job_id: str, tmp: Path, size: int) -> None:
        """Rename the staged video ``tmp`` into place and record its ``size``, in one transaction with the job's
        row locked (``KeyError`` if it was deleted meanwhile); ``tmp`` is gone afterwards either way."""
        try:
            with self._transaction() as conn:
                record = self._fetch(conn, job_id, lock=True)
                if record is None:
                    raise KeyError(job_id)
                final = self._video_path(job_id, record.output_format)
                os.replace(tmp, final)
                fsync_dir(final.parent)
                self._write(conn, record.model_copy(update={"content_bytes": size}))
        finally:
            tmp.unlink(missing_ok=True)

    def work_dir(self, job_id: str) -> Path:
        """Where a multi-clip job keeps its finished clips while it runs (not created here: the engine creates
        it). It outlives a replica that dies, so the replica that runs the job next resumes from it."""
        return self.clips_dir / validate_job_id(job_id)

    def remove_work_dir(self, job_id: str) -> bool:
        """Remove the job's work directory, if any; whether there was one."""
        path = self.work_dir(job_id)
        if not path.exists():
            return False
        shutil.rmtree(path, ignore_errors=True)
        return True

    def remove_orphan_work_dirs(self) -> int:
        """Remove the work directories of jobs that will not run again (finished, or unknown); how many.

        A queued job's directory stays (it resumes from it), and so does a running one's, wherever it runs."""
        if not self.clips_dir.is_dir():
            return 0
        removed = 0
        for path in self.clips_dir.iterdir():
            if not path.is_dir():
                continue
            record = self.get(path.name)
            if record is None or record.status in TERMINAL:
                shutil.rmtree(path, ignore_errors=True)
                removed += 1
        return removed

    def content_path(self, job_id: str) -> Path | None:
        """The file of the job's finished video (complete: it was renamed into place), or None if there is none."""
        validate_job_id(job_id)
        record = self.get(job_id)
        if record is None:
            return None
        path = self._video_path(job_id, record.output_format)
        return path if path.is_file() else None

    def content(self, job_id: str) -> bytes | None:
        """The job's finished video, or None if the job is unknown or has none."""
        validate_job_id(job_id)
        record = self.get(job_id)
        if record is None:
            return None
        try:
            return self._video_path(job_id, record.output_format).read_bytes()
        except FileNotFoundError:
            return None

    def counts(self) -> dict[str, int]:
        """Number of jobs in each status (all five statuses present, zero if none)."""
        with self._reading() as conn:
            rows = conn.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall()
        result = dict.fromkeys(STATUSES, 0)
        result.update({s: int(n) for s, n in rows if s in result})
        return result

    # -- the shared queue -------------------------------------------------------------------------------------

    def claim(self, owner: str, lease_s: float, now: float | None = None) -> JobRecord | None:
        """Start the oldest queued job (created_at, then id) for ``owner``: status ``in_progress``, one more
        attempt, a lease until ``now + lease_s``. Atomic: two claimers never get the same job. None if none waits."""
        with self._transaction() as conn:
            now = self._now(conn) if now is None else now
            row = conn.execute(
                "UPDATE jobs SET status = 'in_progress', owner = ?, lease_expires_at = ?, attempts = attempts + 1, "
                "started_at = ?, progress = 0, clips_done = 0 WHERE id = (SELECT id FROM jobs WHERE status = 'queued' "
                f"ORDER BY created_at, id LIMIT 1{self._SKIP_LOCKED}) RETURNING {', '.join(_COLUMNS)}",
                (owner, now + lease_s, now),
            ).fetchone()
        return None if row is None else self._record(row)

    def heartbeat(
        self,
        owner: str,
        progress: dict[str, int],
        lease_s: float,
        now: float | None = None,
        clips_done: dict[str, int] | None = None,
    ) -> set[str]:
        """Extend ``owner``'s lease on each job in ``progress`` to ``now + lease_s`` and store its progress (0-100),
        and for the jobs in ``clips_done`` (multi-clip videos) the clips done.

        Returns the ids that are still ``in_progress`` and held by ``owner``; a job missing from the answer was
        cancelled or deleted through another replica, or re-queued after its lease expired, and must be stopped.
        """
        held: set[str] = set()
        if not progress:
            return held
        clips = clips_done or {}
        with self._transaction() as conn:
            now = self._now(conn) if now is None else now
            for job_id, pct in sorted(progress.items()):  # sorted: the same lock order in every replica
                done = clips.get(job_id)
                pct, done = max(0, min(100, int(pct))), None if done is None else max(0, int(done))
                row = conn.execute(
                    "UPDATE jobs SET lease_expires_at = ?, progress = ?, clips_done = COALESCE(?, clips_done) "
                    "WHERE id = ? AND owner = ? AND status = 'in_progress' RETURNING id",
                    (now + lease_s, pct, done, job_id, owner),
                ).fetchone()
                if row is not None:
                    held.add(row[0])
        return held

    def finish(
        self, job_id: str, status: JobStatus, owner: str | None = None, now: float | None = None, **fields: Any
    ) -> JobRecord | None:
        """Move a job to the terminal ``status`` (with ``completed_at`` and any other ``fields``), once: the first
        terminal status wins. With ``owner``, only while ``owner`` still holds the job (it was not re-queued and
        given to another replica meanwhile). Returns the new record, or None if nothing changed."""
        if status not in TERMINAL:
            raise ValueError(f"{status!r} is not a terminal status")
        if not is_valid_job_id(job_id):
            return None
        with self._transaction() as conn:
            now = self._now(conn) if now is None else now
            current = self._fetch(conn, job_id, lock=True)
            if current is None or current.status in TERMINAL:
                return None
            if owner is not None and (current.owner != owner or current.status != "in_progress"):
                return None
            update = {"completed_at": now, "lease_expires_at": None, **fields, "status": status}
            record = JobRecord.model_validate({**current.model_dump(), **update})
            self._write(conn, record)
        return record

    def release(self, owner: str) -> int:
        """Put the jobs ``owner`` holds back in the queue (it is shutting down cleanly); how many.

        Their attempt stays counted, as if the replica had died: a job that is interrupted again and again still
        meets ``max_attempts``."""
        with self._transaction() as conn:
            rows = conn.execute(
                "UPDATE jobs SET status = 'queued', owner = NULL, lease_expires_at = NULL, progress = 0, "
                "clips_done = 0, started_at = NULL WHERE owner = ? AND status = 'in_progress' RETURNING id",
                (owner,),
            ).fetchall()
        return len(rows)

    def requeue_expired(self, max_attempts: int, now: float | None = None) -> int:
        """Re-queue running jobs whose lease has expired (their replica died), or fail those already started
        ``max_attempts`` times; a job with no lease at all counts as expired. Returns how many changed."""
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        expired = "status = 'in_progress' AND (lease_expires_at IS NULL OR lease_expires_at < ?)"
        with self._transaction() as conn:
            now = self._now(conn) if now is None else now
            failed = conn.execute(
                f"SELECT id, attempts FROM jobs WHERE {expired} AND attempts >= ?{self._FOR_UPDATE}",
                (now, max_attempts),
            ).fetchall()
            for job_id, attempts in failed:
                conn.execute(
                    "UPDATE jobs SET status = 'failed', error = ?, completed_at = ?, lease_expires_at = NULL "
                    "WHERE id = ?",
                    (RESTART_ERROR.format(n=attempts), now, job_id),
                )
            requeued = conn.execute(
                "UPDATE jobs SET status = 'queued', owner = NULL, lease_expires_at = NULL, progress = 0, "
                f"clips_done = 0, started_at = NULL WHERE {expired} RETURNING id",
                (now,),
            ).fetchall()
        if failed or requeued:
            logger.warning(
                "leases expired: %d job(s) re-queued, %d given up after %d attempts",
                len(requeued),
                len(failed),
                max_attempts,
            )
        return len(failed) + len(requeued)

    def queue_positions(self, job_ids: list[str]) -> dict[str, int]:
        """Position (1 = next to start) in the shared queue of each of ``job_ids`` that is queued."""
        wanted = [j for j in dict.fromkeys(job_ids) if is_valid_job_id(j)]
        if not wanted:
            return {}
        with self._reading() as conn:
            rows = conn.execute(
                "SELECT id, position FROM (SELECT id, ROW_NUMBER() OVER (ORDER BY created_at, id) AS position "
                f"FROM jobs WHERE status = 'queued') AS q WHERE id IN ({', '.join('?' * len(wanted))})",
                tuple(wanted),
            ).fetchall()
        return {job_id: int(pos) for job_id, pos in rows}

    # -- start-up and expiry ----------------------------------------------------------------------------------

    def recover(self, max_attempts: int) -> list[JobRecord]:
        """Repair what crashes left behind and return the queued jobs, oldest first.

        Re-queues running jobs whose lease expired (failing those already started ``max_attempts`` times), fails
        completed jobs whose video and queued jobs whose input image is missing, and removes temporary files of
        writes a crash interrupted. Safe to call while other replicas use the store.
        """
        now = time.time()
        self.requeue_expired(max_attempts)
        lost = 0
        with self._reading() as conn:
            rows = conn.execute(f"{_SELECT} WHERE status IN ('completed', 'queued')").fetchall()
        for record in map(self._record, rows):
            if record.status == "queued" and not self._image_path(record.id).is_file():
                changes: dict[str, Any] = {"error": MISSING_IMAGE_ERROR, "completed_at": now}
            elif record.status == "completed" and not self._video_path(record.id, record.output_format).is_file():
                changes = {"error": MISSING_VIDEO_ERROR, "content_bytes": None}
            else:
                continue
            # Only if nothing moved it meanwhile (another replica may be using the store).
            with self._transaction() as conn:
                current = self._fetch(conn, record.id, lock=True)
                if current is not None and current.status == record.status:
                    self._write(conn, current.model_copy(update={**changes, "status": "failed"}))
                    lost += 1
        orphans = self.remove_orphan_work_dirs()
        if orphans:
            logger.info("removed %d work directories of finished or deleted multi-clip jobs", orphans)
        for d in (self.inputs_dir, self.videos_dir):
            for tmp in d.glob(f".*{TMP_SUFFIX}"):
                with contextlib.suppress(FileNotFoundError):
                    if now - tmp.stat().st_mtime > STALE_TMP_S:
                        tmp.unlink()
        with self._reading() as conn:
            queued = conn.execute(f"{_SELECT} WHERE status = 'queued' ORDER BY created_at ASC, id ASC").fetchall()
        result = [self._record(r) for r in queued]
        logger.info("job store recovered: %d with lost files, %d queued", lost, len(result))
        return result

    def purge_expired(self, retention_s: float, now: float | None = None) -> int:
        """Delete finished (completed, failed, cancelled) jobs older than ``retention_s``, with their files.

        Age counts from ``completed_at`` (``created_at`` if the job never finished). Returns how many were deleted.
        """
        cutoff = (time.time() if now is None else now) - retention_s
        placeholders = ", ".join("?" * len(TERMINAL))
        with self._transaction() as conn:
            rows = conn.execute(
                f"DELETE FROM jobs WHERE status IN ({placeholders}) AND COALESCE(completed_at, created_at) < ? "
                f"RETURNING {', '.join(_COLUMNS)}",
                (*TERMINAL, cutoff),
            ).fetchall()
        expired = [self._record(r) for r in rows]
        for record in expired:
            self._remove_files(record)
        if expired:
            logger.info("purged %d expired jobs", len(expired))
        return len(expired)
