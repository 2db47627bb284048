"""The load test (load_tests/locustfile.py): its summary arithmetic, and a headless smoke run against a stub server.

Importing locust monkey-patches the whole interpreter with gevent, so this process never imports it: the
pure helpers are loaded with stand-in ``locust``/``gevent`` modules, and the smoke run is a subprocess.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import re
import socket
import subprocess
import sys
import threading
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import pytest
from fastapi import FastAPI, File, Form, Header, HTTPException, UploadFile
from fastapi.responses import JSONResponse, Response

ROOT = Path(__file__).resolve().parents[2]
LOCUSTFILE = ROOT / "load_tests" / "locustfile.py"


# ---------------------------------------------------------------------------------------------------------
# The pure helpers, loaded without locust
# ---------------------------------------------------------------------------------------------------------


def _stub_modules() -> dict[str, types.ModuleType]:
    class _Hook:
        def add_listener(self, fn: Any) -> Any:
            return fn

    locust = types.ModuleType("locust")
    locust.HttpUser = type("HttpUser", (), {})  # type: ignore[attr-defined]
    locust.between = lambda a, b: None  # type: ignore[attr-defined]
    locust.task = lambda fn: fn  # type: ignore[attr-defined]
    locust.events = types.SimpleNamespace(test_start=_Hook(), test_stop=_Hook(), quitting=_Hook())  # type: ignore[attr-defined]
    runners = types.ModuleType("locust.runners")
    runners.MasterRunner = type("MasterRunner", (), {})  # type: ignore[attr-defined]
    locust.runners = runners  # type: ignore[attr-defined]
    gevent = types.ModuleType("gevent")
    gevent.sleep = time.sleep  # type: ignore[attr-defined]
    return {"locust": locust, "locust.runners": runners, "gevent": gevent}


@pytest.fixture(scope="module")
def lf() -> Iterator[types.ModuleType]:
    saved = {name: sys.modules.get(name) for name in ("locust", "locust.runners", "gevent")}
    sys.modules.update(_stub_modules())
    try:
        spec = importlib.util.spec_from_file_location("_svdpipe_locustfile_under_test", LOCUSTFILE)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        for name, mod in saved.items():
            if mod is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = mod
    yield module


def test_summarize_arithmetic(lf):
    latencies = [float(x) for x in range(1, 11)]  # 1..10 s
    s = lf.summarize(latencies, first_start=1000.0, last_end=1060.0, failures=2)
    assert s["completed"] == 10
    assert s["failed"] == 2
    assert s["window_s"] == pytest.approx(60.0)
    assert s["samples_per_hour"] == pytest.approx(10 / 60 * 3600)  # 600
    assert s["p50_s"] == pytest.approx(5.5)
    assert s["p95_s"] == pytest.approx(9.55)  # 9 + 0.55 * (10 - 9), numpy's linear method


def test_summarize_single_and_unsorted(lf):
    s = lf.summarize([3.0], first_start=0.0, last_end=4.0, failures=0)
    assert s["samples_per_hour"] == pytest.approx(900.0)
    assert s["p50_s"] == s["p95_s"] == 3.0
    s = lf.summarize([4.0, 1.0, 3.0, 2.0], first_start=10.0, last_end=20.0, failures=0)
    assert s["p50_s"] == pytest.approx(2.5)
    assert s["p95_s"] == pytest.approx(3.85)
    assert s["samples_per_hour"] == pytest.approx(1440.0)


def test_summarize_nothing_completed(lf):
    s = lf.summarize([], first_start=5.0, last_end=5.0, failures=3)
    assert s["samples_per_hour"] == 0
    assert s["p50_s"] is None and s["p95_s"] is None
    text = lf.format_summary(s)
    assert "samples/hour: 0\n" in text
    assert "failed jobs: 3" in text
    assert "p50 latency: n/a" in text


def test_format_summary_lines(lf):
    text = lf.format_summary(lf.summarize([1.0, 2.0, 3.0], 0.0, 36.0, 0), rejected=1)
    lines = text.splitlines()
    assert "samples/hour: 300" in lines
    assert "p50 latency: 2 s" in lines
    assert "p95 latency: 2.9 s" in lines
    assert "failed jobs: 0" in lines
    assert "rejected submits (429): 1" in lines


def test_helpers(lf):
    assert lf.parse_size("64") == (64, 64)
    assert lf.parse_size("96x48") == (96, 48)
    assert lf.parse_retry_after("2") == 2.0
    assert lf.parse_retry_after("0.5") == 0.5
    assert lf.parse_retry_after(None, 1.5) == 1.5
    assert lf.parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 1.0) == 1.0
    png = lf.make_png(8, 6)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")


# ---------------------------------------------------------------------------------------------------------
# Smoke run: locust headless against an in-process stub of the API
# ---------------------------------------------------------------------------------------------------------

API_KEY = "smoke-test-key"
POLLS_TO_COMPLETE = 2
FAKE_VIDEO = b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 256


def _stub_app() -> FastAPI:
    app = FastAPI()
    jobs: dict[str, dict[str, Any]] = {}
    polls: dict[str, int] = {}
    counter = itertools.count(1)
    state = {"posts": 0}
    lock = threading.Lock()

    def check_auth(authorization: str | None) -> None:
        if authorization != f"Bearer {API_KEY}":
            raise HTTPException(status_code=401, detail="bad or missing bearer token")

    @app.post("/v1/videos", status_code=202)
    async def create(
        image: Annotated[UploadFile, File()],
        num_inference_steps: Annotated[int, Form()] = 25,
        num_frames: Annotated[int, Form()] = 14,
        output_format: Annotated[str, Form()] = "mp4",
        authorization: Annotated[str | None, Header()] = None,
    ) -> Any:
        check_auth(authorization)
        data = await image.read()
        if not data.startswith(b"\x89PNG"):
            raise HTTPException(status_code=422, detail="not a PNG")
        with lock:
            state["posts"] += 1
            if state["posts"] == 1:
                return JSONResponse({"detail": "queue full"}, status_code=429, headers={"Retry-After": "1"})
            job_id = f"vid_{next(counter)}"
        job = {
            "id": job_id,
            "object": "video",
            "status": "queued",
            "progress": 0,
            "queue_position": 0,
            "created_at": time.time(),
            "started_at": None,
            "completed_at": None,
            "error": None,
            "seed": 0,
            "parameters": {"num_inference_steps": num_inference_steps, "num_frames": num_frames},
            "output_format": output_format,
        }
        jobs[job_id] = job
        polls[job_id] = 0
        return job

    @app.get("/v1/videos/{job_id}")
    def get(job_id: str, authorization: Annotated[str | None, Header()] = None) -> Any:
        check_auth(authorization)
        if job_id not in jobs:
            raise HTTPException(status_code=404)
        job = jobs[job_id]
        polls[job_id] += 1
        if polls[job_id] >= POLLS_TO_COMPLETE:
            job.update(status="completed", progress=100, queue_position=None, completed_at=time.time())
        else:
            job.update(status="in_progress", progress=50, queue_position=None, started_at=time.time())
        return job

    @app.get("/v1/videos/{job_id}/content")
    def content(job_id: str, authorization: Annotated[str | None, Header()] = None) -> Any:
        check_auth(authorization)
        if job_id not in jobs:
            raise HTTPException(status_code=404)
        if jobs[job_id]["status"] != "completed":
            raise HTTPException(status_code=409, detail="not completed")
        return Response(FAKE_VIDEO, media_type="video/mp4")

    app.state.counters = state
    return app


@pytest.fixture
def stub_server() -> Iterator[tuple[str, FastAPI]]:
    uvicorn = pytest.importorskip("uvicorn")
    if importlib.util.find_spec("locust") is None:
        pytest.skip("locust is not installed")

    app = _stub_app()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "stub server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        server.should_exit = True
        thread.join(timeout=5)
        sock.close()


def test_locust_smoke_run(stub_server):
    host, app = stub_server
    env = {k: v for k, v in os.environ.items() if not k.startswith("SVDPIPE_")}
    env.update(
        SVDPIPE_API_KEY=API_KEY,
        SVDPIPE_POLL_S="0.05",
        SVDPIPE_JOB_TIMEOUT_S="10",
        SVDPIPE_LOAD_SIZE="32",
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
        PYTHONUNBUFFERED="1",
    )
    cmd = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "-u",
        "2",
        "-r",
        "2",
        "--run-time",
        "5s",
        "--host",
        host,
        "--only-summary",
    ]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=40)
    except subprocess.TimeoutExpired as err:  # subprocess.run kills the child before raising
        pytest.fail(f"locust did not finish in time:\n{err.stdout}\n{err.stderr}")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out

    match = re.search(r"^samples/hour: ([0-9.]+)$", out, re.MULTILINE)
    assert match, out
    assert float(match.group(1)) > 0, out
    assert re.search(r"^failed jobs: 0$", out, re.MULTILINE), out
    assert re.search(r"^p50 latency: [0-9.]+ s$", out, re.MULTILINE), out
    assert re.search(r"^p95 latency: [0-9.]+ s$", out, re.MULTILINE), out
    rejected = re.search(r"^rejected submits \(429\): (\d+)$", out, re.MULTILINE)
    assert rejected and int(rejected.group(1)) == 1, out
    assert app.state.counters["posts"] > 1  # the 429 was retried and later submits went through
    # Locust's own stats table: the grouped names and the custom end-to-end request.
    assert "end_to_end" in out and "/v1/videos/[id]/content" in out, out
    assert "/vid_" not in out, out
