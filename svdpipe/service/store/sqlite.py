"""The SQLite job store, the embedded default: records in ``data_dir/jobs.sqlite3``, files beside it."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

from svdpipe.errors import StorageFullError
from svdpipe.service.disk import free_bytes, full_message
from svdpipe.service.store.sql import SQLJobStore

logger = logging.getLogger(__name__)


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
    """
    ALTER TABLE jobs ADD COLUMN clips_done INTEGER NOT NULL DEFAULT 0;
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
            except BaseException as exc:
                conn.execute("ROLLBACK")
                _raise_if_full(exc, self.data_dir)
                raise
            try:
                conn.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                _raise_if_full(exc, self.data_dir)
                raise

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            yield self._db()

    def _is_duplicate(self, exc: BaseException) -> bool:
        return isinstance(exc, sqlite3.IntegrityError)


def _raise_if_full(exc: BaseException, data_dir: Path) -> None:
    """SQLite's "database or disk is full" as :class:`~svdpipe.errors.StorageFullError` (nothing was changed)."""
    if isinstance(exc, sqlite3.OperationalError) and getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
        raise StorageFullError(full_message(data_dir, free_bytes(data_dir))) from exc
