"""The job store: durable job records, input images and finished videos, and the shared queue, behind one protocol.

The service keeps every job in a :class:`JobStore`. Two backends share all of their logic (:class:`SQLJobStore`):

* :class:`SQLiteJobStore`, the embedded default: records in a SQLite database under ``data_dir`` (WAL journal,
  ``synchronous=FULL``, so a committed change survives a crash of the process or of the machine). Zero set-up;
  replicas on one machine can share it, replicas on several machines cannot.
* :class:`~svdpipe.service.postgres_store.PostgresJobStore`: records in PostgreSQL, so replicas on any number of
  machines share one queue. :func:`open_job_store` picks it for a ``postgresql://`` address.

Either way, input images and finished videos are plain files under ``data_dir`` (a volume every replica mounts
in a cluster), each written atomically (temporary file, ``fsync``, ``os.replace``), so any replica serves any
video and a reader never sees half a file.

Layout under ``data_dir``::

    jobs.sqlite3                  the records (SQLite backend only)
    inputs/<id>                   the input image of each job, exactly as uploaded
    videos/<id>.<output_format>   the finished video of each completed job

The queue (shared by every replica that uses the store):

* :meth:`JobStore.claim` moves the oldest ``queued`` job to ``in_progress`` for one replica, atomically (SQLite:
  one writer at a time; PostgreSQL: ``FOR UPDATE SKIP LOCKED``), so each job runs on exactly one replica. The
  claim gives the replica a **lease** on the job and counts an attempt.
* The replica renews its leases with :meth:`JobStore.heartbeat`, which also stores the jobs' progress (so any
  replica shows it) and answers which jobs the replica still holds: a job cancelled or deleted through another
  replica is missing from the answer, and its owner stops it.
* :meth:`JobStore.requeue_expired`, which every replica runs now and then, **re-queues** a job whose lease has
  expired: its replica died. Its input image is stored and the output for a given seed is deterministic, so running
  it again gives exactly the video the user would have got; failing it instead would throw away work the user asked
  for because of a problem on our side. Unless it has already been started ``max_attempts`` times: then it is
  marked ``failed`` ("the service restarted while this job was running, <n> times; giving up"), since a job that
  crashes its replica every time would otherwise take replica after replica down, forever.

Recovery when a replica starts (:meth:`JobStore.recover`): expired leases as above (a job from before leases
existed has none, so it counts as expired); a ``completed`` job whose video file is gone is marked ``failed``
with an error saying so, so that clients are never told to download something that does not exist; a ``queued``
job whose input image is gone cannot run and is marked ``failed`` too; temporary files older than an hour (writes
that a crash interrupted) are removed.

Job ids end up in file names, so they are restricted to ``[A-Za-z0-9_-]`` (at most 128 characters): nothing can be
read or written outside ``data_dir``. :meth:`JobStore.get` answers None for any other id (it cannot exist, so a
lookup of a user-supplied id is simply "not found"); the other methods reject it with ``ValueError``.

A database that cannot be reached raises :class:`~svdpipe.errors.StoreUnavailableError` from any method (the API
answers 503 with Retry-After); nothing is changed then.
"""

from __future__ import annotations

import abc
import contextlib
import json
import logging
import os
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, Protocol, get_args, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, field_validator

logger = logging.getLogger(__name__)

JobStatus = Literal["queued", "in_progress", "completed", "failed", "cancelled"]
STATUSES: tuple[str, ...] = get_args(JobStatus)
TERMINAL: tuple[str, ...] = ("completed", "failed", "cancelled")

_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,128}")
_FORMAT_RE = re.compile(r"[A-Za-z0-9]{1,16}")
_TMP_SUFFIX = ".tmp"

RESTART_ERROR = "the service restarted while this job was running, {n} times; giving up"
MISSING_VIDEO_ERROR = "the finished video is missing from storage (lost after a restart); please submit the job again"
MISSING_IMAGE_ERROR = "the input image is missing from storage (lost after a restart); please submit the job again"


def is_valid_job_id(job_id: object) -> bool:
    """Whether ``job_id`` is a string of 1-128 characters from ``[A-Za-z0-9_-]``."""
    return isinstance(job_id, str) and _ID_RE.fullmatch(job_id) is not None


def validate_job_id(job_id: str) -> str:
    """Return ``job_id`` if valid (see :func:`is_valid_job_id`), else raise ``ValueError``."""
    if not is_valid_job_id(job_id):
        raise ValueError(f"invalid job id {job_id!r}: use 1-128 characters from A-Z, a-z, 0-9, '_' and '-'")
    return job_id


class JobRecord(BaseModel):
    """One job, as stored. Immutable: change it with :meth:`JobStore.update`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    status: JobStatus
    progress: int = Field(default=0, ge=0, le=100)
    created_at: float
    started_at: float | None = None
    completed_at: float | None = None
    error: str | None = None
    seed: int
    parameters: dict[str, Any]
    output_format: str
    attempts: int = Field(default=0, ge=0)
    content_bytes: int | None = Field(default=None, ge=0)
    owner: str | None = None  # the replica running the job (kept once it ends: who ran it)
    lease_expires_at: float | None = None  # while running: re-queued if its owner has not renewed it by then

    @field_validator("id")
    @classmethod
    def _check_id(cls, value: str) -> str:
        return validate_job_id(value)

    @field_validator("output_format")
    @classmethod
    def _check_format(cls, value: str) -> str:
        if _FORMAT_RE.fullmatch(value) is None:
            raise ValueError(f"invalid output format {value!r}")
        return value


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

    def content(self, job_id: str) -> bytes | None:
        """The finished video, or None if there is none."""
        ...

    def counts(self) -> dict[str, int]:
        """Number of jobs per status, every status present."""
        ...

    def claim(self, owner: str, lease_s: float, now: float | None = None) -> JobRecord | None:
        """Atomically start the oldest queued job for ``owner`` with a lease of ``lease_s``; None if none waits."""
        ...

    def heartbeat(self, owner: str, progress: dict[str, int], lease_s: float, now: float | None = None) -> set[str]:
        """Renew ``owner``'s leases on these jobs and store their progress; the ids ``owner`` still holds."""
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


_COLUMNS: tuple[str, ...] = tuple(JobRecord.model_fields)
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM jobs"
# Temporary files younger than this may be another replica's write in progress (shared data_dir): left alone.
_STALE_TMP_S = 3600.0


def _fsync_dir(path: Path) -> None:
    """Make a rename or unlink in ``path`` durable (best effort where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_tmp(final: Path, data: bytes) -> Path:
    """Write ``data`` to a fresh temporary file next to ``final`` and fsync it; return its path."""
    tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex}{_TMP_SUFFIX}")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


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
        if _FORMAT_RE.fullmatch(output_format) is None:
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

    # -- records ----------------------------------------------------------------------------------------------

    def create(self, record: JobRecord, image: bytes) -> None:
        """Store a new job and its input image. ``ValueError`` if the id is invalid or already taken.

        The image is in place before the record is committed, so a stored job always has its image.
        """
        path = self._image_path(record.id)
        row = self._row(record)  # fails (TypeError/ValueError) on non-JSON parameters before touching anything
        tmp = _write_tmp(path, bytes(image))
        try:
            with self._transaction() as conn:
                try:
                    conn.execute(f"INSERT INTO jobs ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(row))})", row)
                except Exception as exc:
                    if self._is_duplicate(exc):
                        raise ValueError(f"a job with id {record.id!r} already exists") from None
                    raise
                os.replace(tmp, path)
                _fsync_dir(path.parent)
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
        tmp = _write_tmp(path, data)
        try:
            with self._transaction() as conn:
                record = self._fetch(conn, job_id, lock=True)
                if record is None:
                    raise KeyError(job_id)
                final = self._video_path(job_id, record.output_format)
                os.replace(tmp, final)
                _fsync_dir(final.parent)
                self._write(conn, record.model_copy(update={"content_bytes": len(data)}))
        finally:
            tmp.unlink(missing_ok=True)

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
        now = time.time() if now is None else now
        with self._transaction() as conn:
            row = conn.execute(
                "UPDATE jobs SET status = 'in_progress', owner = ?, lease_expires_at = ?, attempts = attempts + 1, "
                "started_at = ?, progress = 0 WHERE id = (SELECT id FROM jobs WHERE status = 'queued' "
                f"ORDER BY created_at, id LIMIT 1{self._SKIP_LOCKED}) RETURNING {', '.join(_COLUMNS)}",
                (owner, now + lease_s, now),
            ).fetchone()
        return None if row is None else self._record(row)

    def heartbeat(self, owner: str, progress: dict[str, int], lease_s: float, now: float | None = None) -> set[str]:
        """Extend ``owner``'s lease on each job in ``progress`` to ``now + lease_s`` and store its progress (0-100).

        Returns the ids that are still ``in_progress`` and held by ``owner``; a job missing from the answer was
        cancelled or deleted through another replica, or re-queued after its lease expired, and must be stopped.
        """
        now = time.time() if now is None else now
        held: set[str] = set()
        if not progress:
            return held
        with self._transaction() as conn:
            for job_id, pct in sorted(progress.items()):  # sorted: the same lock order in every replica
                row = conn.execute(
                    "UPDATE jobs SET lease_expires_at = ?, progress = ? "
                    "WHERE id = ? AND owner = ? AND status = 'in_progress' RETURNING id",
                    (now + lease_s, max(0, min(100, int(pct))), job_id, owner),
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
        now = time.time() if now is None else now
        with self._transaction() as conn:
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
                "started_at = NULL WHERE owner = ? AND status = 'in_progress' RETURNING id",
                (owner,),
            ).fetchall()
        return len(rows)

    def requeue_expired(self, max_attempts: int, now: float | None = None) -> int:
        """Re-queue running jobs whose lease has expired (their replica died), or fail those already started
        ``max_attempts`` times; a job with no lease at all counts as expired. Returns how many changed."""
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        now = time.time() if now is None else now
        expired = "status = 'in_progress' AND (lease_expires_at IS NULL OR lease_expires_at < ?)"
        with self._transaction() as conn:
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
                f"started_at = NULL WHERE {expired} RETURNING id",
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
        self.requeue_expired(max_attempts, now)
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
        for d in (self.inputs_dir, self.videos_dir):
            for tmp in d.glob(f".*{_TMP_SUFFIX}"):
                with contextlib.suppress(FileNotFoundError):
                    if now - tmp.stat().st_mtime > _STALE_TMP_S:
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


# SQLite's schema, one step per version (PRAGMA user_version counts the steps applied). Version 1 is the
# original table, so a database from before leases is migrated in place.
_SQLITE_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE IF NOT EXISTS jobs (
        id TEXT PRIMARY KEY NOT NULL,
        status TEXT NOT NULL,
        progress INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        started_at REAL,
        completed_at REAL,
        error TEXT,
        seed TEXT NOT NULL,
        parameters TEXT NOT NULL,
        output_format TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        content_bytes INTEGER
    );
    CREATE INDEX IF NOT EXISTS jobs_created_at ON jobs (created_at, id);
    CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status);
    """,
    """
    ALTER TABLE jobs ADD COLUMN owner TEXT;
    ALTER TABLE jobs ADD COLUMN lease_expires_at REAL;
    CREATE INDEX jobs_queue ON jobs (status, created_at, id);
    """,
)


class SQLiteJobStore(SQLJobStore):
    """:class:`JobStore` on a local directory: SQLite for records, files for images and videos.

    Thread-safe (one connection guarded by a lock); processes on one machine may share the directory (SQLite
    locks the database file). Every change is committed before the call returns, and files are replaced
    atomically, so a crash at any point leaves either the old or the new state.
    """

    def __init__(self, data_dir: str | Path) -> None:
        super().__init__(data_dir)
        self.db_path = self.data_dir / "jobs.sqlite3"
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = sqlite3.connect(
            self.db_path, check_same_thread=False, isolation_level=None, timeout=30.0
        )
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        with self._transaction() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            for step in _SQLITE_MIGRATIONS[version:]:
                for statement in filter(str.strip, step.split(";")):
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {len(_SQLITE_MIGRATIONS)}")
        logger.info("job store at %s (SQLite, schema version %d)", self.data_dir, len(_SQLITE_MIGRATIONS))

    def close(self) -> None:
        """Close the database; the store cannot be used afterwards. Calling it twice is harmless."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("the job store is closed")
        return self._conn

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """Hold the lock and a write transaction (IMMEDIATE: the only writer, so a claim is atomic)."""
        with self._lock:
            conn = self._db()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            yield self._db()

    def _is_duplicate(self, exc: BaseException) -> bool:
        return isinstance(exc, sqlite3.IntegrityError)


POSTGRES_SCHEMES: tuple[str, ...] = ("postgresql://", "postgres://")


def open_job_store(address: str | None, data_dir: str | Path) -> SQLJobStore:
    """The store for ``address``: PostgreSQL for ``postgresql://...`` / ``postgres://...``, SQLite under
    ``data_dir`` for None. Files (images, videos) live under ``data_dir`` either way."""
    if address is None:
        return SQLiteJobStore(data_dir)
    if address.startswith(POSTGRES_SCHEMES):
        from svdpipe.service.postgres_store import PostgresJobStore

        return PostgresJobStore(address, data_dir)
    raise ValueError(f"unsupported job store address {redact(address)!r}: use postgresql://user@host:port/db")


def redact(address: str) -> str:
    """``address`` with any password replaced by ``***`` (for logs and error messages)."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", address)
