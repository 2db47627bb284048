"""Locust load test for the svdpipe HTTP API: submit image-to-video jobs, poll them, download the video.

Run (headless)::

    locust -f load_tests/locustfile.py --headless -u 8 -r 8 --run-time 60s --host http://127.0.0.1:8000

Each simulated user loops: ``POST /v1/videos`` (a small in-memory PNG plus SVD form fields), honouring
``429`` + ``Retry-After`` with a bounded number of retries; polls ``GET /v1/videos/{id}`` until a terminal
status or a timeout; then downloads ``GET /v1/videos/{id}/content`` and checks it is non-empty. The whole
job is also reported to locust as a custom request (``request_type="JOB"``, ``name="end_to_end"``) so its
stats table shows end-to-end latency.

When the test stops a summary is printed to stdout::

    samples/hour: <completed jobs / window seconds * 3600>
    p50 latency: <s> s
    p95 latency: <s> s
    failed jobs: <n>

The throughput window runs from the first job submission (its first POST attempt) to the last job
completion (its video downloaded), so idle time before the first submit and jobs cut off when the test
stops do not count. A job's latency runs from its first POST attempt (429 back-off included: that is what a
client waits) to the end of its video download. Percentiles interpolate linearly between order statistics
(numpy's default ``linear`` method). With no completed job the summary says ``samples/hour: 0`` and the
latencies ``n/a``.

Environment knobs (all optional):

- ``SVDPIPE_API_KEY``: sent as ``Authorization: Bearer <key>``.
- ``SVDPIPE_LOAD_SIZE``: input PNG size, ``N`` or ``WxH`` (default ``64``).
- ``SVDPIPE_LOAD_STEPS`` (default 4), ``SVDPIPE_LOAD_FRAMES`` (default 4), ``SVDPIPE_LOAD_FORMAT``
  (default ``mp4``): ``num_inference_steps``, ``num_frames``, ``output_format``.
- ``SVDPIPE_LOAD_HEIGHT``, ``SVDPIPE_LOAD_WIDTH``, ``SVDPIPE_LOAD_SEED``: sent only when set (else the
  model's defaults / a random seed).
- ``SVDPIPE_POLL_S``: poll interval in seconds (default 0.1).
- ``SVDPIPE_JOB_TIMEOUT_S``: give up on a job after this many seconds (default 300).
- ``SVDPIPE_MAX_429_RETRIES``: bounded retries of a rejected submit (default 30).
- ``SVDPIPE_MAX_RETRY_AFTER_S``: cap on one ``Retry-After`` sleep (default 30).
"""

from __future__ import annotations

import io
import math
import os
import threading
import time
from typing import Any

import gevent
from locust import HttpUser, between, events, task
from locust.runners import MasterRunner

TERMINAL_STATUSES = frozenset({"completed", "failed", "cancelled"})

JOB_NAME = "/v1/videos/[id]"
CONTENT_NAME = "/v1/videos/[id]/content"


# ---------------------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------------------


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    return float(raw) if raw else default


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    return int(raw) if raw else default


def parse_size(raw: str) -> tuple[int, int]:
    """``"64"`` -> (64, 64); ``"96x64"`` -> (96, 64) as (width, height)."""
    text = raw.strip().lower()
    if "x" in text:
        w, h = text.split("x", 1)
        return int(w), int(h)
    return int(text), int(text)


def form_fields() -> dict[str, str]:
    """The SVD form fields sent with every job (diffusers' parameter names)."""
    fields = {
        "num_inference_steps": str(_env_int("SVDPIPE_LOAD_STEPS", 4)),
        "num_frames": str(_env_int("SVDPIPE_LOAD_FRAMES", 4)),
        "output_format": os.environ.get("SVDPIPE_LOAD_FORMAT", "mp4").strip() or "mp4",
    }
    for env, field in (
        ("SVDPIPE_LOAD_HEIGHT", "height"),
        ("SVDPIPE_LOAD_WIDTH", "width"),
        ("SVDPIPE_LOAD_SEED", "seed"),
    ):
        value = os.environ.get(env, "").strip()
        if value:
            fields[field] = value
    return fields


_PNG_CACHE: bytes | None = None


def make_png(width: int, height: int) -> bytes:
    """A small RGB gradient PNG, encoded in memory."""
    import PIL.Image

    img = PIL.Image.new("RGB", (width, height))
    img.putdata(
        [
            (x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), 128)
            for y in range(height)
            for x in range(width)
        ]
    )
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def input_png() -> bytes:
    """The input image, generated once per process (size from ``SVDPIPE_LOAD_SIZE``)."""
    global _PNG_CACHE
    if _PNG_CACHE is None:
        _PNG_CACHE = make_png(*parse_size(os.environ.get("SVDPIPE_LOAD_SIZE", "64") or "64"))
    return _PNG_CACHE


def parse_retry_after(value: str | None, default: float = 1.0) -> float:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds form); ``default`` when absent/invalid."""
    if value is None:
        return default
    try:
        seconds = float(value.strip())
    except ValueError:
        return default
    if not math.isfinite(seconds) or seconds < 0:
        return default
    return seconds


# ---------------------------------------------------------------------------------------------------------
# Summary (pure) and collectors
# ---------------------------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation between order statistics (numpy's default)."""
    if not values:
        raise ValueError("percentile of an empty list")
    data = sorted(values)
    pos = (len(data) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def summarize(latencies_s: list[float], first_start: float, last_end: float, failures: int) -> dict[str, Any]:
    """Throughput and latency of completed jobs.

    ``samples_per_hour`` = completed / (last_end - first_start) * 3600, where ``first_start`` is the first
    job submission and ``last_end`` the last completion (0 when nothing completed or the window is empty).
    ``p50_s`` / ``p95_s`` are None when nothing completed.
    """
    completed = len(latencies_s)
    window = max(last_end - first_start, 0.0) if completed else 0.0
    per_hour = completed / window * 3600.0 if completed and window > 0 else 0.0
    return {
        "completed": completed,
        "failed": failures,
        "window_s": window,
        "samples_per_hour": per_hour,
        "p50_s": percentile(latencies_s, 50) if completed else None,
        "p95_s": percentile(latencies_s, 95) if completed else None,
    }


def _fmt(value: float | None) -> str:
    if value is None:
        return "n/a"
    text = f"{value:.3f}".rstrip("0").rstrip(".")
    return text or "0"


def format_summary(summary: dict[str, Any], rejected: int = 0) -> str:
    """The printed summary block; the ``samples/hour:`` / ``p50 latency:`` / ``p95 latency:`` lines are stable."""
    return "\n".join(
        [
            "=== svdpipe load test summary ===",
            f"completed jobs: {summary['completed']}",
            f"failed jobs: {summary['failed']}",
            f"rejected submits (429): {rejected}",
            f"window: {_fmt(summary['window_s'])} s (first submit -> last completion)",
            f"samples/hour: {_fmt(summary['samples_per_hour'])}",
            f"p50 latency: {_fmt(summary['p50_s'])} s" if summary["p50_s"] is not None else "p50 latency: n/a",
            f"p95 latency: {_fmt(summary['p95_s'])} s" if summary["p95_s"] is not None else "p95 latency: n/a",
        ]
    )


class _Collector:
    """Per-process record of job outcomes (gevent greenlets share it; the lock is cheap insurance)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.latencies_s: list[float] = []
            self.first_start: float | None = None
            self.last_end: float | None = None
            self.failures = 0
            self.rejected = 0

    def submitted(self, t: float) -> None:
        with self._lock:
            if self.first_start is None or t < self.first_start:
                self.first_start = t

    def completed(self, start: float, end: float) -> None:
        with self._lock:
            self.latencies_s.append(end - start)
            if self.last_end is None or end > self.last_end:
                self.last_end = end

    def failed(self) -> None:
        with self._lock:
            self.failures += 1

    def rejected_once(self) -> None:
        with self._lock:
            self.rejected += 1

    def summary(self) -> dict[str, Any]:
        with self._lock:
            first = self.first_start if self.first_start is not None else 0.0
            last = self.last_end if self.last_end is not None else first
            return summarize(list(self.latencies_s), first, last, self.failures)


COLLECTOR = _Collector()


class JobError(Exception):
    """A job that did not end with a downloaded, non-empty video."""


def _why(resp: Any) -> str:
    """``HTTP <code>``, or the connection error when there was no response (status 0)."""
    if resp.status_code == 0 and getattr(resp, "error", None) is not None:
        return f"connection error: {resp.error!r}"[:300]
    return f"HTTP {resp.status_code}"


# ---------------------------------------------------------------------------------------------------------
# The user
# ---------------------------------------------------------------------------------------------------------


class VideoUser(HttpUser):
    """Submits one job at a time and follows it to the downloaded video."""

    wait_time = between(0.05, 0.2)

    def on_start(self) -> None:
        key = os.environ.get("SVDPIPE_API_KEY")
        if key:
            self.client.headers["Authorization"] = f"Bearer {key}"
        self.poll_s = _env_float("SVDPIPE_POLL_S", 0.1)
        self.job_timeout_s = _env_float("SVDPIPE_JOB_TIMEOUT_S", 300.0)
        self.max_retries = _env_int("SVDPIPE_MAX_429_RETRIES", 30)
        self.max_retry_after_s = _env_float("SVDPIPE_MAX_RETRY_AFTER_S", 30.0)
        self.fields = form_fields()
        self.png = input_png()

    @task
    def end_to_end(self) -> None:
        start = time.time()
        perf_start = time.perf_counter()
        COLLECTOR.submitted(start)
        exc: Exception | None = None
        length = 0
        try:
            length = self._run_job(perf_start)
        except JobError as err:
            exc = err
        elapsed_s = time.perf_counter() - perf_start
        if exc is None:
            COLLECTOR.completed(start, start + elapsed_s)
        else:
            COLLECTOR.failed()
        self.environment.events.request.fire(
            request_type="JOB",
            name="end_to_end",
            response_time=elapsed_s * 1000.0,
            response_length=length,
            exception=exc,
            context={},
        )

    def _submit(self) -> str:
        for _attempt in range(self.max_retries + 1):
            with self.client.post(
                "/v1/videos",
                files={"image": ("input.png", self.png, "image/png")},
                data=self.fields,
                name="/v1/videos",
                catch_response=True,
            ) as resp:
                if resp.status_code == 429:
                    # Back-pressure, not an error: counted separately and retried after Retry-After.
                    resp.success()
                    COLLECTOR.rejected_once()
                    wait = min(parse_retry_after(resp.headers.get("Retry-After")), self.max_retry_after_s)
                    gevent.sleep(wait)
                    continue
                if resp.status_code not in (200, 201, 202):
                    resp.failure(f"submit: {_why(resp)}: {(resp.text or '')[:200]}")
                    raise JobError(f"submit: {_why(resp)}")
                try:
                    job_id = resp.json()["id"]
                except (ValueError, KeyError, TypeError) as err:
                    resp.failure(f"submit: bad job object: {err!r}")
                    raise JobError("submit: bad job object") from err
                return str(job_id)
        raise JobError(f"submit: still 429 after {self.max_retries} retries")

    def _run_job(self, perf_start: float) -> int:
        job_id = self._submit()
        deadline = perf_start + self.job_timeout_s
        status = ""
        job: dict[str, Any] = {}
        while True:
            with self.client.get(f"/v1/videos/{job_id}", name=JOB_NAME, catch_response=True) as resp:
                if resp.status_code != 200:
                    resp.failure(f"poll: {_why(resp)}")
                    raise JobError(f"poll: {_why(resp)}")
                try:
                    job = resp.json()
                    status = str(job["status"])
                except (ValueError, KeyError, TypeError) as err:
                    resp.failure(f"poll: bad job object: {err!r}")
                    raise JobError("poll: bad job object") from err
            if status in TERMINAL_STATUSES:
                break
            if time.perf_counter() >= deadline:
                raise JobError(f"job {job_id} timed out after {self.job_timeout_s:g} s (status {status})")
            gevent.sleep(self.poll_s)
        if status != "completed":
            raise JobError(f"job {job_id} {status}: {job.get('error')}")
        with self.client.get(f"/v1/videos/{job_id}/content", name=CONTENT_NAME, catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(f"content: {_why(resp)}")
                raise JobError(f"content: {_why(resp)}")
            body = resp.content or b""
            if not body:
                resp.failure("content: empty body")
                raise JobError("content: empty body")
            return len(body)


# ---------------------------------------------------------------------------------------------------------
# Events
# ---------------------------------------------------------------------------------------------------------


@events.test_start.add_listener
def _on_test_start(environment: Any, **_kwargs: Any) -> None:
    COLLECTOR.reset()


@events.test_stop.add_listener
def _on_test_stop(environment: Any, **_kwargs: Any) -> None:
    # The master runs no users (workers print their own summaries); local and worker runners print.
    if isinstance(environment.runner, MasterRunner):
        return
    print(format_summary(COLLECTOR.summary(), COLLECTOR.rejected), flush=True)
