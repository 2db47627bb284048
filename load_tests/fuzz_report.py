"""After a fuzz run against `svdpipe serve`: wait (bounded) for the jobs it created, then count them by status
and print the distinct errors of the failed ones. Accepted means done: `failed` should be 0.

    python load_tests/fuzz_report.py http://127.0.0.1:8000 [wait_s]
"""

from __future__ import annotations

import collections
import sys
import time

import httpx


def all_jobs(client: httpx.Client) -> list[dict]:
    jobs, after = [], None
    while True:
        page = client.get("/v1/videos", params={"limit": 100, **({"after": after} if after else {})}).json()
        jobs += page["data"]
        if not page["has_more"]:
            return jobs
        after = page["last_id"]


def main(base: str, wait_s: float) -> int:
    with httpx.Client(base_url=base, timeout=60) as client:
        deadline = time.time() + wait_s
        while True:
            jobs = all_jobs(client)
            counts = collections.Counter(j["status"] for j in jobs)
            if counts["queued"] + counts["in_progress"] == 0 or time.time() > deadline:
                break
            time.sleep(2)
    print(f"jobs created {len(jobs)}: " + ", ".join(f"{s} {n}" for s, n in sorted(counts.items())))
    for error, n in collections.Counter(j["error"] for j in jobs if j["status"] == "failed").most_common():
        print(f"  failed x{n}: {error}")
    slow = [j for j in jobs if j["status"] in ("queued", "in_progress")]
    if slow:
        print(f"  still running after {wait_s:.0f} s: {len(slow)}")
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 600.0))
