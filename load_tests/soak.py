"""Soak: N jobs through a running `svdpipe serve` with a PostgreSQL job store; RSS at start and end, jobs lost.

    svdpipe serve --model tiny --stages 2 --replicas 2 --simulate-step-ms 50 --job-store $DSN --port 18399 &
    SVDPIPE_JOB_STORE=$DSN python load_tests/soak.py 1000 18399

Keeps up to 24 jobs in flight (backs off on 429), waits for every one to end, then counts statuses in the store:
lost = submitted - completed. RSS is of this machine's Serve replicas and stage actors (ps), in MiB.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time

import httpx
import numpy as np
import PIL.Image
import psycopg


def rss_mib() -> dict[str, list[int]]:
    """RSS of the svdpipe replicas and stage actors on this machine, by process title."""
    rows: dict[str, list[int]] = {}
    for line in subprocess.run(["ps", "-eo", "rss,args"], capture_output=True, text=True).stdout.splitlines()[1:]:
        kb, args = line.strip().split(" ", 1)
        title = args.split()[0].split(".")[0]
        if title.startswith(("ray::ServeReplica:svdpipe", "ray::StageWorker")):
            rows.setdefault(title, []).append(int(kb) // 1024)
    return rows


def main(n: int, port: int) -> None:
    buf = io.BytesIO()
    PIL.Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(buf, "PNG")
    png = buf.getvalue()
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
    print("start RSS MiB:", rss_mib(), flush=True)
    submitted: list[str] = []
    pending: set[str] = set()
    t0 = time.time()
    while len(submitted) < n or pending:
        while len(submitted) < n and len(pending) < 24:
            resp = client.post(
                "/v1/videos",
                files={"image": ("a.png", png, "image/png")},
                data={"num_inference_steps": "4", "num_frames": "2", "seed": str(len(submitted))},
            )
            if resp.status_code == 429:
                time.sleep(0.5)
                break
            resp.raise_for_status()
            submitted.append(resp.json()["id"])
            pending.add(submitted[-1])
        for job_id in list(pending):
            if client.get(f"/v1/videos/{job_id}").json()["status"] in ("completed", "failed", "cancelled"):
                pending.discard(job_id)
        time.sleep(0.2)
    elapsed = time.time() - t0
    print("end RSS MiB:", rss_mib(), flush=True)
    with psycopg.connect(os.environ["SVDPIPE_JOB_STORE"]) as conn:
        statuses = dict(conn.execute("SELECT status, count(*) FROM jobs GROUP BY status").fetchall())
        attempts, owners = conn.execute("SELECT max(attempts), count(DISTINCT owner) FROM jobs").fetchone()
    print(
        f"{n} jobs in {elapsed:.0f} s ({n / elapsed * 3600:.0f}/h); statuses {statuses}; max attempts {attempts}; "
        f"replicas that ran jobs {owners}; lost {n - statuses.get('completed', 0)}"
    )


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
