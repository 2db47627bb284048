"""Leases are timed by the database's clock: PostgreSQL's ``now()``; SQLite's clock is this host's (its file is here).

Runs on both backends (PostgreSQL skipped with a reason when SVDPIPE_TEST_PG_DSN is unset, as in test_store.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from svdpipe.service.store import JobRecord, SQLJobStore

SKEW_S = 10_000.0  # this replica's clock runs almost three hours fast


def _queued(job_id: str) -> JobRecord:
    return JobRecord(id=job_id, status="queued", created_at=1.0, seed=1, parameters={}, output_format="mp4")


def test_claim_heartbeat_and_expiry_use_the_database_clock(
    open_store: Callable[[], SQLJobStore], request, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_store()
    store.create(_queued("j1"), b"img")
    real = time.time()
    monkeypatch.setattr(time, "time", lambda: real + SKEW_S)  # the replica's clock, not the database's
    claimed = store.claim("fast-clock", lease_s=30.0)
    assert claimed is not None and claimed.lease_expires_at == pytest.approx(claimed.started_at + 30.0)
    if request.node.callspec.params["open_store"] == "postgres":
        # The server's clock: the replica's skew does not move the lease.
        assert abs(claimed.started_at - real) < 60
        assert store.heartbeat("fast-clock", {"j1": 5}, lease_s=30.0) == {"j1"}
        assert store.requeue_expired(max_attempts=3) == 0  # the lease is 30 s from the server's now: not expired
        assert store.get("j1").lease_expires_at - real < 120
    else:
        # SQLite's clock is this host's clock.
        assert claimed.started_at == pytest.approx(real + SKEW_S)
