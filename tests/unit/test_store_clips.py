"""The job store's part in multi-clip videos: work directories, a finished video stored by path, clips done.

Every test that takes ``store`` runs against both backends (SQLite, and PostgreSQL when SVDPIPE_TEST_PG_DSN is
set), as in test_store.py.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from svdpipe.service.disk import clips_work_bytes
from svdpipe.service.store import JobRecord, SQLJobStore
from svdpipe.service.store import files as store_files

IMAGE = b"\x89PNG fake image bytes"


def _record(job_id: str, **fields: Any) -> JobRecord:
    base: dict[str, Any] = {
        "id": job_id,
        "status": "queued",
        "created_at": 1000.0,
        "seed": 42,
        "parameters": {"num_frames": 4, "num_clips": 3},
        "output_format": "mp4",
    }
    return JobRecord(**{**base, **fields})


@pytest.fixture
def store(open_store: Callable[[], SQLJobStore]) -> SQLJobStore:
    return open_store()


def _finished_file(store: SQLJobStore, job_id: str, data: bytes) -> Path:
    work = store.work_dir(job_id)
    work.mkdir(parents=True)
    path = work / "result.mp4"
    path.write_bytes(data)
    return path


def test_work_dir_is_under_the_data_dir_and_not_created(store: SQLJobStore, tmp_path: Path) -> None:
    assert store.work_dir("j1") == tmp_path / "clips" / "j1"
    assert not store.work_dir("j1").exists()
    with pytest.raises(ValueError, match="invalid job id"):
        store.work_dir("../etc")


def test_put_content_file_moves_the_file_into_place(store: SQLJobStore, tmp_path: Path) -> None:
    store.create(_record("j1"), IMAGE)
    data = os.urandom(3000)
    source = _finished_file(store, "j1", data)
    store.put_content_file("j1", str(source))
    assert not source.exists()  # moved, not copied
    assert store.content("j1") == data and store.get("j1").content_bytes == 3000  # type: ignore[union-attr]
    assert store.content_path("j1") == tmp_path / "videos" / "j1.mp4"
    assert not [p for p in (tmp_path / "videos").iterdir() if p.name.startswith(".")]  # no temporary left


def test_put_content_file_copies_across_filesystems(store: SQLJobStore, monkeypatch) -> None:
    """A work directory on another filesystem (EXDEV from rename): copied in chunks, then renamed into place."""
    store.create(_record("j1"), IMAGE)
    data = os.urandom(5000)
    source = _finished_file(store, "j1", data)
    real_rename = os.rename

    def rename(src, dst):
        if Path(src) == source:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real_rename(src, dst)

    monkeypatch.setattr(store_files.os, "rename", rename)
    store.put_content_file("j1", source)
    assert store.content("j1") == data and not source.exists()


def test_put_content_file_of_an_unknown_job(store: SQLJobStore, tmp_path: Path) -> None:
    source = tmp_path / "stray.mp4"
    source.write_bytes(b"x")
    with pytest.raises(KeyError):
        store.put_content_file("nobody", source)
    assert not source.exists()  # consumed either way: nobody wants it


def test_delete_and_purge_remove_the_work_dir(store: SQLJobStore) -> None:
    store.create(_record("gone"), IMAGE)
    store.create(_record("old"), IMAGE)
    for job_id in ("gone", "old"):
        _finished_file(store, job_id, b"clip")
    assert store.delete("gone") and not store.work_dir("gone").exists()
    store.finish("old", "cancelled", now=1.0)
    assert store.purge_expired(10.0, now=100.0) == 1 and not store.work_dir("old").exists()


def test_orphan_work_dirs_are_removed_and_live_ones_kept(store: SQLJobStore) -> None:
    for job_id, status in [("queued", "queued"), ("running", "in_progress"), ("done", "completed")]:
        store.create(_record(job_id, status=status), IMAGE)
    for job_id in ("queued", "running", "done", "unknown"):
        _finished_file(store, job_id, b"clip")
    assert store.remove_orphan_work_dirs() == 2
    kept = sorted(p.name for p in store.clips_dir.iterdir())
    assert kept == ["queued", "running"]  # a re-queued job resumes from its clips; a running one uses them
    store.recover(3)  # start-up removes orphans too
    assert store.work_dir("queued").is_dir()
    assert store.remove_work_dir("queued") and not store.remove_work_dir("queued")


def test_heartbeat_stores_clips_done_and_a_claim_resets_it(store: SQLJobStore) -> None:
    store.create(_record("j1"), IMAGE)
    assert store.claim("me", 30.0).id == "j1"  # type: ignore[union-attr]
    assert store.heartbeat("me", {"j1": 40}, 30.0, clips_done={"j1": 1}) == {"j1"}
    assert store.get("j1").clips_done == 1  # type: ignore[union-attr]
    store.heartbeat("me", {"j1": 45}, 30.0)  # no clip figure: kept
    record = store.get("j1")
    assert (record.progress, record.clips_done) == (45, 1)  # type: ignore[union-attr]
    assert store.release("me") == 1
    assert store.get("j1").clips_done == 0  # type: ignore[union-attr]  # restarted: counted again as it runs
    store.claim("other", 30.0)
    store.heartbeat("other", {"j1": 70}, 30.0, clips_done={"j1": 2})
    finished = store.finish("j1", "completed", owner="other", progress=100, clips_done=3)
    assert finished is not None and store.get("j1").clips_done == 3  # type: ignore[union-attr]


def test_clips_work_bytes() -> None:
    assert clips_work_bytes(1, 25, 576, 1024) == 0  # one clip is written whole at the end, as before
    assert clips_work_bytes(4, 2, 8, 8) == 4 * 2 * 8 * 8 * 3


def test_postgres_schema_1_is_migrated(pg_dsn: str, tmp_path: Path) -> None:
    """A PostgreSQL job store from before clips (schema version 1) gains clips_done and keeps its jobs."""
    import psycopg

    from svdpipe.service.store.postgres import _MIGRATIONS, PostgresJobStore

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        for statement in filter(str.strip, _MIGRATIONS[0].split(";")):
            conn.execute(statement)
        conn.execute("CREATE TABLE svdpipe_schema (version INTEGER NOT NULL)")
        conn.execute("INSERT INTO svdpipe_schema (version) VALUES (1)")
        conn.execute(
            "INSERT INTO jobs (id, status, created_at, seed, parameters, output_format) "
            "VALUES ('old', 'queued', 5.0, '7', '{}', 'mp4')"
        )
    with PostgresJobStore(pg_dsn, tmp_path) as store:
        old = store.get("old")
        assert old is not None and old.seed == 7 and old.clips_done == 0
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        assert conn.execute("SELECT version FROM svdpipe_schema").fetchone()[0] == len(_MIGRATIONS) == 2
