"""Open the job store an address names: PostgreSQL for ``postgresql://...``, else SQLite under ``data_dir``."""

from __future__ import annotations

from pathlib import Path

from svdpipe.service.store.addresses import POSTGRES_SCHEMES, redact
from svdpipe.service.store.sql import SQLJobStore
from svdpipe.service.store.sqlite import SQLiteJobStore


def open_job_store(address: str | None, data_dir: str | Path) -> SQLJobStore:
    """The store for ``address``: PostgreSQL for ``postgresql://...`` / ``postgres://...``, SQLite under
    ``data_dir`` for None. Files (images, videos) live under ``data_dir`` either way."""
    if address is None:
        return SQLiteJobStore(data_dir)
    if address.startswith(POSTGRES_SCHEMES):
        from svdpipe.service.store.postgres import PostgresJobStore

        return PostgresJobStore(address, data_dir)
    raise ValueError(f"unsupported job store address {redact(address)!r}: use postgresql://user@host:port/db")
