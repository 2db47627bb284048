"""The job-store contract: records, files, paging, the shared queue, leases, recovery and expiry.

Every test that takes ``store`` or ``open_store`` runs against both backends: SQLite on tmp_path, and a real
PostgreSQL (a fresh schema per test; skipped with a reason when SVDPIPE_TEST_PG_DSN is unset, set in CI).
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from svdpipe.service.store import (
    MISSING_IMAGE_ERROR,
    MISSING_VIDEO_ERROR,
    STATUSES,
    TERMINAL,
    JobRecord,
    JobStore,
    SQLiteJobStore,
    SQLJobStore,
)

IMAGE = b"\x89PNG fake image bytes"
PARAMS: dict[str, Any] = {"height": 64, "width": 64, "num_frames": 4, "fps": 7, "min_guidance_scale": 1.0}


def _record(job_id: str, created_at: float = 1000.0, **fields: Any) -> JobRecord:
    base: dict[str, Any] = {
        "id": job_id,
        "status": "queued",
        "created_at": created_at,
        "seed": 42,
        "parameters": PARAMS,
        "output_format": "mp4",
    }
    return JobRecord(**{**base, **fields})


@pytest.fixture
def store(open_store: Callable[[], SQLJobStore]) -> SQLJobStore:
    return open_store()


def test_implements_protocol_and_layout(store: SQLJobStore, tmp_path: Path) -> None:
    assert isinstance(store, JobStore)
    assert (tmp_path / "inputs").is_dir() and (tmp_path / "videos").is_dir()


def test_sqlite_file_is_wal_and_indexed(tmp_path: Path) -> None:
    SQLiteJobStore(tmp_path).close()
    with sqlite3.connect(tmp_path / "jobs.sqlite3") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        indexes = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'index'").fetchall()
    assert any("created_at" in (sql or "") for (sql,) in indexes)


def test_creates_nested_data_dir(tmp_path: Path) -> None:
    with SQLiteJobStore(str(tmp_path / "a" / "b")) as s:
        s.create(_record("j1"), IMAGE)
    assert (tmp_path / "a" / "b" / "inputs" / "j1").read_bytes() == IMAGE


def test_create_get_update_round_trip(store: SQLJobStore, tmp_path: Path) -> None:
    rec = _record("job-1_A", created_at=1712345678.123456, seed=2**64 - 1, parameters={"nested": {"a": [1, 2.5]}})
    store.create(rec, IMAGE)
    assert store.get("job-1_A") == rec
    assert store.image("job-1_A") == IMAGE
    assert (tmp_path / "inputs" / "job-1_A").read_bytes() == IMAGE
    assert store.get("nope") is None

    updated = store.update("job-1_A", status="in_progress", progress=40, started_at=1712345679.5, attempts=1)
    assert updated.status == "in_progress" and updated.progress == 40 and updated.attempts == 1
    assert updated.started_at == 1712345679.5
    assert updated.seed == 2**64 - 1 and updated.parameters == {"nested": {"a": [1, 2.5]}}
    assert store.get("job-1_A") == updated
    assert updated.model_dump() == {**rec.model_dump(), "status": "in_progress", "progress": 40,
                                    "started_at": 1712345679.5, "attempts": 1}  # fmt: skip

    with pytest.raises(ValidationError):
        rec.progress = 5  # type: ignore[misc]  # frozen


def test_update_errors_leave_record_unchanged(store: SQLJobStore) -> None:
    store.create(_record("j1"), IMAGE)
    with pytest.raises(KeyError):
        store.update("missing", progress=1)
    with pytest.raises(ValueError, match="unknown job field"):
        store.update("j1", colour="red")
    with pytest.raises(ValueError, match="cannot be changed"):
        store.update("j1", id="j2")
    with pytest.raises(ValueError):
        store.update("j1", progress=101)
    with pytest.raises(ValueError):
        store.update("j1", status="exploded")
    assert store.get("j1") == _record("j1")


def test_duplicate_id_rejected_and_original_kept(store: SQLJobStore) -> None:
    store.create(_record("dup", seed=1), IMAGE)
    with pytest.raises(ValueError, match="already exists"):
        store.create(_record("dup", seed=2), b"other image")
    assert store.get("dup") is not None and store.get("dup").seed == 1  # type: ignore[union-attr]
    assert store.image("dup") == IMAGE
    assert store.counts()["queued"] == 1


@pytest.mark.parametrize("bad", ["../etc/passwd", "a/b", "", ".", "..", "x" * 129, "a b", "é", "a.mp4", "a\x00"])
def test_bad_ids_rejected(store: SQLJobStore, tmp_path: Path, bad: str) -> None:
    with pytest.raises(ValueError):
        _record(bad)
    # a record built without validation must still not reach the file system
    with pytest.raises(ValueError):
        store.create(JobRecord.model_construct(**{**_record("ok").model_dump(), "id": bad}), IMAGE)
    for call in (store.image, store.content, store.delete):
        with pytest.raises(ValueError):
            call(bad)
    with pytest.raises(ValueError):
        store.put_content(bad, b"x")
    with pytest.raises(ValueError):
        store.update(bad, progress=1)
    assert store.get(bad) is None
    assert {p.name for p in tmp_path.iterdir()} <= {"inputs", "videos", "jobs.sqlite3", "jobs.sqlite3-wal",
                                                    "jobs.sqlite3-shm"}  # fmt: skip
    assert list((tmp_path / "inputs").iterdir()) == []


def test_bad_output_format_rejected() -> None:
    with pytest.raises(ValueError):
        _record("j1", output_format="../../x")


def test_list_newest_first_paging_and_status_filter(store: SQLJobStore) -> None:
    # created_at ties are broken by id, descending
    specs = [("a1", 1.0, "completed"), ("a2", 2.0, "queued"), ("b", 3.0, "failed"), ("c", 3.0, "queued"),
             ("d", 3.0, "completed"), ("e", 4.0, "in_progress"), ("f", 5.0, "queued")]  # fmt: skip
    for job_id, created, status in specs:
        store.create(_record(job_id, created_at=created, status=status), IMAGE)

    assert [r.id for r in store.list()] == ["f", "e", "d", "c", "b", "a2", "a1"]
    assert [r.id for r in store.list(limit=3)] == ["f", "e", "d"]
    assert [r.id for r in store.list(limit=3, after="d")] == ["c", "b", "a2"]
    assert [r.id for r in store.list(limit=3, after="a2")] == ["a1"]
    assert store.list(after="a1") == []
    assert store.list(limit=0) == []

    # walking every page with the cursor visits each job exactly once
    seen: list[str] = []
    after: str | None = None
    while page := store.list(limit=2, after=after):
        seen += [r.id for r in page]
        after = page[-1].id
    assert seen == ["f", "e", "d", "c", "b", "a2", "a1"]

    assert [r.id for r in store.list(status="queued")] == ["f", "c", "a2"]
    assert [r.id for r in store.list(status="queued", after="c")] == ["a2"]
    assert [r.id for r in store.list(status="queued", after="d")] == ["c", "a2"]  # cursor of another status
    assert [r.id for r in store.list(status="completed", limit=1)] == ["d"]
    assert store.list(status="cancelled") == []

    with pytest.raises(ValueError):
        store.list(status="bogus")
    with pytest.raises(ValueError):
        store.list(after="unknown")
    with pytest.raises(ValueError):
        store.list(limit=-1)


def test_delete_removes_record_and_files(store: SQLJobStore, tmp_path: Path) -> None:
    store.create(_record("gone", output_format="webm"), IMAGE)
    store.put_content("gone", b"video")
    store.create(_record("kept"), IMAGE)
    assert (tmp_path / "videos" / "gone.webm").is_file()

    assert store.delete("gone") is True
    assert store.get("gone") is None
    assert not (tmp_path / "inputs" / "gone").exists()
    assert not (tmp_path / "videos" / "gone.webm").exists()
    with pytest.raises(KeyError):
        store.image("gone")
    assert store.content("gone") is None
    assert store.delete("gone") is False
    assert store.get("kept") is not None and store.image("kept") == IMAGE


def test_put_content_atomic_and_sets_content_bytes(
    store: SQLJobStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.create(_record("v", output_format="gif"), IMAGE)
    assert store.content("v") is None and store.get("v").content_bytes is None  # type: ignore[union-attr]

    store.put_content("v", b"first video")
    assert store.content("v") == b"first video"
    assert (tmp_path / "videos" / "v.gif").read_bytes() == b"first video"
    assert store.get("v").content_bytes == len(b"first video")  # type: ignore[union-attr]

    # the final file only ever appears through os.replace of a finished temporary file in the same directory
    replaced: list[tuple[str, str]] = []
    real_replace = os.replace

    def spy(src: Any, dst: Any) -> None:
        assert Path(src).read_bytes() == b"second, longer video"
        assert Path(dst).read_bytes() == b"first video"  # old content intact until the swap
        replaced.append((str(src), str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    store.put_content("v", b"second, longer video")
    monkeypatch.setattr(os, "replace", real_replace)
    assert len(replaced) == 1
    src, dst = map(Path, replaced[0])
    assert dst == tmp_path / "videos" / "v.gif" and src.parent == dst.parent and src != dst
    assert store.content("v") == b"second, longer video"
    assert store.get("v").content_bytes == len(b"second, longer video")  # type: ignore[union-attr]
    assert sorted(p.name for p in (tmp_path / "videos").iterdir()) == ["v.gif"]  # no temporary left behind

    # a failed swap leaves the old video, the old content_bytes and no temporary file
    def boom(src: Any, dst: Any) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        store.put_content("v", b"third")
    monkeypatch.setattr(os, "replace", real_replace)
    assert store.content("v") == b"second, longer video"
    assert store.get("v").content_bytes == len(b"second, longer video")  # type: ignore[union-attr]
    assert sorted(p.name for p in (tmp_path / "videos").iterdir()) == ["v.gif"]

    with pytest.raises(KeyError):
        store.put_content("unknown", b"x")
    assert not (tmp_path / "videos" / "unknown.mp4").exists()


def test_counts(store: SQLJobStore) -> None:
    assert store.counts() == dict.fromkeys(STATUSES, 0)
    for i, status in enumerate(["queued", "queued", "in_progress", "completed", "failed", "failed", "failed"]):
        store.create(_record(f"j{i}", status=status), IMAGE)
    assert store.counts() == {"queued": 2, "in_progress": 1, "completed": 1, "failed": 3, "cancelled": 0}
    store.update("j0", status="cancelled")
    assert store.counts() == {"queued": 1, "in_progress": 1, "completed": 1, "failed": 3, "cancelled": 1}


def test_thread_safety(store: SQLJobStore) -> None:
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(20):
                job_id = f"t{n}-{i}"
                store.create(_record(job_id, created_at=float(i)), IMAGE)
                store.update(job_id, status="in_progress", progress=50)
                store.put_content(job_id, job_id.encode())
                assert store.content(job_id) == job_id.encode()
                store.list(limit=5)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.counts()["in_progress"] == 160


def test_restart_recovery(open_store: Callable[[], SQLJobStore], tmp_path: Path) -> None:
    store = open_store()
    jobs = [
        _record("q-old", created_at=10.0),  # queued, oldest
        _record("run-1", created_at=20.0, status="in_progress", progress=60, started_at=21.0, attempts=1),
        _record("q-new", created_at=40.0),
        _record("run-2", created_at=30.0, status="in_progress", progress=10, started_at=31.0, attempts=2),
        _record("run-max", created_at=15.0, status="in_progress", progress=90, started_at=16.0, attempts=3),
        _record("done", created_at=5.0, status="completed", progress=100, completed_at=9.0),
        _record("done-lost", created_at=6.0, status="completed", progress=100, completed_at=8.0),
        _record("bad", created_at=7.0, status="failed", error="boom", completed_at=7.5),
        _record("cxl", created_at=8.0, status="cancelled", completed_at=8.5),
        _record("q-noimage", created_at=12.0),
    ]
    for rec in jobs:
        store.create(rec, IMAGE + rec.id.encode())
    store.put_content("done", b"done video")
    store.put_content("done-lost", b"lost video")
    store.close()
    with pytest.raises(RuntimeError):
        store.get("done")

    # what the crash took with it: a finished video file, an input image, a half-written temporary file
    (tmp_path / "videos" / "done-lost.mp4").unlink()
    (tmp_path / "inputs" / "q-noimage").unlink()
    (tmp_path / "videos" / ".run-1.mp4.0123abcd.tmp").write_bytes(b"half")
    os.utime(tmp_path / "videos" / ".run-1.mp4.0123abcd.tmp", (1.0, 1.0))  # old: no replica is still writing it
    (tmp_path / "videos" / ".other.mp4.4567cdef.tmp").write_bytes(b"being written by another replica")

    store = open_store()
    queued = store.recover(max_attempts=3)

    # queued and re-queued jobs together, oldest first
    assert [r.id for r in queued] == ["q-old", "run-1", "run-2", "q-new"]
    for job_id in ("run-1", "run-2"):
        rec = store.get(job_id)
        assert rec is not None
        assert (rec.status, rec.progress, rec.started_at, rec.error) == ("queued", 0, None, None)
        assert rec.attempts == {"run-1": 1, "run-2": 2}[job_id]  # kept: the next start counts on from here
        assert store.image(job_id) == IMAGE + job_id.encode()
    assert queued[1] == store.get("run-1")

    gave_up = store.get("run-max")
    assert gave_up is not None and gave_up.status == "failed" and gave_up.completed_at is not None
    assert gave_up.error == "the service restarted while this job was running, 3 times; giving up"

    lost = store.get("done-lost")
    assert lost is not None and lost.status == "failed" and lost.error == MISSING_VIDEO_ERROR
    assert lost.content_bytes is None

    no_image = store.get("q-noimage")
    assert no_image is not None and no_image.status == "failed" and no_image.error == MISSING_IMAGE_ERROR

    # everything else survived untouched
    for original in jobs:
        if original.id in {"done", "bad", "cxl", "q-old", "q-new"}:
            expected = original
            if original.id == "done":
                expected = original.model_copy(update={"content_bytes": len(b"done video")})
            assert store.get(original.id) == expected
    assert store.content("done") == b"done video"
    assert store.image("q-old") == IMAGE + b"q-old"
    assert not (tmp_path / "videos" / ".run-1.mp4.0123abcd.tmp").exists()
    assert (tmp_path / "videos" / ".other.mp4.4567cdef.tmp").exists()
    assert store.counts() == {"queued": 4, "in_progress": 0, "completed": 1, "failed": 4, "cancelled": 1}

    # recovering again changes nothing
    assert store.recover(max_attempts=3) == queued
    store.close()


def test_recover_max_attempts_boundary(store: SQLJobStore) -> None:
    store.create(_record("once", status="in_progress", attempts=1), IMAGE)
    store.create(_record("never-started", created_at=999.0, status="in_progress", attempts=0), IMAGE)
    assert [r.id for r in store.recover(max_attempts=2)] == ["never-started", "once"]
    store.update("once", status="in_progress", attempts=2)
    assert [r.id for r in store.recover(max_attempts=2)] == ["never-started"]
    failed = store.get("once")
    assert failed is not None and failed.status == "failed"
    assert failed.error == "the service restarted while this job was running, 2 times; giving up"
    with pytest.raises(ValueError):
        store.recover(max_attempts=0)


def test_purge_expired(store: SQLJobStore, tmp_path: Path) -> None:
    now = 10_000.0
    retention = 3600.0
    store.create(_record("old-done", created_at=1000.0, status="completed", completed_at=now - 4000), IMAGE)
    store.put_content("old-done", b"v")
    store.create(_record("new-done", created_at=1000.0, status="completed", completed_at=now - 100), IMAGE)
    store.put_content("new-done", b"v")
    store.create(_record("old-failed", created_at=1000.0, status="failed", completed_at=now - 3601), IMAGE)
    store.create(_record("old-cxl-no-completed_at", created_at=now - 5000, status="cancelled"), IMAGE)
    store.create(_record("new-cxl-no-completed_at", created_at=now - 10, status="cancelled"), IMAGE)
    store.create(_record("old-queued", created_at=1.0), IMAGE)
    store.create(_record("old-running", created_at=1.0, status="in_progress"), IMAGE)
    assert set(TERMINAL) == {"completed", "failed", "cancelled"}

    assert store.purge_expired(retention, now=now) == 3
    remaining = {r.id for r in store.list(limit=100)}
    assert remaining == {"new-done", "new-cxl-no-completed_at", "old-queued", "old-running"}
    assert not (tmp_path / "videos" / "old-done.mp4").exists()
    assert not (tmp_path / "inputs" / "old-done").exists()
    assert not (tmp_path / "inputs" / "old-failed").exists()
    assert (tmp_path / "videos" / "new-done.mp4").is_file()
    assert sorted(p.name for p in (tmp_path / "inputs").iterdir()) == sorted(remaining)

    assert store.purge_expired(retention, now=now) == 0
    assert store.purge_expired(0.0, now=now + 1) == 2  # the two recent terminal jobs
    assert {r.id for r in store.list()} == {"old-queued", "old-running"}


# -- the shared queue -------------------------------------------------------------------------------------------


def test_claim_takes_the_oldest_queued_job(store: SQLJobStore) -> None:
    store.create(_record("newer", created_at=20.0), IMAGE)
    store.create(_record("b-older", created_at=10.0), IMAGE)
    store.create(_record("a-older", created_at=10.0), IMAGE)  # same time: the id decides
    store.create(_record("running", created_at=1.0, status="in_progress"), IMAGE)
    store.create(_record("done", created_at=1.0, status="completed"), IMAGE)
    assert store.queue_positions(["newer", "a-older", "b-older", "running", "nope", "../x"]) == {
        "a-older": 1,
        "b-older": 2,
        "newer": 3,
    }

    first = store.claim("replica-1", lease_s=30.0, now=100.0)
    assert first is not None and first.id == "a-older"
    assert (first.status, first.owner, first.lease_expires_at, first.attempts, first.started_at, first.progress) == (
        "in_progress", "replica-1", 130.0, 1, 100.0, 0,
    )  # fmt: skip
    assert store.get("a-older") == first
    assert store.queue_positions(["newer", "b-older"]) == {"b-older": 1, "newer": 2}
    assert [store.claim("replica-2", 30.0).id, store.claim("replica-1", 30.0).id] == ["b-older", "newer"]  # type: ignore[union-attr]
    assert store.claim("replica-1", 30.0) is None


def test_concurrent_claimers_never_get_the_same_job(open_store: Callable[[], SQLJobStore]) -> None:
    """Four 'replicas', each with its own connection, drain one queue: every job is claimed exactly once."""
    setup = open_store()
    ids = [f"j{i:03d}" for i in range(60)]
    for i, job_id in enumerate(ids):
        setup.create(_record(job_id, created_at=float(i)), IMAGE)
    claimed: dict[str, list[str]] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def replica(name: str) -> None:
        store = open_store()
        got: list[str] = []
        try:
            barrier.wait()
            while (record := store.claim(name, lease_s=60.0)) is not None:
                got.append(record.id)
        except BaseException as exc:
            errors.append(exc)
        claimed[name] = got

    threads = [threading.Thread(target=replica, args=(f"r{n}",)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    everything = [j for got in claimed.values() for j in got]
    assert sorted(everything) == ids  # all claimed, none twice
    for name, got in claimed.items():
        assert got == sorted(got)  # each claimer took them oldest first
        assert {setup.get(j).owner for j in got} <= {name}  # type: ignore[union-attr]
    assert {setup.get(j).attempts for j in ids} == {1}  # type: ignore[union-attr]


def test_heartbeat_renews_stores_progress_and_reports_lost_jobs(store: SQLJobStore) -> None:
    for i, job_id in enumerate(("mine", "cancelled-elsewhere", "deleted-elsewhere", "theirs")):
        store.create(_record(job_id, created_at=float(i)), IMAGE)
    mine = {store.claim("me", 10.0, now=0.0).id for _ in range(3)}  # type: ignore[union-attr]
    store.claim("them", 10.0, now=0.0)
    assert mine == {"mine", "cancelled-elsewhere", "deleted-elsewhere"}
    store.finish("cancelled-elsewhere", "cancelled")
    store.delete("deleted-elsewhere")

    held = store.heartbeat("me", {j: 40 for j in [*mine, "theirs"]}, lease_s=10.0, now=5.0)
    assert held == {"mine"}
    assert (store.get("mine").progress, store.get("mine").lease_expires_at) == (40, 15.0)  # type: ignore[union-attr]
    assert store.get("theirs").progress == 0 and store.get("theirs").lease_expires_at == 10.0  # type: ignore[union-attr]
    assert store.heartbeat("me", {}, lease_s=10.0) == set()


def test_expired_leases_are_requeued_until_max_attempts(store: SQLJobStore) -> None:
    store.create(_record("job"), IMAGE)
    store.create(_record("healthy", created_at=2000.0), IMAGE)
    for attempt in (1, 2):
        claimed = store.claim("dead-replica", lease_s=10.0, now=100.0 * attempt)
        assert claimed is not None and claimed.id == "job" and claimed.attempts == attempt
        assert store.requeue_expired(max_attempts=3, now=100.0 * attempt + 9.0) == 0  # lease still valid
        assert store.requeue_expired(max_attempts=3, now=100.0 * attempt + 11.0) == 1
        requeued = store.get("job")
        assert requeued is not None
        assert (requeued.status, requeued.owner, requeued.lease_expires_at, requeued.progress) == (
            "queued",
            None,
            None,
            0,
        )
        assert requeued.attempts == attempt
        # the owner, if only slow and not dead, learns that it lost the job and that it may not finish it
        assert store.heartbeat("dead-replica", {"job": 50}, 10.0, now=100.0 * attempt + 12.0) == set()
        assert store.finish("job", "completed", owner="dead-replica") is None
    third = store.claim("dead-replica", lease_s=10.0, now=300.0)
    assert third is not None and third.attempts == 3
    healthy = store.claim("live-replica", lease_s=10.0, now=300.0)
    assert healthy is not None and healthy.id == "healthy"
    store.heartbeat("live-replica", {"healthy": 10}, lease_s=100.0, now=305.0)
    assert store.requeue_expired(max_attempts=3, now=320.0) == 1
    failed = store.get("job")
    assert failed is not None and failed.status == "failed" and failed.completed_at == 320.0
    assert failed.error == "the service restarted while this job was running, 3 times; giving up"
    assert store.get("healthy").status == "in_progress"  # type: ignore[union-attr]  # renewed: untouched
    with pytest.raises(ValueError):
        store.requeue_expired(max_attempts=0)


def test_finish_first_terminal_status_wins_and_only_the_owner_completes(store: SQLJobStore) -> None:
    store.create(_record("j"), IMAGE)
    store.claim("owner", 30.0, now=1.0)
    assert store.finish("j", "completed", owner="someone-else") is None
    cancelled = store.finish("j", "cancelled", now=5.0)  # a cancel through any replica needs no ownership
    assert cancelled is not None and (cancelled.status, cancelled.completed_at) == ("cancelled", 5.0)
    assert cancelled.lease_expires_at is None and cancelled.owner == "owner"
    assert store.finish("j", "completed", owner="owner", progress=100) is None  # too late: cancelled first
    assert store.get("j") == cancelled
    assert store.finish("unknown", "failed") is None and store.finish("../x", "failed") is None
    with pytest.raises(ValueError, match="terminal"):
        store.finish("j", "queued")  # type: ignore[arg-type]

    store.create(_record("k"), IMAGE)
    store.claim("owner", 30.0)
    done = store.finish("k", "completed", owner="owner", progress=100, error=None)
    assert done is not None and done.status == "completed" and done.progress == 100


def test_release_requeues_only_the_owners_running_jobs(store: SQLJobStore) -> None:
    for i in range(3):
        store.create(_record(f"j{i}", created_at=float(i)), IMAGE)
    store.claim("leaving", 30.0)
    store.claim("staying", 30.0)
    assert store.release("leaving") == 1
    assert [store.get(f"j{i}").status for i in range(3)] == ["queued", "in_progress", "queued"]  # type: ignore[union-attr]
    assert store.get("j0").attempts == 1  # type: ignore[union-attr]  # the interrupted start still counts
    assert store.claim("staying", 30.0).id == "j0"  # type: ignore[union-attr]  # back at the head: oldest first
    assert store.release("nobody") == 0


def test_old_sqlite_database_is_migrated(tmp_path: Path) -> None:
    """A jobs.sqlite3 from before leases (no owner/lease columns, user_version 0) opens and keeps its jobs."""
    with sqlite3.connect(tmp_path / "jobs.sqlite3") as conn:
        conn.executescript(
            """CREATE TABLE jobs (id TEXT PRIMARY KEY NOT NULL, status TEXT NOT NULL,
            progress INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL, started_at REAL, completed_at REAL,
            error TEXT, seed TEXT NOT NULL,
            parameters TEXT NOT NULL, output_format TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
            content_bytes INTEGER);
            INSERT INTO jobs (id, status, created_at, seed, parameters, output_format)
            VALUES ('old', 'queued', 5.0, '7', '{}', 'mp4');"""
        )
    with SQLiteJobStore(tmp_path) as store:
        old = store.get("old")
        assert old is not None and old.seed == 7 and old.owner is None and old.lease_expires_at is None
        assert store.claim("r", 30.0).id == "old"  # type: ignore[union-attr]
    with SQLiteJobStore(tmp_path) as store:  # opening a migrated database again changes nothing
        assert store.get("old").owner == "r"  # type: ignore[union-attr]
        with sqlite3.connect(tmp_path / "jobs.sqlite3") as conn:
            assert conn.execute("PRAGMA user_version").fetchone()[0] == 3


def test_postgres_lost_connection_is_unavailable_then_reconnects(store: SQLJobStore, request) -> None:
    """The server ends the connection (a restart, a failover): one call fails with StoreUnavailableError, which
    the API turns into 503; the next one connects again and nothing was lost."""
    if request.node.callspec.params["open_store"] != "postgres":
        pytest.skip("PostgreSQL only")
    import psycopg

    from svdpipe.errors import StoreUnavailableError
    from tests.pg import DSN_ENV

    store.create(_record("kept"), IMAGE)
    with psycopg.connect(os.environ[DSN_ENV], autocommit=True) as admin:
        pid = store._conn.info.backend_pid  # type: ignore[attr-defined]  # the one connection this store holds
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    with pytest.raises(StoreUnavailableError, match="unavailable"):
        store.get("kept")
    assert store.get("kept") == _record("kept")
