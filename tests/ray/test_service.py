"""The jobs API against a real Serve app on the tiny model (started once for this module)."""

from __future__ import annotations

import base64
import io
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import PIL.Image
import pytest

from svdpipe.service.config import ServiceConfig
from tests.ray.conftest import decoded, serving, small_engine

ROOT = Path(__file__).resolve().parents[2]
SMALL = {"num_inference_steps": "2", "num_frames": "3", "height": "48", "width": "64"}


def _png(width: int = 64, height: int = 48) -> bytes:
    rng = np.random.default_rng(width * height)
    buf = io.BytesIO()
    PIL.Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _start(config: ServiceConfig) -> None:
    from ray import serve

    from svdpipe.service.app import app_builder

    serve.run(app_builder(config), name="svdpipe-test", route_prefix="/")


@pytest.fixture(scope="module")
def service(ray_session, tmp_path_factory):
    config = ServiceConfig(
        data_dir=str(tmp_path_factory.mktemp("svc")),
        max_queue=2,
        max_upload_bytes=400_000,
        max_image_pixels=1_000_000,
        replica_cpus=0.1,
        engine=small_engine("svc", max_video_pixels=2**20),
    )
    with serving(config, "svdpipe-test") as (client, port):
        yield SimpleNamespace(client=client, config=config, port=port)


def _flat_png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    PIL.Image.new("RGB", (width, height), (90, 90, 90)).save(buf, "PNG")
    return buf.getvalue()


def _create(client: httpx.Client, fields: dict | None = None, png: bytes | None = None) -> httpx.Response:
    return client.post("/v1/videos", files={"image": ("in.png", png or _png(), "image/png")}, data=fields or SMALL)


def _wait(client: httpx.Client, job_id: str, statuses=("completed",), timeout: float = 120) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = client.get(f"/v1/videos/{job_id}").json()
        if job["status"] in statuses:
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} stuck: {job}")


def test_create_poll_download_mp4(service):
    resp = _create(service.client, {**SMALL, "seed": "123"})
    assert resp.status_code == 202, resp.text
    job = resp.json()
    assert job["status"] == "queued" and job["seed"] == 123 and job["parameters"]["num_frames"] == 3
    done = _wait(service.client, job["id"])
    assert done["progress"] == 100 and done["error"] is None
    content = service.client.get(f"/v1/videos/{job['id']}/content")
    assert content.status_code == 200 and content.headers["content-type"] == "video/mp4"
    frames = decoded(content.content)
    assert len(frames) == 3 and frames[0].shape == (48, 64, 3)


def test_video_download_supports_range_requests(service):
    """Browsers seek in a video with Range requests: 206 with exactly those bytes, 416 past the end."""
    job = _create(service.client, {**SMALL, "seed": "7"}).json()
    _wait(service.client, job["id"])
    url = f"/v1/videos/{job['id']}/content"
    whole = service.client.get(url)
    assert whole.status_code == 200 and whole.headers["accept-ranges"] == "bytes"
    assert whole.headers["content-disposition"] == f'attachment; filename="{job["id"]}.mp4"'
    size = len(whole.content)
    part = service.client.get(url, headers={"Range": "bytes=10-99"})
    assert part.status_code == 206 and part.content == whole.content[10:100]
    assert part.headers["content-range"] == f"bytes 10-99/{size}"
    last = service.client.get(url, headers={"Range": "bytes=-5"})
    assert last.status_code == 206 and last.content == whole.content[-5:]
    assert service.client.get(url, headers={"Range": f"bytes={size}-"}).status_code == 416
    health = service.client.get("/v1/health").json()
    assert health["data_dir_free_mb"] > 0 and health["min_free_mb"] == service.config.min_free_mb


def test_json_data_url_and_gif(service):
    url = "data:image/png;base64," + base64.b64encode(_png()).decode()
    body = {"image": url, "num_inference_steps": 2, "num_frames": 2, "output_format": "gif"}
    resp = service.client.post("/v1/videos", json=body)
    assert resp.status_code == 202, resp.text
    assert 0 <= resp.json()["seed"] < 2**63  # random seed, always returned
    _wait(service.client, resp.json()["id"])
    content = service.client.get(f"/v1/videos/{resp.json()['id']}/content")
    assert content.headers["content-type"] == "image/gif" and len(decoded(content.content)) == 2


@pytest.mark.parametrize(
    ("kwargs", "status", "message"),
    [
        ({"files": {"image": ("x.png", b"not an image", "image/png")}, "data": SMALL}, 400, "not a readable image"),
        ({"files": {"image": ("x.png", _png(), "image/png")}, "data": {"colour": "red"}}, 400, "unknown field"),
        ({"files": {"image": ("x.png", _png(), "image/png")}, "data": {"num_frames": "0"}}, 400, "num_frames"),
        ({"files": {"image": ("x.png", _png(), "image/png")}, "data": {"height": "50"}}, 400, "multiples of 8"),
        ({"files": {"image": ("x.png", _png(), "image/png")}, "data": {"output_format": "avi"}}, 400, "output_format"),
        ({"data": SMALL}, 400, "'image'"),
        ({"content": b"hello", "headers": {"content-type": "text/plain"}}, 415, "multipart/form-data"),
        ({"json": {"image": "http://example/x.png"}}, 400, "data URL"),
        ({"json": {"image": "data:image/png;base64,@@@"}}, 400, "base64"),
        ({"json": {"image": "data:image/png;base64,AAAA", "fps": "fast"}}, 400, "fps"),
        ({"content": b"{nope", "headers": {"content-type": "application/json"}}, 400, "invalid JSON"),
        ({"files": {"image": ("x.png", _flat_png(1100, 1000), "image/png")}, "data": SMALL}, 400, "pixels"),
        # limits of the model (the tiny one's GroupNorms) and of the deployment (max_video_pixels), by field name
        (
            {"files": {"image": ("x.png", _png(), "image/png")}, "data": {"height": "8", "width": "8"}},
            400,
            "height and width: 8x8 is too small",
        ),
        (
            {
                "files": {"image": ("x.png", _png(), "image/png")},
                "data": {"num_frames": "256", "height": "64", "width": "128"},
            },
            400,
            "num_frames x height x width: 256x64x128 = 2097152 pixels exceeds",
        ),
        ({"files": {"image": ("x.bin", os.urandom(500_000), "image/png")}, "data": SMALL}, 413, "larger than"),
    ],
)
def test_bad_inputs_get_4xx_with_a_message(service, kwargs, status, message):
    resp = service.client.post("/v1/videos", **kwargs)
    assert resp.status_code == status, resp.text
    assert message in resp.json()["error"]["message"]


def test_a_one_pixel_image_is_accepted_and_its_job_completes(service):
    resp = _create(service.client, {**SMALL, "seed": "5"}, png=_flat_png(1, 1))
    assert resp.status_code == 202, resp.text
    done = _wait(service.client, resp.json()["id"], ("completed", "failed"))
    assert done["status"] == "completed", done["error"]


def test_unknown_ids_and_not_ready(service):
    for method, path in [
        ("get", "/v1/videos/nope"),
        ("get", "/v1/videos/nope/content"),
        ("post", "/v1/videos/nope/cancel"),
        ("delete", "/v1/videos/nope"),
        ("get", "/v1/videos/..%2F..%2Fetc"),
    ]:
        resp = getattr(service.client, method)(path)
        assert resp.status_code == 404, (path, resp.text)
        assert resp.json()["error"]["type"] == "not_found_error"
    assert service.client.get("/v1/videos", params={"status": "bogus"}).status_code == 400
    assert service.client.get("/v1/videos", params={"status": "", "after": ""}).status_code == 200  # "" = absent
    assert service.client.get("/v1/videos", params={"limit": 0}).status_code == 422
    job = _create(service.client, {**SMALL, "num_inference_steps": "30"}).json()
    early = service.client.get(f"/v1/videos/{job['id']}/content")
    assert early.status_code == 409 and "not completed" in early.json()["error"]["message"]
    service.client.post(f"/v1/videos/{job['id']}/cancel")


def test_cancel(service):
    job = _create(service.client, {**SMALL, "num_inference_steps": "40"}).json()
    _wait(service.client, job["id"], ("in_progress",))
    resp = service.client.post(f"/v1/videos/{job['id']}/cancel")
    assert resp.status_code == 200 and resp.json()["status"] == "cancelled"
    time.sleep(0.5)
    assert service.client.get(f"/v1/videos/{job['id']}").json()["status"] == "cancelled"
    assert service.client.get(f"/v1/videos/{job['id']}/content").status_code == 409
    # the pipeline is free again
    nxt = _create(service.client).json()
    assert _wait(service.client, nxt["id"])["status"] == "completed"


def test_list_paging_and_delete(service):
    ids = [_create(service.client).json()["id"] for _ in range(3)]
    for i in ids:
        _wait(service.client, i)
    first = service.client.get("/v1/videos", params={"limit": 2}).json()
    assert [j["id"] for j in first["data"]] == ids[::-1][:2] and first["has_more"]
    second = service.client.get("/v1/videos", params={"limit": 2, "after": first["last_id"]}).json()
    assert second["data"][0]["id"] == ids[0]
    deleted = service.client.delete(f"/v1/videos/{ids[0]}")
    assert deleted.status_code == 200 and deleted.json() == {"id": ids[0], "object": "video.deleted", "deleted": True}
    assert service.client.get(f"/v1/videos/{ids[0]}").status_code == 404


def test_queue_full_gives_429_with_retry_after(service):
    created, rejected = [], []
    for _ in range(6):
        resp = _create(service.client, {**SMALL, "num_inference_steps": "30"})
        (created if resp.status_code == 202 else rejected).append(resp)
    assert rejected, "the queue never filled"
    assert all(r.status_code == 429 for r in rejected)
    assert int(rejected[0].headers["retry-after"]) >= 1
    assert rejected[0].json()["error"]["type"] == "rate_limit_error"
    for resp in created:
        service.client.post(f"/v1/videos/{resp.json()['id']}/cancel")


def test_health_and_openapi(service):
    health = service.client.get("/v1/health").json()
    assert health["status"] == "ok" and [s["state"] for s in health["stages"]] == ["alive"] * 3
    names = [s["name"] for s in health["stages"]]  # svc-<replica id>-<role>-<i>: the replica's own actors
    assert len({n.split("-")[1] for n in names}) == 1 and [n.split("-", 2)[2] for n in names] == [
        "model-0",
        "model-1",
        "mux-0",
    ]
    spec = service.client.get("/openapi.json").json()
    create = spec["paths"]["/v1/videos"]["post"]
    assert set(create["requestBody"]["content"]) == {"multipart/form-data", "application/json"}
    assert {"202", "429", "503"} <= set(create["responses"])
    # the limits of this deployment's model are stated: in words, and the size multiple in the schema
    assert "at least 24x24 for 1 frame" in create["description"] and "1048576" in create["description"]
    height = create["requestBody"]["content"]["application/json"]["schema"]["properties"]["height"]
    assert {"type": "integer", "minimum": 8, "maximum": 4096, "multipleOf": 8} in height["anyOf"]
    form = create["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]["height"]
    assert form["type"] == "integer" and form["multipleOf"] == 8 and "anyOf" not in form  # a form has no null
    assert service.client.get("/docs").status_code == 200


def test_locustfile_smoke(service):
    env = {**os.environ, "SVDPIPE_LOAD_STEPS": "2", "SVDPIPE_LOAD_FRAMES": "2", "SVDPIPE_POLL_S": "0.05"}
    cmd = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(ROOT / "load_tests" / "locustfile.py"),
        "--headless",
        "-u",
        "2",
        "-r",
        "2",
        "--run-time",
        "8s",
        "--host",
        f"http://127.0.0.1:{service.port}",
        "--only-summary",
    ]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=90, cwd=ROOT)
    text = out.stdout + out.stderr
    line = next(ln for ln in text.splitlines() if ln.startswith("samples/hour:"))
    assert float(line.split(":")[1]) > 0, text
    assert "failed jobs: 0" in text


def test_jobs_survive_a_restart(service):
    from ray import serve

    done = _create(service.client).json()["id"]
    _wait(service.client, done)
    running = _create(service.client, {**SMALL, "num_inference_steps": "20", "seed": "5"}).json()["id"]
    _wait(service.client, running, ("in_progress",))
    serve.delete("svdpipe-test")  # the whole app goes away with a job in flight
    _start(service.config)
    assert service.client.get(f"/v1/videos/{done}/content").status_code == 200
    job = _wait(service.client, running, ("completed", "failed"))
    assert job["status"] == "completed" and job["seed"] == 5  # re-queued and run again
