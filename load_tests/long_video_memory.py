"""The mux actor's peak memory for a long video against one clip: a long video must not grow with its length.

Runs one engine per clip count (a fresh mux actor each time, so its peak is that video's), with the stand-in
model (simulated costs: the VAE's stand-in makes frames of the requested size, zeros) and reads the mux actor's
peak resident set (VmHWM in /proc/<pid>/status) when the video is done.

    python load_tests/long_video_memory.py --clips 1 40 --frames 14 --height 576 --width 1024 --format mp4
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import tempfile
import time


def status_mb(pid: int, field: str) -> float:
    """A /proc/<pid>/status figure in MB: VmHWM (peak resident), RssAnon (private), RssShmem (shared memory: the
    object store's pages this process has read, which the kernel counts in its resident set too)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for pid {pid}")


async def sample_peaks(pid: int, peaks: dict[str, float], stop: asyncio.Event) -> None:
    """The highest private and shared resident memory seen, every 50 ms until `stop`."""
    while not stop.is_set():
        for field in ("RssAnon", "RssShmem"):
            peaks[field] = max(peaks.get(field, 0.0), status_mb(pid, field))
        await asyncio.sleep(0.05)


async def one_video(clips: int, args: argparse.Namespace, png: bytes) -> dict:
    import ray
    from ray.util.state import list_actors

    from svdpipe.config import EngineConfig, VideoParams
    from svdpipe.engine import Engine

    config = EngineConfig(
        num_stages=args.stages,
        num_mux_actors=1,
        simulate_step_ms=args.step_ms,
        simulate_encode_ms=5,
        simulate_decode_frame_ms=args.decode_frame_ms,
        torch_threads=1,
        num_cpus_per_actor=0.05,
        max_clips=max(clips, 1),
        name_prefix=f"memory-{clips}",
    )
    engine = Engine(config)
    await engine.start()
    work = tempfile.mkdtemp(prefix="svdpipe-memory-")
    try:
        mux_name = engine.mux_layout[0].name
        gcs = ray.get_runtime_context().gcs_address  # this Ray's, not whichever else runs here
        alive = list_actors(address=gcs, filters=[("name", "=", mux_name), ("state", "=", "ALIVE")])
        pid = next(a.pid for a in alive)
        before = status_mb(pid, "VmHWM")
        peaks: dict[str, float] = {}
        stop = asyncio.Event()
        sampler = asyncio.ensure_future(sample_peaks(pid, peaks, stop))
        params = VideoParams(
            height=args.height,
            width=args.width,
            num_frames=args.frames,
            num_inference_steps=args.steps,
            decode_chunk_size=args.decode_chunk_size,
            num_clips=clips,
            seed=0,
        )
        t0 = time.time()
        result = await engine.generate(png, params, args.format, work_dir=work)
        seconds = time.time() - t0
        stop.set()
        await sampler
        size = result.video.path and __import__("os").path.getsize(result.video.path)
        return {
            "clips": clips,
            "frames": clips * args.frames,
            "mux_peak_rss_mb": round(status_mb(pid, "VmHWM"), 1),
            "mux_peak_private_mb": round(peaks["RssAnon"], 1),
            "mux_peak_shared_mb": round(peaks["RssShmem"], 1),
            "mux_rss_after_start_mb": round(before, 1),
            "seconds": round(seconds, 1),
            "file_mb": round((size or len(result.video.data)) / 2**20, 1),
        }
    finally:
        await engine.shutdown()
        shutil.rmtree(work, ignore_errors=True)
        del ray


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, nargs="+", default=[1, 40])
    p.add_argument("--frames", type=int, default=14)
    p.add_argument("--height", type=int, default=576)
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--stages", type=int, default=2)
    p.add_argument("--decode-chunk-size", type=int, default=7)
    p.add_argument("--step-ms", type=float, default=5.0)
    p.add_argument("--decode-frame-ms", type=float, default=5.0)
    p.add_argument("--format", default="mp4", choices=["mp4", "webm", "gif", "npy"])
    args = p.parse_args()

    import ray

    from svdpipe.bench.workload import sample_image

    # A Ray of its own (others may run on this machine), with the dashboard: the state API finds the mux's pid.
    ray.init(address="local", num_cpus=4, include_dashboard=True, log_to_driver=False)
    png = sample_image(args.width, args.height)
    rows = [asyncio.run(one_video(k, args, png)) for k in args.clips]
    for row in rows:
        print(json.dumps(row))
    if len(rows) >= 2:
        for key in ("mux_peak_rss_mb", "mux_peak_private_mb"):
            ratio = rows[-1][key] / rows[0][key]
            print(f"{key}: {rows[-1]['clips']} clips / {rows[0]['clips']}: {ratio:.3f}")


if __name__ == "__main__":
    main()
