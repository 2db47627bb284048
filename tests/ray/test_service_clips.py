"""Long videos (num_clips) through the jobs API, on a real Serve app and the tiny model: the frames of every
clip, the limit at the door, the clip named in the job and its events, cancel mid-video."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from svdpipe.service.config import ServiceConfig
from tests.ray.conftest import decoded, serving, small_engine
from tests.ray.test_service import SMALL, _create, _wait
from tests.ray.test_web import _read_events

MAX_CLIPS = 3


@pytest.fixture(scope="module")
def service(ray_session, tmp_path_factory):
    config = ServiceConfig(
        data_dir=str(tmp_path_factory.mktemp("clips-svc")),
        max_queue=4,
        replica_cpus=0.1,
        engine=small_engine("clipsvc", max_clips=MAX_CLIPS),
    )
    with serving(config, "svdpipe-clips-test") as (client, port):
        yield SimpleNamespace(client=client, config=config, port=port)


def _work_dir(service, job_id: str) -> Path:
    return Path(service.config.data_dir) / "clips" / job_id


def _gone(path: Path, timeout_s: float = 30.0) -> bool:
    deadline = time.time() + timeout_s
    while path.exists() and time.time() < deadline:
        time.sleep(0.05)
    return not path.exists()


def test_a_long_video_has_every_clip_and_its_events_name_them(service):
    fields = {**SMALL, "num_inference_steps": "4", "num_clips": "3", "seed": "21"}
    resp = _create(service.client, fields)
    assert resp.status_code == 202, resp.text
    job = resp.json()
    assert job["num_clips"] == 3 and job["clip"] is None and job["parameters"]["num_clips"] == 3
    events = _read_events(service.client, job["id"])
    running = [e["data"] for e in events if e["data"]["status"] == "in_progress"]
    clips = [j["clip"] for j in running]
    assert clips == sorted(clips) and set(clips) >= {1, 2, 3}, clips  # "clip 1 of 3" ... "clip 3 of 3"
    progress = [e["data"]["progress"] for e in events]
    assert progress == sorted(set(progress)), progress  # one percentage over all 3 x 4 steps, never back
    final = events[-1]["data"]
    assert events[-1]["event"] == "completed" and final["progress"] == 100
    assert (final["clip"], final["clips_done"], final["num_clips"]) == (None, 3, 3)
    content = service.client.get(f"/v1/videos/{job['id']}/content")
    assert content.status_code == 200 and content.headers["content-type"] == "video/mp4"
    frames = decoded(content.content)
    assert frames.shape == (3 * 3, 48, 64, 3)  # num_clips x num_frames frames
    assert _gone(_work_dir(service, job["id"]))  # the clips kept while it ran are removed


def test_more_clips_than_max_clips_is_a_400_naming_the_limit(service):
    over = _create(service.client, {**SMALL, "num_clips": str(MAX_CLIPS + 1)})
    assert over.status_code == 400, over.text
    message = over.json()["error"]["message"]
    assert "max_clips" in message and str(MAX_CLIPS) in message, message
    body = {"image": "data:image/png;base64,AAAA", "num_clips": 5000}
    assert service.client.post("/v1/videos", json=body).status_code == 400  # the schema's own bound
    assert _create(service.client, {**SMALL, "num_clips": "0"}).status_code == 400
    # the limit is stated where clients look for it
    assert service.client.get("/v1/health").json()["max_clips"] == MAX_CLIPS
    create = service.client.get("/openapi.json").json()["paths"]["/v1/videos"]["post"]
    assert f"at most {MAX_CLIPS} (max_clips)" in create["description"]
    for media in create["requestBody"]["content"].values():
        assert media["schema"]["properties"]["num_clips"]["maximum"] == MAX_CLIPS


def test_cancel_after_the_first_clip_removes_the_work_dir(service):
    job = _create(service.client, {**SMALL, "num_inference_steps": "30", "num_clips": "3", "seed": "3"}).json()
    first_clip = _work_dir(service, job["id"]) / "clip-0000.npy"
    deadline = time.time() + 120
    while not first_clip.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert first_clip.exists(), "clip 0 was never kept"
    resp = service.client.post(f"/v1/videos/{job['id']}/cancel")
    assert resp.status_code == 200 and resp.json()["status"] == "cancelled"
    assert resp.json()["clips_done"] >= 1
    assert _gone(_work_dir(service, job["id"]))
    time.sleep(0.5)
    assert service.client.get(f"/v1/videos/{job['id']}").json()["status"] == "cancelled"
    assert service.client.get(f"/v1/videos/{job['id']}/content").status_code == 409
    nxt = _create(service.client).json()  # the pipeline is free again
    assert _wait(service.client, nxt["id"])["status"] == "completed"
