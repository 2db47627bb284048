"""The job store: durable job records, input images and finished videos, behind a small interface.

The service keeps every job in a :class:`JobStore`. :class:`SQLiteJobStore` is the implementation used by a
single-node deployment: records live in a SQLite database (WAL journal, ``synchronous=FULL``, so a committed
change survives a crash of the process or of the machine), input images and finished videos live as plain files
next to it, and every file is written atomically (temporary file, ``fsync``, ``os.replace``). A cluster deployment
can implement the same protocol on shared storage (a database server plus an object store) without touching the
rest of the service.

Layout under ``data_dir``::

    jobs.sqlite3                  the records
    inputs/<id>                   the input image of each job, exactly as uploaded
    videos/<id>.<output_format>   the finished video of each completed job

Recovery after a restart (:meth:`JobStore.recover`, called once when the service starts):

* A job that was ``in_progress`` when the process died is **re-queued** (status ``queued``, progress 0,
  ``started_at`` cleared). Its input image is stored and the output for a given seed is deterministic, so running
  it again gives exactly the video the user would have got; failing it instead would throw away work the user
  asked for because of a problem on our side.
* Unless it has already been started ``max_attempts`` times: then it is marked ``failed`` ("the service restarted
  while this job was running, <n> times; giving up"). A job that crashes the service every time it runs would
  otherwise take the service down again after every restart, forever.
* A ``completed`` job whose video file is gone is marked ``failed`` with an error saying so, so that clients are
  never told to download something that does not exist.
* A ``queued`` job whose input image is gone cannot run; it is marked ``failed`` too.
* It returns every job that is now ``queued``, oldest first: the order in which to submit them again.

Job ids end up in file names, so they are restricted to ``[A-Za-z0-9_-]`` (at most 128 characters): nothing can be
read or written outside ``data_dir``. :meth:`JobStore.get` answers None for any other id (it cannot exist, so a
lookup of a user-supplied id is simply "not found"); the other methods reject it with ``ValueError``.
"""

from __future__ import annotations

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
    """Where the service keeps jobs. Implementations must be safe to call from several threads."""

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

    def recover(self, max_attempts: int) -> list[JobRecord]:
        """Repair state after a restart (see the module docstring); the queued jobs, oldest first."""
        ...

    def purge_expired(self, retention_s: float, now: float | None = None) -> int:
        """Delete terminal jobs finished more than ``retention_s`` ago, with their files; how many."""
        ...


_COLUMNS: tuple[str, ...] = tuple(JobRecord.model_fields)

_SCHEMA = """
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
"""


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


class SQLiteJobStore:
    """:class:`JobStore` on a local directory: SQLite for records, files for images and videos.

    Thread-safe (one connection guarded by a lock). Every change is committed before the call returns, and
    files are replaced atomically, so a crash at any point leaves either the old or the new state. Call
    :meth:`recover` once at start-up; the policy it applies, and why, is in the module docstring.
    """

    def __init__(self, data_dir: str | Path) -> None:
        self.data_dir = Path(data_dir)
        self.inputs_dir = self.data_dir / "inputs"
        self.videos_dir = self.data_dir / "videos"
        for d in (self.data_dir, self.inputs_dir, self.videos_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.db_path = self.data_dir / "jobs.sqlite3"
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = sqlite3.connect(
            self.db_path, check_same_thread=False, isolation_level=None, timeout=30.0
        )
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.executescript(_SCHEMA)
        logger.info("job store at %s", self.data_dir)

    # -- plumbing ---------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the database; the store cannot be used afterwards. Calling it twice is harmless."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> SQLiteJobStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("the job store is closed")
        return self._conn

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """Hold the lock and a write transaction; commit on success, roll back on error."""
        with self._lock:
            conn = self._db()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

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
        data["seed"] = str(data["seed"])  # TEXT: seeds up to 2**64 - 1 do not fit SQLite's 64-bit signed INTEGER
        return tuple(data[c] for c in _COLUMNS)

    @staticmethod
    def _record(row: sqlite3.Row | tuple[Any, ...]) -> JobRecord:
        data = dict(zip(_COLUMNS, row, strict=True))
        data["parameters"] = json.loads(data["parameters"])
        data["seed"] = int(data["seed"])
        return JobRecord.model_validate(data)

    def _fetch(self, conn: sqlite3.Connection, job_id: str) -> JobRecord | None:
        row = conn.execute(f"SELECT {', '.join(_COLUMNS)} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else self._record(row)

    def _write(self, conn: sqlite3.Connection, record: JobRecord) -> None:
        sets = ", ".join(f"{c} = ?" for c in _COLUMNS[1:])
        conn.execute(f"UPDATE jobs SET {sets} WHERE id = ?", (*self._row(record)[1:], record.id))

    def _remove_files(self, record: JobRecord) -> None:
        self._image_path(record.id).unlink(missing_ok=True)
        self._video_path(record.id, record.output_format).unlink(missing_ok=True)

    # -- JobStore ---------------------------------------------------------------------------------------------

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
                except sqlite3.IntegrityError:
                    raise ValueError(f"a job with id {record.id!r} already exists") from None
                os.replace(tmp, path)
                _fsync_dir(path.parent)
        finally:
            tmp.unlink(missing_ok=True)
        logger.debug("created job %s", record.id)

    def get(self, job_id: str) -> JobRecord | None:
        """The job, or None if unknown (also for ids that could never be valid)."""
        if not is_valid_job_id(job_id):
            return None
        with self._lock:
            return self._fetch(self._db(), job_id)

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
            current = self._fetch(conn, job_id)
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
        with self._lock:
            conn = self._db()
            if after is not None:
                cursor = self._fetch(conn, after) if is_valid_job_id(after) else None
                if cursor is None:
                    raise ValueError(f"unknown cursor {after!r}")
                where.append("(created_at < ? OR (created_at = ? AND id < ?))")
                args += [cursor.created_at, cursor.created_at, cursor.id]
            if status is not None:
                where.append("status = ?")
                args.append(status)
            sql = f"SELECT {', '.join(_COLUMNS)} FROM jobs"
            if where:
                sql += " WHERE " + " AND ".join(where)
            sql += " ORDER BY created_at DESC, id DESC LIMIT ?"
            rows = conn.execute(sql, (*args, limit)).fetchall()
        return [self._record(r) for r in rows]

    def delete(self, job_id: str) -> bool:
        """Remove the job, its input image and its video; False if unknown. ``ValueError`` for an invalid id."""
        validate_job_id(job_id)
        with self._transaction() as conn:
            record = self._fetch(conn, job_id)
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

        ``KeyError`` if the job is unknown. The bytes are written and synced before the lock is taken, so a
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
                record = self._fetch(conn, job_id)
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
        with self._lock:
            rows = self._db().execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall()
        result = dict.fromkeys(STATUSES, 0)
        result.update({s: n for s, n in rows if s in result})
        return result

    def recover(self, max_attempts: int) -> list[JobRecord]:
        """Repair the state a crash left behind and return the jobs to submit again, oldest first.

        Re-queues jobs that were running, fails those already started ``max_attempts`` times, fails completed
        jobs whose video and queued jobs whose input image is missing, and removes temporary files of writes
        the crash interrupted. Call it once, at start-up, before any job runs.
        """
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        now = time.time()
        requeued = given_up = lost = 0
        with self._transaction() as conn:
            rows = conn.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM jobs WHERE status IN ('in_progress', 'completed', 'queued')"
            ).fetchall()
            for record in map(self._record, rows):
                changes: dict[str, Any] = {}
                status = record.status
                if status == "in_progress":
                    if record.attempts >= max_attempts:
                        status = "failed"
                        changes = {"error": RESTART_ERROR.format(n=record.attempts), "completed_at": now}
                        given_up += 1
                    else:
                        status = "queued"
                        changes = {"progress": 0, "started_at": None}
                        requeued += 1
                if status == "queued" and not self._image_path(record.id).is_file():
                    status = "failed"
                    changes = {"error": MISSING_IMAGE_ERROR, "completed_at": now}
                    lost += 1
                elif status == "completed" and not self._video_path(record.id, record.output_format).is_file():
                    status = "failed"
                    changes = {"error": MISSING_VIDEO_ERROR, "content_bytes": None}
                    lost += 1
                if status != record.status or changes:
                    self._write(conn, record.model_copy(update={**changes, "status": status}))
            queued = conn.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM jobs WHERE status = 'queued' ORDER BY created_at ASC, id ASC"
            ).fetchall()
        for d in (self.inputs_dir, self.videos_dir):
            for tmp in d.glob(f".*{_TMP_SUFFIX}"):
                tmp.unlink(missing_ok=True)
        result = [self._record(r) for r in queued]
        logger.info(
            "job store recovered: %d re-queued, %d given up after %d attempts, %d with lost files, %d to submit",
            requeued,
            given_up,
            max_attempts,
            lost,
            len(result),
        )
        return result

    def purge_expired(self, retention_s: float, now: float | None = None) -> int:
        """Delete finished (completed, failed, cancelled) jobs older than ``retention_s``, with their files.

        Age counts from ``completed_at`` (``created_at`` if the job never finished). Returns how many were deleted.
        """
        cutoff = (time.time() if now is None else now) - retention_s
        placeholders = ", ".join("?" * len(TERMINAL))
        with self._transaction() as conn:
            rows = conn.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM jobs "
                f"WHERE status IN ({placeholders}) AND COALESCE(completed_at, created_at) < ?",
                (*TERMINAL, cutoff),
            ).fetchall()
            expired = [self._record(r) for r in rows]
            conn.executemany("DELETE FROM jobs WHERE id = ?", [(r.id,) for r in expired])
        for record in expired:
            self._remove_files(record)
        if expired:
            logger.info("purged %d expired jobs", len(expired))
        return len(expired)
