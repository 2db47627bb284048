"""SIGTERM (what Kubernetes sends) stops a real `svdpipe serve` gracefully: running jobs get the grace period,
the rest go back to the queue with their leases released, every process the server started exits, and a new
replica on the same store finishes every job exactly once.

Runs `svdpipe serve` as a subprocess with its own local Ray (tiny model, SQLite store in a tmp dir, a free
loopback port, simulated UNet step costs so that jobs are still running when the signal comes).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

from svdpipe.service.store import SQLiteJobStore
from tests.pg import free_port
from tests.ray.test_service import _png

ROOT = Path(__file__).resolve().parents[2]
FIELDS = {"num_inference_steps": "6", "num_frames": "2", "height": "32", "width": "32"}
GRACE_S = 3


class Server:
    """One `svdpipe serve` process in a session of its own, and every process below it."""

    def __init__(self, data_dir: Path, log: Path) -> None:
        self.port = free_port()
        self.log = log
        cmd = [
            sys.executable, "-m", "svdpipe", "serve", "--port", str(self.port), "--data-dir", str(data_dir),
            "--stages", "1", "--max-inflight", "2", "--num-cpus-per-actor", "0.05", "--torch-threads", "1",
            "--simulate-step-ms", "400", "--latency-mode", "off", "--shutdown-grace-s", str(GRACE_S),
            "--poll-interval-s", "0.2", "--lease-s", "5", "--replica-cpus", "0.1",
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own local Ray
        env["PYTHONPATH"] = str(ROOT)
        with log.open("wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.seen: dict[int, float] = {}  # pid -> create_time of every process seen below the server

    def wait_ready(self, timeout: float = 300) -> httpx.Client:
        deadline = time.time() + timeout
        while "serving on" not in self.output():
            assert self.proc.poll() is None, f"svdpipe serve exited early:\n{self.output()[-3000:]}"
            assert time.time() < deadline, f"svdpipe serve not ready:\n{self.output()[-3000:]}"
            time.sleep(0.5)
        self.note_processes()
        return httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=60)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def note_processes(self) -> None:
        root = psutil.Process(self.proc.pid)
        for p in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                self.seen[p.pid] = p.create_time()

    def survivors(self) -> list[str]:
        """Processes seen below the server, or in its session, that are still alive."""
        alive = []
        for p in psutil.process_iter(["pid", "create_time", "cmdline"]):
            try:
                in_session = os.getsid(p.pid) == self.proc.pid
            except OSError:
                continue
            if self.seen.get(p.pid) == p.info["create_time"] or in_session:
                alive.append(f"{p.pid}: {' '.join(p.info['cmdline'] or [])[:120]}")
        return alive

    def kill_all(self) -> None:
        """After a failure: end what is left of this server (the processes it started, by pid)."""
        for pid, created in self.seen.items():
            try:
                p = psutil.Process(pid)
                if p.create_time() == created:
                    p.kill()
            except psutil.Error:
                pass


def _status(client: httpx.Client, job_id: str) -> str:
    return client.get(f"/v1/videos/{job_id}").json()["status"]


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_sigterm_hands_running_jobs_back_and_a_new_replica_finishes_each_once(tmp_path):
    data = tmp_path / "data"
    first = Server(data, tmp_path / "first.log")
    second = None
    try:
        # 1. Six jobs on the first replica; SIGTERM once two are running.
        with first.wait_ready() as client:
            ids = []
            for i in range(6):
                resp = client.post(
                    "/v1/videos", files={"image": ("in.png", _png(), "image/png")}, data={**FIELDS, "seed": str(i)}
                )
                assert resp.status_code == 202, resp.text
                ids.append(resp.json()["id"])
            _wait_for(lambda: _status(client, ids[0]) == "in_progress", 120, "the first job to start")
            first.note_processes()
        first.proc.send_signal(signal.SIGTERM)
        # 2. It stops by itself, cleanly: exit status 0, no Ray abort, nothing of it left running.
        rc = first.proc.wait(timeout=GRACE_S + 120)
        out = first.output()
        assert rc == 0, out[-3000:]
        assert "SIGTERM received" not in out and "Aborted" not in out, out[-3000:]
        assert "svdpipe: stopped" in out
        _wait_for(lambda: not first.survivors(), 30, f"the first server's processes to exit: {first.survivors()}")
        # 3. Every job is done or back in the queue, lease released: nothing is left to expire.
        with SQLiteJobStore(data) as store:
            after_first = {i: store.get(i) for i in ids}
        assert {r.status for r in after_first.values()} <= {"completed", "queued"}, after_first
        assert all(r.owner is None and r.lease_expires_at is None for r in after_first.values() if r.status == "queued")
        done_first = {i: r.completed_at for i, r in after_first.items() if r.status == "completed"}
        # 4. A new replica on the same store finishes the rest; none runs twice.
        second = Server(data, tmp_path / "second.log")
        with second.wait_ready() as client:
            _wait_for(lambda: all(_status(client, i) in ("completed", "failed") for i in ids), 300, "all six jobs")
            for job_id in ids:
                assert client.get(f"/v1/videos/{job_id}/content").status_code == 200
        with SQLiteJobStore(data) as store:
            final = {i: store.get(i) for i in ids}
        assert {r.status for r in final.values()} == {"completed"}, final
        assert {i: final[i].completed_at for i in done_first} == done_first  # finished in the grace: not re-run
        assert all(r.attempts <= 2 for r in final.values())
        second.proc.send_signal(signal.SIGTERM)
        assert second.proc.wait(timeout=GRACE_S + 120) == 0, second.output()[-3000:]
        _wait_for(lambda: not second.survivors(), 30, f"the second server's processes to exit: {second.survivors()}")
    finally:
        for server in (first, second):
            if server is not None and server.proc.poll() is None:
                server.proc.kill()
            if server is not None:
                server.kill_all()
