"""A full data directory, on a real 4 MB tmpfs (not a mock): clear errors, no partial files, 507-style refusal.

Mounting needs root (CI runs as root); elsewhere the tests skip and say why.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from svdpipe.config import VideoParams
from svdpipe.errors import StorageFullError
from svdpipe.service.config import ServiceConfig
from svdpipe.service.disk import MB, below_floor, full_message, is_full
from svdpipe.service.jobs import JobManager
from svdpipe.service.store import JobRecord, SQLiteJobStore
from tests.unit.test_jobs import FakeEngine, _png, _wait_status


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 4 MB tmpfs mounted for the test."""
    mount = tmp_path / "disk"
    mount.mkdir()
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True, text=True
        )
    except FileNotFoundError:
        pytest.skip("no `mount` command here to mount a small tmpfs")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a 4 MB tmpfs here ({done.stderr.strip() or done.returncode}); needs root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(disk: Path, leave_bytes: int) -> None:
    """Write a filler file so that about ``leave_bytes`` stay free."""
    free = shutil.disk_usage(disk).free
    (disk / "filler").write_bytes(b"\0" * max(0, free - leave_bytes))


def _files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def _record(job_id: str) -> JobRecord:
    return JobRecord(id=job_id, status="queued", created_at=1.0, seed=1, parameters={}, output_format="mp4")


def test_floor_decision_and_messages():
    assert below_floor(10 * MB, 11) and not below_floor(11 * MB, 11)
    assert not below_floor(0, 0)  # a floor of 0 is off
    assert is_full(OSError(28, "No space left on device")) and not is_full(OSError(2, "No such file"))
    assert (
        full_message("/data", 3 * MB)
        == "the data directory /data is full (3.0 MB free); free some space or retry later"
    )


def test_a_video_that_does_not_fit_leaves_no_file_and_the_record_unchanged(small_disk: Path):
    store = SQLiteJobStore(small_disk)
    store.create(_record("j1"), b"image")
    _fill(small_disk, 512 * 1024)
    with pytest.raises(StorageFullError, match="is full"):
        store.put_content("j1", b"v" * (2 * 2**20))
    assert _files(small_disk / "videos") == []  # neither the video nor a temporary file
    assert store.content_path("j1") is None and store.content("j1") is None
    assert store.get("j1").content_bytes is None
    store.close()


def test_an_image_that_does_not_fit_creates_no_job(small_disk: Path):
    store = SQLiteJobStore(small_disk)
    _fill(small_disk, 256 * 1024)
    with pytest.raises(StorageFullError):
        store.create(_record("big"), b"i" * (1 * 2**20))
    assert store.get("big") is None and _files(small_disk / "inputs") == []
    store.close()


class _BigVideoEngine(FakeEngine):
    """The fake engine, with a video of ``size`` bytes."""

    size: int = 2 * 2**20

    async def generate(self, *args, **kwargs):
        result = await super().generate(*args, **kwargs)
        return SimpleNamespace(**{**vars(result), "video": SimpleNamespace(data=b"v" * self.size, trace=(), path=None)})


def test_a_job_whose_video_does_not_fit_fails_with_a_clear_error(small_disk: Path):
    async def scenario():
        config = ServiceConfig(data_dir=str(small_disk), min_free_mb=0)
        manager = JobManager(_BigVideoEngine(max_inflight=1), SQLiteJobStore(small_disk), config)
        await manager.start()
        job = manager.submit(_png(), VideoParams(num_inference_steps=2, seed=1), "mp4")
        _fill(small_disk, 1 * 2**20)  # the job was accepted; the disk fills up while it runs
        done = await _wait_status(manager, job.id, ("failed", "completed"))
        await manager.stop()
        return done, manager.store.content_path(job.id)

    done, path = asyncio.run(scenario())
    assert done.status == "failed" and path is None
    assert done.error.startswith("the finished video could not be stored: the data directory ")
    assert "is full" in done.error and "submit the job again" in done.error
    assert [p for p in _files(small_disk / "videos")] == []


def test_below_the_floor_new_jobs_are_refused_and_health_is_degraded(small_disk: Path):
    async def scenario():
        config = ServiceConfig(data_dir=str(small_disk), min_free_mb=2)
        manager = JobManager(FakeEngine(), SQLiteJobStore(small_disk), config)
        accepted = manager.submit(_png(), VideoParams(num_inference_steps=2), "mp4")  # about 4 MB free: fine
        healthy = await manager.health()
        _fill(small_disk, 1 * 2**20)
        with pytest.raises(StorageFullError) as refused:
            manager.submit(_png(), VideoParams(num_inference_steps=2), "mp4")
        degraded = await manager.health()
        (small_disk / "filler").unlink()  # space is back: so are new jobs
        again = manager.submit(_png(), VideoParams(num_inference_steps=2), "mp4")
        return accepted, healthy, str(refused.value), degraded, again, await manager.health()

    accepted, healthy, refused, degraded, again, recovered = asyncio.run(scenario())
    assert accepted.status == again.status == "queued"
    assert healthy["status"] == "ok" and healthy["data_dir_free_mb"] > 2 and healthy["min_free_mb"] == 2
    assert "MB free, below the service's floor of 2 MB; retry later" in refused
    assert degraded["status"] == "degraded" and degraded["data_dir_free_mb"] < 2
    assert recovered["status"] == "ok"
