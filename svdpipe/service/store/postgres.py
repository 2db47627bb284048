"""The PostgreSQL job store: one queue and one set of records shared by every replica, through psycopg 3.

All of the job logic is :class:`~svdpipe.service.store.sql.SQLJobStore`'s; this module adds the connection, the
schema and its migrations, and row locking: a claim takes the oldest queued row ``FOR UPDATE SKIP LOCKED``, so
replicas claiming at the same moment each get a different job without waiting for each other.

A lost connection is not an error of the caller: every method raises
:class:`~svdpipe.errors.StoreUnavailableError` (the API answers 503 + Retry-After) and the next call connects
again. After a failed connection attempt, calls fail fast for ``reconnect_interval_s`` instead of each waiting
for a connection timeout, so an outage does not stall the replica's event loop.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import psycopg.errors

from svdpipe.errors import StoreUnavailableError
from svdpipe.service.store.addresses import redact
from svdpipe.service.store.sql import SQLJobStore

logger = logging.getLogger(__name__)

# Any fixed number: replicas starting together take this advisory lock so that one of them migrates the schema.
_MIGRATION_LOCK = 7_340_871_105

# The schema, one step per version (the svdpipe_schema table holds the number of steps applied).
_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY NOT NULL,
        status TEXT NOT NULL,
        progress INTEGER NOT NULL DEFAULT 0,
        created_at DOUBLE PRECISION NOT NULL,
        started_at DOUBLE PRECISION,
        completed_at DOUBLE PRECISION,
        error TEXT,
        seed TEXT NOT NULL,
        parameters TEXT NOT NULL,
        output_format TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        content_bytes BIGINT,
        owner TEXT,
        lease_expires_at DOUBLE PRECISION
    );
    CREATE INDEX jobs_created_at ON jobs (created_at, id);
    CREATE INDEX jobs_queue ON jobs (status, created_at, id);
    """,
    """
    ALTER TABLE jobs ADD COLUMN clips_done INTEGER NOT NULL DEFAULT 0;
    """,
)


class _Connection:
    """A psycopg connection that takes the ``?`` placeholders the shared SQL is written with."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self._conn = conn

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> psycopg.Cursor:
        return self._conn.execute(sql.replace("?", "%s"), params)


class PostgresJobStore(SQLJobStore):
    """:class:`~svdpipe.service.store.JobStore` with records in PostgreSQL and files under ``data_dir``.

    ``address`` is a libpq connection URI (``postgresql://user:password@host:port/db``; add
    ``?options=-csearch_path%3Dmyschema`` to use a schema other than ``public``). The schema is created or
    migrated when the store is opened. Thread-safe: one connection, guarded by a lock.
    """

    _FOR_UPDATE = " FOR UPDATE"
    _SKIP_LOCKED = " FOR UPDATE SKIP LOCKED"

    def __init__(
        self,
        address: str,
        data_dir: str | Path,
        connect_timeout_s: int = 5,
        reconnect_interval_s: float = 1.0,
    ) -> None:
        super().__init__(data_dir)
        self.address = address
        self.connect_timeout_s = connect_timeout_s
        self.reconnect_interval_s = reconnect_interval_s
        self._lock = threading.Lock()
        self._conn: psycopg.Connection | None = None
        self._closed = False
        self._down_until = 0.0
        version = self._migrate()
        logger.info("job store: PostgreSQL at %s (schema version %d), files in %s", redact(address), version, data_dir)

    # -- connection -------------------------------------------------------------------------------------------

    def _connect(self) -> psycopg.Connection:
        """The open connection, or a new one. Call with the lock held."""
        if self._closed:
            raise RuntimeError("the job store is closed")
        if self._conn is not None and not self._conn.closed:
            return self._conn
        if time.monotonic() < self._down_until:
            raise StoreUnavailableError("the job store (PostgreSQL) is unreachable; retry shortly")
        try:
            self._conn = psycopg.connect(self.address, autocommit=True, connect_timeout=self.connect_timeout_s)
        except psycopg.OperationalError as exc:
            self._down_until = time.monotonic() + self.reconnect_interval_s
            raise StoreUnavailableError(f"the job store (PostgreSQL) is unreachable: {_first_line(exc)}") from exc
        logger.info("connected to PostgreSQL at %s", redact(self.address))
        return self._conn

    @contextlib.contextmanager
    def _session(self, transaction: bool) -> Iterator[_Connection]:
        with self._lock:
            conn = self._connect()
            try:
                if transaction:
                    with conn.transaction():
                        yield _Connection(conn)
                else:
                    yield _Connection(conn)
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                if not conn.closed and not isinstance(exc, psycopg.errors.QueryCanceled):
                    with contextlib.suppress(Exception):
                        conn.close()
                self._conn = None
                logger.warning("lost the job store connection: %s", _first_line(exc))
                raise StoreUnavailableError(f"the job store (PostgreSQL) is unavailable: {_first_line(exc)}") from exc

    def _transaction(self) -> contextlib.AbstractContextManager[_Connection]:
        return self._session(transaction=True)

    def _reading(self) -> contextlib.AbstractContextManager[_Connection]:
        return self._session(transaction=False)

    def _is_duplicate(self, exc: BaseException) -> bool:
        return isinstance(exc, psycopg.errors.UniqueViolation)

    def _now(self, conn: _Connection) -> float:
        """The server's clock (``now()``: the start of the transaction), the one every replica shares."""
        return float(conn.execute("SELECT EXTRACT(EPOCH FROM now())").fetchone()[0])

    def close(self) -> None:
        """Close the connection; the store cannot be used afterwards. Calling it twice is harmless."""
        with self._lock:
            self._closed = True
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # -- schema -----------------------------------------------------------------------------------------------

    def _migrate(self) -> int:
        """Bring the schema to the latest version (in one transaction, one replica at a time); the version."""
        with self._transaction() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(?)", (_MIGRATION_LOCK,))
            conn.execute("CREATE TABLE IF NOT EXISTS svdpipe_schema (version INTEGER NOT NULL)")
            row = conn.execute("SELECT version FROM svdpipe_schema").fetchone()
            if row is None:
                conn.execute("INSERT INTO svdpipe_schema (version) VALUES (0)")
            version = 0 if row is None else int(row[0])
            if version > len(_MIGRATIONS):
                raise RuntimeError(
                    f"the job store's schema is version {version}, newer than this svdpipe knows "
                    f"({len(_MIGRATIONS)}): upgrade svdpipe"
                )
            for step in _MIGRATIONS[version:]:
                for statement in filter(str.strip, step.split(";")):
                    conn.execute(statement)
            conn.execute("UPDATE svdpipe_schema SET version = ?", (len(_MIGRATIONS),))
        return len(_MIGRATIONS)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
