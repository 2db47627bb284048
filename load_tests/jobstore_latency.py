"""Job-store latencies: claim round trip (one and four concurrent claimers) and cancel propagation across replicas.

    python -m tests.pg -- python load_tests/jobstore_latency.py      # PostgreSQL (a throw-away cluster) and SQLite

Cancel propagation: two job managers (fake engines, no Ray) share the store; replica B cancels a job running on
replica A; the time until A's engine is told to stop is what a user waits, bounded by the poll interval.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from svdpipe.config import VideoParams
from svdpipe.service.config import ServiceConfig
from svdpipe.service.jobs import JobManager
from svdpipe.service.store import JobRecord, SQLiteJobStore, open_job_store
from tests.unit.test_jobs import FakeEngine, _png


def _fill(store, n: int) -> None:
    for i in range(n):
        store.create(
            JobRecord(id=f"j{i:05d}", status="queued", created_at=float(i), seed=1, parameters={}, output_format="mp4"),
            b"png",
        )


def claim_latency(open_store, n: int = 400, claimers: int = 1) -> tuple[float, float]:
    """p50 and p95 ms of one claim while ``claimers`` threads drain ``n`` jobs."""
    _fill(open_store(), n)
    times: list[float] = []
    lock = threading.Lock()

    def drain(name: str) -> None:
        store = open_store()
        while True:
            t0 = time.perf_counter()
            if store.claim(name, 30.0) is None:
                return
            with lock:
                times.append((time.perf_counter() - t0) * 1000)

    threads = [threading.Thread(target=drain, args=(f"r{i}",)) for i in range(claimers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(times) == n, len(times)
    q = statistics.quantiles(times, n=20)
    return statistics.median(times), q[18]


async def cancel_propagation(open_store, data_dir: str, runs: int = 10, poll_s: float = 0.5) -> list[float]:
    """Seconds from a cancel through replica B until replica A's engine is told to stop the job."""
    config = ServiceConfig(data_dir=data_dir, poll_interval_s=poll_s, lease_s=30.0)
    engine_a = FakeEngine(max_inflight=1, step_s=0.02)
    a = JobManager(engine_a, open_store(), config, owner="a")
    b = JobManager(FakeEngine(max_inflight=1), open_store(), config, owner="b")
    await a.start()
    await b.start()
    delays = []
    for _ in range(runs):
        job = a.submit(_png(), VideoParams(num_inference_steps=1000), "mp4")
        while job.id not in engine_a.running:
            await asyncio.sleep(0.005)
        await asyncio.sleep(poll_s * 0.37)  # somewhere inside a heartbeat interval
        t0 = time.perf_counter()
        b.cancel(job.id)
        while job.id not in engine_a.cancelled:
            await asyncio.sleep(0.002)
        delays.append(time.perf_counter() - t0)
        while job.id in engine_a.running:
            await asyncio.sleep(0.005)
    await a.stop()
    await b.stop()
    return delays


def _opener(address: str | None, data_dir: str, opened: list):
    """A function opening a new store (connection) on one database and directory; each is added to ``opened``."""

    def open_store():
        opened.append(open_job_store(address, data_dir) if address else SQLiteJobStore(data_dir))
        return opened[-1]

    return open_store


def main() -> None:
    dsn = os.environ.get("SVDPIPE_TEST_PG_DSN")
    backends = [("sqlite", None)] + ([("postgresql", dsn)] if dsn else [])
    for name, address in backends:
        for claimers in (1, 4):
            if address:  # a clean table for each run
                import psycopg

                with psycopg.connect(address, autocommit=True) as c:
                    c.execute("DROP TABLE IF EXISTS jobs, svdpipe_schema")
            opened: list = []
            with tempfile.TemporaryDirectory() as d:
                p50, p95 = claim_latency(_opener(address, d, opened), claimers=claimers)
                for s in opened:
                    s.close()
            print(f"{name}: claim with {claimers} concurrent claimer(s): p50 {p50:.2f} ms, p95 {p95:.2f} ms")
        opened = []
        with tempfile.TemporaryDirectory() as d:
            delays = asyncio.run(cancel_propagation(_opener(address, d, opened), d))
            for s in opened:
                s.close()
        print(
            f"{name}: cancel via replica B -> replica A's engine told (poll 0.5 s, {len(delays)} runs): "
            f"median {statistics.median(delays) * 1000:.0f} ms, max {max(delays) * 1000:.0f} ms"
        )


if __name__ == "__main__":
    main()
