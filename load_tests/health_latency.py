"""Health latency under load: `GET /v1/health` while 200 event streams are open and 16 jobs run (simulated costs).

    python load_tests/health_latency.py                    # starts `svdpipe serve` on 127.0.0.1 (tiny model)
    python load_tests/health_latency.py --url http://127.0.0.1:8000   # or targets a running service

It keeps `--running` jobs in the pipeline (the service's `max_inflight`; a few more wait in the queue), holds
`--streams` Server-Sent-Event streams open on them (a stream that ends, with its job, is replaced), and asks
`/v1/health` every `--interval-ms` for `--duration-s`; then it prints p50 / p95 / p99 / max of the health
latency and stops everything it started. Bounded: it gives up after start-up time + duration + 60 s.
Loopback only; the model is the tiny one with stand-in UNet/VAE/CLIP (CPU-free waits), so the replica's event
loop, not the model, is what is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import PIL.Image

ROOT = Path(__file__).resolve().parents[1]


def _png() -> bytes:
    buf = io.BytesIO()
    PIL.Image.new("RGB", (64, 64), (90, 120, 150)).save(buf, "PNG")
    return buf.getvalue()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_service(args: argparse.Namespace, data_dir: str) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    command = [
        sys.executable,
        "-m",
        "svdpipe",
        "serve",
        "--port",
        str(port),
        "--data-dir",
        data_dir,
        "--stages",
        "2",
        "--max-inflight",
        str(args.running),
        "--max-queue",
        str(4 * args.running),
        "--simulate-step-ms",
        str(args.step_ms),
        "--simulate-encode-ms",
        "5",
        "--simulate-decode-frame-ms",
        "5",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    log = open(Path(data_dir) / "serve.log", "wb")  # noqa: SIM115 (closed with the process)
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, f"http://127.0.0.1:{port}"


async def _wait_ready(client: httpx.AsyncClient, proc: subprocess.Popen | None, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"the service exited with {proc.returncode} before it was ready")
        with contextlib.suppress(httpx.HTTPError):
            if (await client.get("/v1/health", timeout=5)).status_code == 200:
                return
        await asyncio.sleep(1)
    raise SystemExit(f"the service was not ready after {timeout_s:.0f} s")


class Load:
    """Keeps jobs in the pipeline and event streams open on them until `stop` is set."""

    def __init__(self, client: httpx.AsyncClient, args: argparse.Namespace) -> None:
        self.client, self.args = client, args
        self.live: list[str] = []  # jobs not yet finished (as far as this script knows)
        self.stop = asyncio.Event()
        self.streams_open = 0
        self.events = 0
        self.submitted = 0
        self.submitting = 0
        self.ended: dict[str, int] = {}  # final events seen, by name
        self.image = _png()

    async def feeder(self) -> None:
        """One of several submitters: together they keep `running` jobs in the pipeline and a few waiting."""
        fields = {"num_inference_steps": str(self.args.steps), "num_frames": "4", "height": "64", "width": "64"}
        while not self.stop.is_set():
            if len(self.live) + self.submitting < self.args.running + 4:
                self.submitting += 1
                try:
                    r = await self.client.post(
                        "/v1/videos", data=fields, files={"image": ("in.png", self.image, "image/png")}, timeout=30
                    )
                except httpx.HTTPError:
                    r = None
                finally:
                    self.submitting -= 1
                if r is not None and r.status_code == 202:
                    self.live.append(r.json()["id"])
                    self.submitted += 1
                    continue
            await asyncio.sleep(0.2)

    async def stream(self, slot: int) -> None:
        while not self.stop.is_set():
            if not self.live:
                await asyncio.sleep(0.1)
                continue
            job_id = self.live[slot % len(self.live)]
            try:
                async with self.client.stream("GET", f"/v1/videos/{job_id}/events", timeout=None) as r:
                    self.streams_open += 1
                    try:
                        async for line in r.aiter_lines():
                            if line.startswith("event: "):
                                self.events += 1
                                name = line[7:]
                                if name in ("completed", "failed", "cancelled", "error") and job_id in self.live:
                                    self.live.remove(job_id)
                                    self.ended[name] = self.ended.get(name, 0) + 1
                            if self.stop.is_set():
                                break
                    finally:
                        self.streams_open -= 1
            except httpx.HTTPError:
                await asyncio.sleep(0.2)


async def _measure(args: argparse.Namespace, url: str, proc: subprocess.Popen | None) -> int:
    limits = httpx.Limits(max_connections=args.streams + 50, max_keepalive_connections=args.streams + 50)
    async with (
        httpx.AsyncClient(base_url=url, limits=limits) as client,
        httpx.AsyncClient(base_url=url) as probe,
    ):
        await _wait_ready(probe, proc, args.startup_s)
        load = Load(client, args)
        tasks = [asyncio.create_task(load.feeder()) for _ in range(4)]
        tasks += [asyncio.create_task(load.stream(i)) for i in range(args.streams)]
        # Warm-up: the pipeline full and the streams open, before measuring.
        warm_deadline = time.monotonic() + args.warmup_s
        while time.monotonic() < warm_deadline:
            with contextlib.suppress(httpx.HTTPError, KeyError, ValueError):
                busy = (await probe.get("/v1/health", timeout=30)).json()["in_progress"]
                if busy >= args.running and load.streams_open >= args.streams:
                    break
            await asyncio.sleep(1)
        latencies: list[float] = []
        running: list[int] = []
        open_streams: list[int] = []
        errors = 0
        end = time.monotonic() + args.duration_s
        while time.monotonic() < end:
            open_streams.append(load.streams_open)
            t0 = time.perf_counter()
            try:
                r = await probe.get("/v1/health", timeout=10)
                latencies.append((time.perf_counter() - t0) * 1000)
                if r.status_code == 200:
                    running.append(r.json()["in_progress"])
                else:
                    errors += 1
            except httpx.HTTPError:
                errors += 1
            await asyncio.sleep(args.interval_ms / 1000)
        load.stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    if len(latencies) < 20:
        print(f"too few health samples ({len(latencies)}, {errors} errors)")
        return 1
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    print(
        f"health latency over {args.duration_s:.0f} s, {len(latencies)} samples: p50 {statistics.median(latencies):.1f}"
        f" ms, p95 {q[94]:.1f} ms, p99 {q[98]:.1f} ms, max {max(latencies):.1f} ms; errors {errors}"
    )
    print(
        f"event streams open while measuring: median {statistics.median(open_streams):.0f}, min {min(open_streams)}"
        f" (of {args.streams}); jobs in progress (health): median {statistics.median(running) if running else 0:.0f}"
        f", min {min(running, default=0)}; events received {load.events}; jobs submitted {load.submitted}, "
        f"ended {load.ended}"
    )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running service (default: start one on a free loopback port)")
    parser.add_argument("--streams", type=int, default=200, help="event streams held open")
    parser.add_argument("--running", type=int, default=16, help="jobs kept in the pipeline (max_inflight)")
    parser.add_argument("--steps", type=int, default=30, help="denoising steps per job")
    # About a full-size SVD step on one GPU: every running job moves one step a second, as in production.
    parser.add_argument("--step-ms", type=float, default=1000.0, help="simulated UNet call")
    parser.add_argument("--duration-s", type=float, default=30.0, help="how long health is measured")
    parser.add_argument(
        "--warmup-s", type=float, default=90.0, help="at most this long to fill the pipeline and open the streams"
    )
    parser.add_argument("--interval-ms", type=float, default=50.0, help="pause between health requests")
    parser.add_argument("--startup-s", type=float, default=240.0, help="at most this long for the service to start")
    parser.add_argument("--serve-log", help="keep the started service's log here (default: discarded)")
    args = parser.parse_args()
    proc = None
    with tempfile.TemporaryDirectory(prefix="svdpipe-health-") as data_dir:
        url = args.url
        if url is None:
            proc, url = _start_service(args, data_dir)
        bound = args.startup_s + args.warmup_s + args.duration_s + 60
        try:
            return asyncio.run(asyncio.wait_for(_measure(args, url, proc), bound))
        finally:
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)  # `svdpipe serve` shuts Serve and Ray down on Ctrl-C
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            if proc is not None and args.serve_log is not None:
                shutil.copy(Path(data_dir) / "serve.log", args.serve_log)


if __name__ == "__main__":
    sys.exit(main())
