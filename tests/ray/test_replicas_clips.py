"""A long video survives the death of the replica making it: two replicas share a SQLite job store and data_dir
(one machine); the replica running a 3-clip job is killed once two clips are kept, and the other one, taking the
job over when its lease expires, resumes at the third clip: the clips already kept are not made again, and the
video equals an uninterrupted run's."""

from __future__ import annotations

import os
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from svdpipe.service.config import ServiceConfig
from svdpipe.service.store import SQLiteJobStore
from tests.ray.conftest import decoded, serving, small_engine
from tests.ray.test_service import SMALL, _create, _wait

APP = "svdpipe-clip-replicas"
FIELDS = {**SMALL, "num_inference_steps": "20", "num_clips": "3", "seed": "99"}


@pytest.fixture(scope="module")
def replicas(ray_session, tmp_path_factory):
    config = ServiceConfig(
        data_dir=str(tmp_path_factory.mktemp("clip-replicas")),
        num_replicas=2,
        lease_s=3.0,
        poll_interval_s=0.2,
        max_queue=8,
        replica_cpus=0.1,
        engine=small_engine("cliprep"),
    )
    with serving(config, APP) as (client, _port):
        yield SimpleNamespace(client=client, config=config)


def _files(work: Path, names: list[str]) -> dict[str, tuple[int, int]]:
    """Each file's (inode, mtime): a clip written again (atomically, by rename) gets a new inode."""
    return {n: (os.stat(work / n).st_ino, os.stat(work / n).st_mtime_ns) for n in names}


def test_killing_the_replica_mid_video_resumes_at_the_clip_in_progress(replicas):
    import ray

    client, data_dir = replicas.client, Path(replicas.config.data_dir)
    # 1. the uninterrupted video, for reference
    reference = _create(client, FIELDS).json()["id"]
    assert _wait(client, reference, ("completed", "failed"), timeout=300)["status"] == "completed"
    expected = decoded(client.get(f"/v1/videos/{reference}/content").content)

    # 2. the same video again; its replica dies once clips 0 and 1 are kept (during clip 2, 0-based)
    job_id = _create(client, FIELDS).json()["id"]
    work = data_dir / "clips" / job_id
    kept = ["clip-0000.npy", "clip-0001.npy"]
    deadline = time.time() + 300
    while not (work / kept[1]).exists() and time.time() < deadline:
        time.sleep(0.02)
    with SQLiteJobStore(data_dir) as store:
        record = store.get(job_id)
    assert record is not None and record.status == "in_progress", record
    victim = next(
        a
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["name"].startswith("SERVE_REPLICA::") and a["name"].endswith(f"#{record.owner}")
    )
    ray.kill(ray.get_actor(victim["name"], namespace=victim["namespace"]), no_restart=True)
    before = _files(work, kept)
    assert not (work / "clip-0002.npy").exists()  # the kill landed mid-video

    # 3. the other replica takes it over once the lease expires, and resumes
    rewritten, restarted_progress = [], []
    deadline = time.time() + 300
    while time.time() < deadline:
        resp = client.get(f"/v1/videos/{job_id}")
        if resp.status_code != 200:  # the proxy may still route to the dead replica for a moment
            time.sleep(0.05)
            continue
        job = resp.json()
        if job["status"] in ("completed", "failed"):
            break
        try:
            if _files(work, kept) != before:
                rewritten.append(job)
        except FileNotFoundError:
            pass  # the job ended between the two reads and its work directory is gone
        # the run that took over (a claim sets started_at; the dead replica's last figures may show until then)
        if job["status"] == "in_progress" and job["started_at"] != record.started_at and job["progress"] > 0:
            restarted_progress.append((job["progress"], job["clip"]))
        time.sleep(0.05)
    assert job["status"] == "completed", job
    with SQLiteJobStore(data_dir) as store:
        done = store.get(job_id)
    assert done is not None and done.attempts == 2 and done.owner != record.owner  # ran again, elsewhere
    assert not rewritten  # clips 0 and 1 were not made again
    resumed = restarted_progress
    assert resumed and min(resumed)[0] >= 66 and {c for _p, c in resumed} == {3}, resumed  # 2 of 3 clips kept

    # 4. the same video as the uninterrupted run, frame for frame
    frames = decoded(client.get(f"/v1/videos/{job_id}/content").content)
    assert frames.shape == expected.shape == (9, 48, 64, 3)
    np.testing.assert_array_equal(frames, expected)
    deadline = time.time() + 30
    while work.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert not work.exists()
