"""The bench's runner: a closed-loop workload through one engine per mode, and the single-process baseline.

Every mode is one Engine with the same model-holding actor count (N; sequential has one) and the same pool of
CPU mux actors: pipeline plans split each request's steps over all N actors; data-parallel plans run each
request whole on the least-loaded actor, exactly what N independent replicas would do, through the same
executor, so the two differ only in the plan.

Closed loop: C clients each send a request, wait for it, and send the next, until M requests were sent.
Open loop: requests sent at Poisson arrival times (metrics.poisson_arrivals), whatever is still running.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import logging
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from svdpipe.bench.metrics import (
    Sample,
    arrival_rate_from_fraction,
    clips_per_hour,
    cpu_busy_fraction,
    efficiency,
    exchange_ms_per_step,
    ideal_samples_per_hour,
    mode_comparisons,
    poisson_arrivals,
    request_work_s,
    summarise,
    summarise_open,
)
from svdpipe.bench.settings import BenchSettings, Loop, Mode
from svdpipe.profile import CostProfile

if TYPE_CHECKING:
    from svdpipe.config import EngineConfig, ResolvedParams, VideoParams
    from svdpipe.engine import Engine, EngineResult
    from svdpipe.local import LocalPipeline

logger = logging.getLogger(__name__)

OUTPUT_FORMAT = "npy"  # cheapest file writer: the decode's cost stays the VAE's


async def closed_loop(
    dispatch: Callable[[int], Awaitable[EngineResult]], total: int, concurrency: int, desc: str = ""
) -> list[Sample]:
    """`concurrency` clients, each sending its next request when the last one finishes, `total` in all."""
    from tqdm import tqdm

    sent = 0
    samples: list[Sample] = []
    bar = tqdm(total=total, desc=desc, unit="req", leave=False, disable=None)

    async def client() -> None:
        nonlocal sent
        while sent < total:
            index = sent
            sent += 1
            t0 = time.time()
            result = await dispatch(index)
            samples.append(_sample(index, t0, result))
            bar.update()

    try:
        await asyncio.gather(*(client() for _ in range(min(concurrency, total))))
    finally:
        bar.close()
    return samples


async def open_loop(
    dispatch: Callable[[int], Awaitable[EngineResult]], arrivals: Sequence[float], desc: str = ""
) -> list[Sample]:
    """One request per arrival time (seconds from now), each sent at its time whatever is still running, and
    counted from that time even when this process sends it late."""
    from tqdm import tqdm

    samples: list[Sample] = []
    bar = tqdm(total=len(arrivals), desc=desc, unit="req", leave=False, disable=None)
    start = time.time()

    async def send(index: int, at: float) -> None:
        await asyncio.sleep(max(0.0, start + at - time.time()))
        result = await dispatch(index)
        samples.append(_sample(index, start + at, result))
        bar.update()

    try:
        await asyncio.gather(*(send(i, at) for i, at in enumerate(arrivals)))
    finally:
        bar.close()
    return samples


def _sample(index: int, sent: float, result: EngineResult) -> Sample:
    done = time.time()
    # The engine's latency counts from admission (after the wait for a slot): admission is done minus it.
    return Sample(index, sent, done, done - result.latency_s, tuple(result.timings), result.video.trace)


def _cpu_times() -> tuple[float, float] | None:
    """(busy, total) jiffies of the whole machine from /proc/stat (Linux), None elsewhere."""
    try:
        with open("/proc/stat") as f:
            fields = [float(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def sample_image(width: int, height: int, seed: int = 7) -> bytes:
    import numpy as np
    import PIL.Image

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    PIL.Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def machine_info() -> dict[str, Any]:
    import ray
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "ray": ray.__version__,
        "gpu": gpu,
        "load_avg_1m": os.getloadavg()[0],
    }


class BenchRun:
    """One bench run: the profile and the local baseline in this process, then each mode's engine in turn."""

    def __init__(self, settings: BenchSettings) -> None:
        self.s = settings
        self.png = sample_image(settings.width, settings.height)
        self.profile: CostProfile | None = None
        self.local: LocalPipeline | None = None

    def video_params(self, seed: int) -> VideoParams:
        from svdpipe.config import VideoParams

        s = self.s
        return VideoParams(
            height=s.height,
            width=s.width,
            num_frames=s.frames,
            num_inference_steps=s.steps,
            decode_chunk_size=s.decode_chunk_size,
            seed=seed,
            num_clips=s.clips,
        )

    def resolved(self, seed: int = 0) -> ResolvedParams:
        from svdpipe.config import resolve_params
        from svdpipe.models import model_spec

        return resolve_params(self.video_params(seed), model_spec(self.s.model))

    def engine_config(self, mode: Mode) -> EngineConfig:
        from svdpipe.config import EngineConfig

        s = self.s
        return EngineConfig(
            model=s.model,
            dtype=s.dtype,
            transport=s.transport if mode == "pipeline" else "object_store",  # a replica hands nothing on
            num_gpus_per_actor=s.num_gpus_per_actor,
            num_cpus_per_actor=s.num_cpus_per_actor,
            # one actor: nothing to split, and a wide group cannot form
            latency_mode=s.latency_mode_for(mode) if mode != "sequential" else "off",
            parareal_tol=s.parareal_tol,
            parareal_max_iters=s.parareal_max_iters,
            wide_size=s.wide_size,
            num_stages=s.workers_for(mode),
            parallelism="data-parallel" if mode == "data-parallel" else "pipeline",
            num_mux_actors=s.mux_actors,
            simulate_step_ms=s.simulate_step_ms,
            simulate_encode_ms=s.simulate_encode_ms,
            simulate_decode_frame_ms=s.simulate_decode_frame_ms,
            torch_threads=s.torch_threads,
            max_inflight=max(16, s.concurrency_for(mode)),
            max_retries=0,  # a failure should show, not be retried into the timings
            max_clips=s.clips,
            name_prefix=f"bench-{mode}",
        )

    # 1. the cost profile and the single-process baseline, before any actor competes for the CPU
    def prepare(self) -> dict[str, Any]:
        import torch

        from svdpipe.local import LocalPipeline
        from svdpipe.models import load_model
        from svdpipe.profile import measure_profile

        s = self.s
        torch.set_num_threads(s.torch_threads)
        t0 = time.perf_counter()
        # The local path runs the same stand-ins as the actors (LocalPipeline installs them), serially: a latency
        # mode is measured against the plain single-process path (idle_latency_ratio), not against itself.
        config = self.engine_config("sequential").model_copy(update={"latency_mode": "off"})
        self.local = LocalPipeline(config, load_model(s.model, s.dtype, "auto"))
        if s.profile is not None:
            self.profile, source = CostProfile.load(s.profile), s.profile
        else:
            self.profile = measure_profile(self.local.model, self.png, self.resolved(), OUTPUT_FORMAT)
            source = "measured"
        if s.save_profile is not None:
            self.profile.save(s.save_profile)
        self.local_once(0)  # warm-up
        logger.info("profile and local baseline ready in %.1f s", time.perf_counter() - t0)
        return {"profile": {"source": source, **self.profile.to_json()}}

    def local_once(self, seed: int) -> float:
        """Seconds for one request on `svdpipe generate --engine local`'s path, PNG in, file bytes out."""
        from svdpipe.images import load_image
        from svdpipe.video import encode_video

        assert self.local is not None
        t0 = time.perf_counter()
        if self.s.clips > 1:  # diffusers' loop, clip after clip, streamed to a file
            with tempfile.TemporaryDirectory() as tmp:
                path = os.path.join(tmp, f"video.{OUTPUT_FORMAT}")
                self.local.generate_clips(load_image(self.png), self.video_params(seed), path)
                return time.perf_counter() - t0
        result = self.local.generate(load_image(self.png), self.video_params(seed))
        encode_video(result.frames, OUTPUT_FORMAT, result.params.fps)
        return time.perf_counter() - t0

    def work_s(self) -> float:
        """W per request: the simulated costs where set, the profile's otherwise."""
        s, p = self.s, self.profile
        assert p is not None

        def pick(ms: float | None, profiled_s: float) -> float:
            return ms / 1000 if ms is not None else profiled_s

        return s.clips * request_work_s(
            s.steps,
            pick(s.simulate_step_ms, p.typical_step_s),
            pick(s.simulate_encode_ms, p.encode_s),
            pick(s.simulate_decode_ms, p.decode_s),
        )

    def arrival_rate_per_s(self) -> float:
        """The open loop's R: --arrival-rate, or --arrival-rate-frac of N / W (N = --stages, whatever the mode,
        so that every mode sees the same arrivals)."""
        s = self.s
        if s.arrival_rate is not None:
            return s.arrival_rate
        assert s.arrival_rate_frac is not None  # BenchSettings: an open loop has one of the two
        return arrival_rate_from_fraction(s.arrival_rate_frac, s.stages, self.work_s())

    # 2. one mode on a running engine: its loops, then single requests on the idle system
    async def run_mode(self, mode: Mode, engine: Engine) -> dict[str, Any]:
        s = self.s
        workers = s.workers_for(mode)
        ideal = ideal_samples_per_hour(workers, self.work_s())
        sent = 0  # the request sent n-th has seed n: no two requests of a mode are the same video

        async def dispatch(seed: int) -> EngineResult:
            result = await engine.generate(self.png, self.video_params(seed), OUTPUT_FORMAT)
            if result.video.path is not None:  # a long video's file, in a work directory of its own
                await asyncio.to_thread(shutil.rmtree, os.path.dirname(result.video.path), True)
            return result

        out: dict[str, Any] = {
            "mode": mode,
            "workers": workers,
            "actors": len(engine.layout),
            "mux_actors": len(engine.mux_layout),
            "work_s": self.work_s(),
            "latency_mode": s.latency_mode_for(mode),
            "ideal_samples_per_hour": ideal,
        }
        for loop in s.loop_kinds:
            result = await self.run_loop(loop, mode, engine, lambda i, first=sent: dispatch(first + i))
            result["efficiency"] = efficiency(result["samples_per_hour"], ideal)
            out[f"{loop}_loop"] = result
            sent += result["requests"]
        # One request at a time on the idle system, alternating with the local path so both see the same
        # background load (this machine is shared).
        idle, local, idle_results = [], [], []
        for i in range(s.idle_requests):
            t0 = time.perf_counter()
            idle_results.append(await dispatch(sent + i))
            idle.append(time.perf_counter() - t0)
            local.append(self.local_once(sent + i))
        out |= {
            "idle_latency_s": statistics.median(idle) if idle else None,
            "local_idle_latency_s": statistics.median(local) if local else None,
            "idle_latency_ratio": statistics.median(idle) / statistics.median(local) if idle else None,
            "split_requests_idle": sum(r.split for r in idle_results),
            "helper_busy_s": engine.helper_busy_s,
            "exchange_ms_per_step": exchange_ms_per_step(idle_results),
            "parareal": [dataclasses.asdict(r.parareal) for r in idle_results if r.parareal is not None],
        }
        return out

    async def run_loop(
        self, loop: Loop, mode: Mode, engine: Engine, dispatch: Callable[[int], Awaitable[EngineResult]]
    ) -> dict[str, Any]:
        """One closed or open loop of `mode` on its running engine, summarised."""
        s = self.s
        model_actors = {spec.name for spec in engine.layout}
        load_before, cpu_before, split_before = os.getloadavg()[0], _cpu_times(), engine.split_requests
        if loop == "closed":
            concurrency = s.concurrency_for(mode)
            samples = await closed_loop(dispatch, s.num_requests, concurrency, desc=f"{mode} closed")
            out = {"concurrency": concurrency, **summarise(samples, s.workers_for(mode), model_actors)}
            # Frames at the steady pace of finished clips (metrics.clips_per_hour): long and short videos compare.
            per_hour = clips_per_hour(samples, model_actors, concurrency)
            out["frames_per_hour"] = per_hour * s.frames if per_hour is not None else None
            # The same pace in requests: the window of completions counts the drain, where requests held back
            # by the queue order all finish at once (efficiency over 1); this one ends at the last send.
            out["full_load_samples_per_hour"] = per_hour / s.clips if per_hour is not None else None
            if mode == "pipeline" and s.ray_timeline:
                import ray

                ray.timeline(filename=s.ray_timeline)
        else:
            rate = self.arrival_rate_per_s()
            arrivals = poisson_arrivals(rate, s.seed, s.open_requests, s.duration_s)
            if not arrivals:
                raise ValueError(f"no arrival within --duration-s {s.duration_s:g} at {rate:g} requests/s")
            samples = await open_loop(dispatch, arrivals, desc=f"{mode} open")
            out = {"seed": s.seed, **summarise_open(samples, rate, model_actors)}
        # The machine is shared: its load when the loop started and how busy all its CPUs were during it (every
        # process, not only this benchmark's).
        out["load_avg_1m_at_start"] = load_before
        out["machine_cpu_busy"] = cpu_busy_fraction(cpu_before, _cpu_times())
        out["split_requests"] = engine.split_requests - split_before
        return out

    async def run_modes(self) -> dict[str, dict[str, Any]]:
        from svdpipe.engine import Engine

        results: dict[str, dict[str, Any]] = {}
        for mode in self.s.modes:
            engine = Engine(self.engine_config(mode))
            t0 = time.perf_counter()
            await engine.start()
            started = time.perf_counter() - t0
            try:
                results[mode] = await self.run_mode(mode, engine)
            finally:
                await engine.shutdown()
            results[mode]["start_s"] = started
            for loop in self.s.loop_kinds:
                logger.info(
                    "%s, %s loop: %.0f samples/hour", mode, loop, results[mode][f"{loop}_loop"]["samples_per_hour"]
                )
        return results


def run_bench(settings: BenchSettings) -> dict[str, Any]:
    """Run every mode of `settings` and return the result object (`--json` prints it)."""
    from svdpipe.engine.sync import ensure_ray

    t0 = time.perf_counter()
    # 1. Ray once for the whole run; the profile and local baseline in this process
    ensure_ray(settings.address)
    bench = BenchRun(settings)
    prepared = bench.prepare()
    # 2. each mode on its own engine, shut down before the next
    modes = asyncio.run(bench.run_modes())
    out: dict[str, Any] = {
        "settings": settings.model_dump(mode="json"),
        "num_requests": settings.num_requests,
        "machine": machine_info(),
        **prepared,
        "modes": modes,
    }
    if "open" in settings.loop_kinds:
        out["arrival_rate_per_s"] = bench.arrival_rate_per_s()
    out |= mode_comparisons(modes)
    out["wall_s"] = time.perf_counter() - t0
    return out
