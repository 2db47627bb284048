"""The job event stream (SSE) and the web page at /, against a real Serve app on the tiny model.

Browser tests (marked `browser`: `pytest -m browser`) drive Debian's Chromium with Playwright; without them they
skip with the reason, except under CI (CI=true), where .ci/run installs both and a missing one is a failure.
"""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import PIL.Image
import pytest

from svdpipe.service.config import ServiceConfig
from tests.ray.conftest import serving, small_engine

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "svdpipe" / "assets" / "sample.png"
CHROMIUM = "/usr/bin/chromium"
# Headless and offline: nothing may try the network (CI has none).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
STEPS = 6


@pytest.fixture(scope="module")
def service(ray_session, tmp_path_factory):
    config = ServiceConfig(
        data_dir=str(tmp_path_factory.mktemp("web")),
        max_queue=4,
        max_image_pixels=1_000_000,
        replica_cpus=0.1,
        engine=small_engine("web"),
    )
    with serving(config, "svdpipe-web-test") as (client, port):
        yield SimpleNamespace(client=client, base=f"http://127.0.0.1:{port}")


def _submit(client: httpx.Client, steps: int = STEPS, **fields: str) -> dict:
    resp = client.post(
        "/v1/videos",
        files={"image": ("sample.png", SAMPLE.read_bytes(), "image/png")},
        data={"num_inference_steps": str(steps), **fields},
    )
    assert resp.status_code == 202, resp.text
    return resp.json()


def _read_events(client: httpx.Client, job_id: str, last_event_id: str | None = None) -> list[dict]:
    """Read the stream to its end: [{'event', 'id', 'data', 'at'}] with 'data' parsed and arrival time 'at'."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    events, fields = [], {}
    with client.stream("GET", f"/v1/videos/{job_id}/events", headers=headers) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        for line in resp.iter_lines():
            if line == "":
                if "event" in fields:
                    events.append({**fields, "data": json.loads(fields["data"]), "at": time.monotonic()})
                fields = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(": ")
                fields[name] = value
    return events


# ---------------------------------------------------------------- SSE


def test_event_stream_reports_every_step_then_completed(service):
    job = _submit(service.client, seed="11")
    events = _read_events(service.client, job["id"])
    names = [e["event"] for e in events]
    assert names[0] == "status" and names[-1] == "completed", names
    assert names.count("completed") == 1 and set(names) <= {"status", "queue_position", "progress", "completed"}
    progress = [e["data"]["progress"] for e in events]
    assert progress == sorted(set(progress)), progress  # strictly increasing
    # One event per denoising step: every step's percentage appears (then 100 once the video is stored).
    assert {min(99, 100 * i // STEPS) for i in range(1, STEPS + 1)} <= set(progress), progress
    final = events[-1]["data"]
    assert final["status"] == "completed" and final["progress"] == 100 and final["seed"] == 11
    assert service.client.get(f"/v1/videos/{job['id']}/content").status_code == 200


def test_event_stream_resumes_from_last_event_id(service):
    job = _submit(service.client)
    first = _read_events(service.client, job["id"])
    middle = next(e for e in first if e["event"] == "progress")
    resumed = _read_events(service.client, job["id"], last_event_id=middle["id"])
    assert [e["event"] for e in resumed] == ["completed"]  # only what changed since: the end
    ended = service.client.get(f"/v1/videos/{job['id']}/events", headers={"Last-Event-ID": first[-1]["id"]})
    assert ended.status_code == 204  # the client saw the final event: nothing more, do not reconnect
    unknown = service.client.get("/v1/videos/nope/events")
    assert unknown.status_code == 404 and unknown.json()["error"]["type"] == "not_found_error"


def test_event_stream_is_in_the_openapi_schema(service):
    spec = service.client.get("/openapi.json").json()
    op = spec["paths"]["/v1/videos/{video_id}/events"]["get"]
    assert "text/event-stream" in op["responses"]["200"]["content"]
    assert "Last-Event-ID" in op["description"] and {"404", "204"} <= set(op["responses"])
    assert any(p["name"].lower() == "last-event-id" and p["in"] == "header" for p in op["parameters"])


def test_page_and_its_files_are_served(service):
    page = service.client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for asset in ("/web/app.js", "/web/app.css"):
        assert asset in page.text
        assert service.client.get(asset).status_code == 200


# ---------------------------------------------------------------- the page in Chromium


def _need(what: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} (.ci/run installs it)")
    pytest.skip(what)


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        _need(f"no {CHROMIUM}: apt-get install chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _need("playwright is not installed: pip install playwright")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


# Browser tests name `browser` first: pytest then sets it up (or skips) before the module's service starts.
@pytest.fixture
def page(browser, service):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(service.base + "/")
    yield page
    context.close()
    assert not errors, errors  # no uncaught script error on the page


def _status_is(page, text: str, timeout_s: float = 120) -> None:
    page.wait_for_function(f"document.getElementById('status').textContent === {text!r}", timeout=timeout_s * 1000)


@pytest.mark.browser
def test_page_makes_a_video_with_live_progress(browser, page, service, tmp_path):
    # Record every progress text the page shows, as it shows it.
    page.evaluate(
        """() => {
            window.shown = [];
            const el = document.getElementById('progress-text');
            new MutationObserver(() => window.shown.push(el.textContent))
                .observe(el, {childList: true, characterData: true, subtree: true});
        }"""
    )
    page.set_input_files("#image", str(SAMPLE))
    page.wait_for_selector("#preview", state="visible")
    page.fill("input[name=num_inference_steps]", str(STEPS))
    page.click("#generate")
    _status_is(page, "completed")
    page.wait_for_function(
        "(() => { const v = document.getElementById('video'); return v.readyState >= 2 && v.duration > 0; })()",
        timeout=30_000,
    )
    shown = [int(t.split()[0]) for t in page.evaluate("window.shown")]
    assert shown == sorted(shown) and len(set(shown)) >= 3, shown
    job_id = page.text_content("#job-id")
    job = service.client.get(f"/v1/videos/{job_id}").json()
    assert job["status"] == "completed" and job["parameters"]["num_inference_steps"] == STEPS
    assert page.text_content("#seed") == str(job["seed"])
    assert page.get_attribute("#download", "download") == f"{job_id}.mp4"
    page.wait_for_function(f"document.getElementById('jobs').textContent.includes({job_id!r})", timeout=10_000)
    # SVDPIPE_SCREENSHOT=docs/web-page.png refreshes the README's picture.
    page.screenshot(path=os.environ.get("SVDPIPE_SCREENSHOT", str(tmp_path / "web-page.png")), full_page=True)


@pytest.mark.browser
def test_page_shows_the_services_error_for_an_oversized_image(browser, page):
    buf = io.BytesIO()
    PIL.Image.new("RGB", (1100, 1000), (90, 90, 90)).save(buf, "PNG")  # over max_image_pixels
    page.set_input_files("#image", files=[{"name": "big.png", "mimeType": "image/png", "buffer": buf.getvalue()}])
    page.click("#generate")
    page.wait_for_selector("#form-error:not([hidden])")
    text = page.text_content("#form-error")
    assert "(400)" in text and "pixels" in text, text
    assert page.is_hidden("#job")


@pytest.mark.browser
def test_page_cancels_a_long_job(browser, page, service):
    page.set_input_files("#image", str(SAMPLE))
    page.fill("input[name=num_inference_steps]", "400")
    page.click("#generate")
    _status_is(page, "in progress")
    page.wait_for_function("document.getElementById('progress').value > 0", timeout=60_000)
    page.click("#cancel")
    _status_is(page, "cancelled", timeout_s=30)
    assert page.is_hidden("#cancel")
    job_id = page.text_content("#job-id")
    assert service.client.get(f"/v1/videos/{job_id}").json()["status"] == "cancelled"


@pytest.mark.browser
def test_page_sends_the_api_key_and_keeps_it_in_this_tab_only(browser, page):
    page.click("summary >> text=API key")
    page.fill("#api-key", "secret-key-123")
    with page.expect_request(lambda r: "/v1/videos?" in r.url) as listing:
        page.evaluate("refreshJobs()")
    assert listing.value.headers.get("authorization") == "Bearer secret-key-123"
    assert page.evaluate("sessionStorage.getItem('svdpipe.apiKey')") == "secret-key-123"
    assert page.evaluate("localStorage.length") == 0
    page.reload()  # same tab: still there
    assert page.input_value("#api-key") == "secret-key-123"
    other = page.context.new_page()  # another tab: sessionStorage is per tab
    other.goto(page.url)
    assert other.input_value("#api-key") == ""


@pytest.mark.browser
def test_page_fits_a_phone_width(browser, service):
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    page = context.new_page()
    page.goto(service.base + "/")
    page.wait_for_selector("#jobs li")
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    for selector in ("#drop", "#generate", "#recent"):
        box = page.locator(selector).bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390, (selector, box)
    context.close()


@pytest.mark.browser
def test_page_makes_a_long_video_and_names_the_clip_in_progress(browser, page, service):
    from tests.ray.conftest import decoded

    page.wait_for_function("document.getElementById('clips-limit').textContent !== ''", timeout=10_000)
    limit = service.client.get("/v1/health").json()["max_clips"]
    assert page.text_content("#clips-limit") == f"(max {limit})"
    assert page.get_attribute("#num-clips", "max") == str(limit)
    page.evaluate(
        """() => {
            window.clips = [];
            const el = document.getElementById('clip');
            new MutationObserver(() => window.clips.push(el.textContent))
                .observe(el, {childList: true, characterData: true, subtree: true});
        }"""
    )
    page.set_input_files("#image", str(SAMPLE))
    page.fill("input[name=num_inference_steps]", "4")
    page.fill("input[name=num_frames]", "2")
    page.fill("#num-clips", "2")
    page.click("summary >> text=Advanced")
    page.check("input[name=color_match]")
    page.click("#generate")
    _status_is(page, "completed")
    shown = page.evaluate("window.clips")
    assert "clip 1 of 2" in shown and "clip 2 of 2" in shown, shown
    job_id = page.text_content("#job-id")
    job = service.client.get(f"/v1/videos/{job_id}").json()
    assert job["num_clips"] == 2 and job["parameters"]["color_match"] is True
    frames = decoded(service.client.get(f"/v1/videos/{job_id}/content").content)
    assert len(frames) == 2 * 2
