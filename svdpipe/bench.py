"""`svdpipe bench`: a closed-loop workload comparing pipeline, data-parallel and sequential serving.

Modes, run one after the other in one process with the same model, sizes, steps and simulated step cost:

- pipeline: one Engine with N denoise stages (plus encoder and decoder actors unless --colocate-codec);
- data-parallel: N Engines of one actor each (encode, all T steps, decode), each request sent to the
  replica with the fewest requests in flight;
- sequential: one such replica.

Closed loop: C clients each send a request, wait for it, and send the next, until M requests were sent.

Steady-state throughput (fill excluded). With completion times sorted, c[0] <= ... <= c[M-1], and W workers
(N stages, N replicas, or 1), the first W completions are the pipeline fill (or, for replicas, the first
round). Throughput is the rate between completion a = W - 1 and completion b = M - 1:

    throughput = (b - a) / (c[b] - c[a])    samples/s,

with a moved later, if needed, so that b - a is a multiple of W: replicas complete in rounds of W, and a
window of whole rounds measures them without bias (a pipeline completes evenly, so any window would do).
Latency percentiles, per-hop times and busy fractions use the requests completing in (c[a], c[b]].

Ideal: W workers each doing only UNet steps, W / (T x step) samples/s, where step is --simulate-step-ms or,
for the real UNet, the profiled median step cost. Efficiency = measured / ideal. The codec-aware bound also
counts encode and decode (profiled) on whichever actor does them; efficiency_vs_bound = measured / bound.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import platform
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

from svdpipe.config import Dtype, LatencyMode, Transport
from svdpipe.profile import CostProfile, stage_loads, step_weights

if TYPE_CHECKING:
    from svdpipe.config import EngineConfig, ResolvedParams, VideoParams
    from svdpipe.engine import Engine, EngineResult
    from svdpipe.local import LocalPipeline
    from svdpipe.models import SVDModel
    from svdpipe.state import StageTrace
    from svdpipe.timing import HopTiming

logger = logging.getLogger(__name__)

Mode = Literal["pipeline", "data-parallel", "sequential"]
MODES: tuple[Mode, ...] = get_args(Mode)
_OUTPUT_FORMAT = "npy"  # cheapest file writer: the decoder's cost stays the VAE's


# ---------------------------------------------------------------- pure arithmetic


def ideal_samples_per_hour(workers: int, num_steps: int, step_s: float) -> float:
    """W workers (stages or replicas) busy with UNet steps only: W / (T x step) samples/s, as per hour."""
    if workers < 1 or num_steps < 1 or not step_s > 0:
        raise ValueError(f"need workers >= 1, steps >= 1, step > 0; got {workers}, {num_steps}, {step_s}")
    return 3600.0 * workers / (num_steps * step_s)


def bound_samples_per_hour(loads_s: Sequence[float], replicas: int = 1) -> float:
    """What `replicas` chains of actors with these per-request loads can reach: limited by the busiest actor."""
    busiest = max(loads_s)
    if not busiest > 0:
        raise ValueError("actor loads must include a positive one")
    return 3600.0 * replicas / busiest


def efficiency(measured: float, ideal: float) -> float:
    """measured / ideal (0 when there is no ideal)."""
    return measured / ideal if ideal > 0 else 0.0


def steady_state_window(num_completions: int, workers: int) -> tuple[int, int]:
    """Indices (a, b) into the sorted completion times over which throughput is measured.

    a = workers - 1 skips the fill (the first `workers` completions); b is the last completion; a moves later
    until b - a is a whole number of rounds of `workers` completions.
    """
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    if num_completions < 2 * workers:
        raise ValueError(
            f"{num_completions} completions cannot give a steady-state window for {workers} workers: "
            f"use at least {2 * workers} requests"
        )
    b = num_completions - 1
    a = workers - 1 + (b - (workers - 1)) % workers
    return a, b


def steady_state_rate(completions: Sequence[float], workers: int) -> float:
    """Samples per second between the window's first and last completion (see steady_state_window)."""
    done = sorted(completions)
    a, b = steady_state_window(len(done), workers)
    span = done[b] - done[a]
    if span <= 0:
        raise ValueError("completion times do not advance over the steady-state window")
    return (b - a) / span


def least_loaded(loads: Sequence[int]) -> int:
    """The replica with the fewest requests in flight; the lowest index among equals."""
    if not loads:
        raise ValueError("no replicas")
    return min(range(len(loads)), key=lambda i: (loads[i], i))


def projection(profile: CostProfile, num_steps: int, gpus: int, hop_s: float) -> dict[str, dict[str, float]]:
    """Throughput and idle latency of each mode on `gpus` GPUs, from per-phase costs and a per-hop overhead.

    Pure arithmetic, for machines we cannot measure on. sequential: one GPU does everything; data-parallel:
    `gpus` such replicas; pipeline: `gpus` stages with the codec colocated (encode on the first, decode on the
    last), split by step count and by cost (step_weights), or `gpus - 2` stages with encoder and decoder on
    GPUs of their own. Every hand-off (dispatch, stage to stage, result) adds `hop_s` to latency, and each
    actor pays it once per request as turnaround, so it is added to the busiest actor's cycle too.
    """
    if gpus < 1 or num_steps < gpus:
        raise ValueError(f"need 1 <= gpus <= steps, got {gpus} GPUs for {num_steps} steps")
    whole = profile.encode_s + num_steps * profile.typical_step_s + profile.decode_s
    rows: dict[str, dict[str, float]] = {
        "sequential": {"gpus": 1, "bottleneck_s": whole, "hops": 2},
        "data-parallel": {"gpus": gpus, "bottleneck_s": whole, "hops": 2},
    }
    for name, weights in (
        ("pipeline, count split", None),
        ("pipeline, cost-balanced", step_weights(profile, num_steps, colocate_codec=True)),
    ):
        loads = stage_loads(profile, num_steps, gpus, True, weights)
        rows[name] = {"gpus": gpus, "bottleneck_s": max(loads), "hops": gpus + 1}
    if gpus >= 3:  # the same GPUs as gpus - 2 denoise stages plus an encoder GPU and a decoder GPU
        loads = stage_loads(profile, num_steps, gpus - 2, False, None)
        rows["pipeline, codec apart"] = {"gpus": gpus, "bottleneck_s": max(loads), "hops": gpus + 1}
    for name, row in rows.items():
        replicas = row["gpus"] if name == "data-parallel" else 1
        row["samples_per_hour"] = bound_samples_per_hour([row["bottleneck_s"] + hop_s], replicas)
        # Ideal: every GPU busy with UNet steps only (for "codec apart", 2 of them never run a step).
        row["ideal_samples_per_hour"] = ideal_samples_per_hour(int(row["gpus"]), num_steps, profile.typical_step_s)
        row["efficiency"] = efficiency(row["samples_per_hour"], row["ideal_samples_per_hour"])
        row["idle_latency_s"] = whole + row["hops"] * hop_s
    return rows


# ---------------------------------------------------------------- settings


class BenchSettings(BaseModel):
    """One `svdpipe bench` run."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = Field("tiny", description="Model, as for `svdpipe generate --model`.")
    stages: int = Field(7, ge=1, le=64, description="N: denoise stages (pipeline) and replicas (data-parallel).")
    steps: int = Field(21, ge=1, le=1000, description="T: denoising steps per request.")
    frames: int = Field(2, ge=1, le=256, description="Frames per video (small: encode/decode are real CPU work).")
    height: int = Field(32, ge=8, le=4096, description="Video height in pixels.")
    width: int = Field(32, ge=8, le=4096, description="Video width in pixels.")
    simulate_step_ms: float | None = Field(
        None,
        gt=0.0,
        description="Replace each UNet call by a CPU-free wait of this many ms: the cost of a full guidance "
        "batch of two; a CFG-split half (a batch of one) waits half of it.",
    )
    latency_mode: LatencyMode = Field(
        "off", description="Pipeline mode's single-request latency mode (off, cfg-split, auto, parareal)."
    )
    parareal_tol: float = Field(0.0, ge=0.0, le=100.0, description="Parareal tolerance (latency_mode parareal).")
    parareal_max_iters: int | None = Field(None, ge=1, le=64, description="Parareal iteration cap.")
    transport: Transport = Field("auto", description="Latent transport of the pipeline mode.")
    dtype: Dtype = Field("fp32", description="Weight and activation dtype (fp16 for real SVD on GPUs).")
    num_gpus_per_actor: float = Field(0.0, ge=0.0, le=8.0, description="GPUs per actor (0: CPU actors).")
    modes: tuple[Mode, ...] = Field(MODES, min_length=1, description="Which modes to run, in this order.")
    colocate_codec: bool = Field(False, description="Pipeline mode: encode in the first stage, decode in the last.")
    balance: bool = Field(True, description="Balance step ranges by profiled cost (EngineConfig.step_weights).")
    profile: str | None = Field(None, description="Read the cost profile from this JSON file instead of measuring.")
    save_profile: str | None = Field(None, description="Write the cost profile to this JSON file.")
    requests: int | None = Field(None, ge=2, le=100_000, description="M: requests per mode (default 4N).")
    concurrency: int | None = Field(None, ge=1, le=4096, description="C: requests in flight (default 2 x workers).")
    idle_requests: int = Field(3, ge=0, le=100, description="Single requests on the idle system, per mode.")
    torch_threads: int = Field(1, ge=1, le=256, description="torch threads per actor and in this process.")
    num_cpus_per_actor: float = Field(0.1, gt=0.0, le=64.0, description="CPUs Ray reserves per actor.")
    address: str | None = Field(None, description="Ray cluster to join (default: start a local one).")
    ray_timeline: str | None = Field(None, description="Write Ray's timeline of the pipeline run to this file.")

    @model_validator(mode="after")
    def _cross_field(self) -> BenchSettings:
        if self.steps < self.stages:
            raise ValueError(f"--steps ({self.steps}) must be at least --stages ({self.stages})")
        if len(set(self.modes)) != len(self.modes):
            raise ValueError(f"--modes lists a mode twice: {','.join(self.modes)}")
        needed = 2 * max(self.workers_for(m) for m in self.modes)
        if self.requests is not None and self.requests < needed:
            raise ValueError(f"--requests must be at least {needed}: two rounds of the largest mode's workers")
        return self

    def workers_for(self, mode: Mode) -> int:
        return 1 if mode == "sequential" else self.stages

    @property
    def num_requests(self) -> int:
        return self.requests if self.requests is not None else 4 * self.stages

    def concurrency_for(self, mode: Mode) -> int:
        return self.concurrency if self.concurrency is not None else 2 * self.workers_for(mode)


# ---------------------------------------------------------------- measurement


@dataclass(frozen=True)
class Sample:
    """One finished request of the closed loop (time.time() seconds, the clock of the stage traces)."""

    index: int
    replica: int
    sent: float
    done: float
    timings: tuple[HopTiming, ...]
    trace: tuple[StageTrace, ...]


Dispatch = Callable[[int], Awaitable[tuple[int, "EngineResult"]]]


async def closed_loop(dispatch: Dispatch, total: int, concurrency: int, desc: str = "") -> list[Sample]:
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
            replica, result = await dispatch(index)
            samples.append(Sample(index, replica, t0, time.time(), tuple(result.timings), result.video.trace))
            bar.update()

    try:
        await asyncio.gather(*(client() for _ in range(min(concurrency, total))))
    finally:
        bar.close()
    return samples


def summarise(samples: Sequence[Sample], workers: int) -> dict[str, Any]:
    """Steady-state throughput, latency, per-hop time and busy fractions of one closed-loop run."""
    from svdpipe.timing import busy_fraction, median, percentile

    done = sorted(s.done for s in samples)
    a, b = steady_state_window(len(done), workers)
    start, end = done[a], done[b]
    measured = [s for s in samples if start < s.done <= end]
    latencies = [s.done - s.sent for s in measured]
    # Hops into every stage but the first: from the input being ready (previous stage finished) and the
    # stage being free, to the stage starting. Split by whether the stage was idle when the input came
    # (the hand-off's latency) or busy (the input waited: the stage's own turnaround between requests).
    later = [t for s in measured for t in s.timings[1:]]
    idle_hops = [t.hop_ms for t in later if t.queue_ms <= 0]
    busy_hops = [t.hop_ms for t in later if t.queue_ms > 0]
    # Into the first stage: the engine submitting the chain (or the stage freeing up) -> stage started.
    dispatch = [s.timings[0].hop_ms for s in measured]
    steps = [t.step_ms for s in measured for t in s.timings if t.steps]
    codec = [t.codec_ms for s in measured for t in s.timings if t.codec_ms > 0]
    # Busy fraction of each stage over the span in which it worked on the measured requests (the first
    # one's start to the last one's finish): a window of completions would count the upstream stages'
    # idle drain at the end of the run.
    intervals: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for s in measured:
        for entry in s.trace:
            intervals[entry.stage].append((entry.started, entry.finished))
    return {
        "requests": len(samples),
        "measured_requests": b - a,
        "window_s": end - start,
        "samples_per_hour": 3600.0 * steady_state_rate(done, workers),
        "latency_p50_s": percentile(latencies, 50),
        "latency_p95_s": percentile(latencies, 95),
        "hops_per_request": len(measured[0].timings) - 1 if measured else 0,
        "per_hop_ms": median(t.hop_ms for t in later) if later else None,
        "per_hop_p95_ms": percentile([t.hop_ms for t in later], 95) if later else None,
        "hop_into_idle_stage_ms": median(idle_hops) if idle_hops else None,
        "hop_into_busy_stage_ms": median(busy_hops) if busy_hops else None,
        "dispatch_ms": median(dispatch),
        "stage_step_ms": median(steps) if steps else None,
        "codec_ms": median(codec) if codec else None,  # encode or decode, on whichever actor does it
        "busy_fraction": {stage: round(busy_fraction(iv), 4) for stage, iv in sorted(intervals.items())},
    }


def _cpu_times() -> tuple[float, float] | None:
    """(busy, total) jiffies of the whole machine from /proc/stat (Linux), None elsewhere."""
    try:
        with open("/proc/stat") as f:
            fields = [float(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def cpu_busy_fraction(before: tuple[float, float] | None, after: tuple[float, float] | None) -> float | None:
    """Share of the machine's CPU time that was busy between two _cpu_times() readings (every process)."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])


def _test_image(width: int, height: int, seed: int = 7) -> bytes:
    import io

    import numpy as np
    import PIL.Image

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    PIL.Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


class _Bench:
    """One bench run: the model and profile in this process, then each mode's engines in turn."""

    def __init__(self, settings: BenchSettings) -> None:
        self.s = settings
        self.png = _test_image(settings.width, settings.height)
        self.model: SVDModel | None = None
        self.profile: CostProfile | None = None
        self.local: LocalPipeline | None = None

    def video_params(self, seed: int) -> VideoParams:
        from svdpipe.config import VideoParams

        s = self.s
        return VideoParams(height=s.height, width=s.width, num_frames=s.frames, num_inference_steps=s.steps, seed=seed)

    def resolved(self, seed: int = 0) -> ResolvedParams:
        from svdpipe.config import resolve_params
        from svdpipe.models import model_spec

        return resolve_params(self.video_params(seed), model_spec(self.s.model), self.s.stages)

    # 1. the cost profile and the single-process baseline, before any actor competes for the CPU
    def prepare(self) -> dict[str, Any]:
        import torch

        from svdpipe.models import load_model
        from svdpipe.profile import measure_profile

        s = self.s
        torch.set_num_threads(s.torch_threads)
        t0 = time.perf_counter()
        self.model = load_model(s.model, s.dtype, "auto")
        simulate = s.simulate_step_ms / 1000 if s.simulate_step_ms is not None else None
        if s.profile is not None:
            self.profile, source = CostProfile.load(s.profile), s.profile
        else:
            self.profile = measure_profile(self.model, self.png, self.resolved(), _OUTPUT_FORMAT, simulate)
            source = "measured"
        if s.save_profile is not None:
            self.profile.save(s.save_profile)
        self.local = self.local_pipeline()
        self.local_once(0)  # warm-up
        logger.info("profile and local baseline ready in %.1f s", time.perf_counter() - t0)
        return {"profile": {"source": source, **self.profile.to_json()}}

    def local_pipeline(self) -> LocalPipeline:
        from svdpipe.config import EngineConfig
        from svdpipe.local import LocalPipeline

        config = EngineConfig(
            model=self.s.model,
            dtype=self.s.dtype,
            num_stages=self.s.stages,
            simulate_step_ms=self.s.simulate_step_ms,
            torch_threads=self.s.torch_threads,
        )
        return LocalPipeline(config, self.model)

    def local_once(self, seed: int) -> float:
        """Seconds for one request on `svdpipe generate --engine local`'s path, PNG in, file bytes out."""
        from svdpipe.images import load_image
        from svdpipe.video import encode_video

        assert self.local is not None
        t0 = time.perf_counter()
        result = self.local.generate(load_image(self.png), self.video_params(seed))
        encode_video(result.frames, _OUTPUT_FORMAT, result.params.fps)
        return time.perf_counter() - t0

    def engine_config(self, mode: Mode, replica: int = 0) -> EngineConfig:
        from svdpipe.config import EngineConfig

        s = self.s
        common: dict[str, Any] = {
            "model": s.model,
            "simulate_step_ms": s.simulate_step_ms,
            "torch_threads": s.torch_threads,
            "num_cpus_per_actor": s.num_cpus_per_actor,
            "num_gpus_per_actor": s.num_gpus_per_actor,
            "dtype": s.dtype,
            "max_inflight": max(16, s.concurrency_for(mode)),
            "max_retries": 0,  # a failure should show, not be retried into the timings
        }
        if mode == "pipeline":
            return EngineConfig(
                **common,
                latency_mode=s.latency_mode,
                parareal_tol=s.parareal_tol,
                parareal_max_iters=s.parareal_max_iters,
                num_stages=s.stages,
                transport=s.transport,
                colocate_codec=s.colocate_codec,
                step_weights=self.weights(),
                name_prefix="bench-pipeline",
            )
        # A one-actor replica hands nothing on, so its transport is moot; the object store needs no group.
        return EngineConfig(
            **common, num_stages=1, colocate_codec=True, transport="object_store", name_prefix=f"bench-replica{replica}"
        )

    def weights(self) -> tuple[float, ...] | None:
        if not self.s.balance or self.profile is None:
            return None
        return step_weights(self.profile, self.s.steps, self.s.colocate_codec)

    def step_s(self) -> float:
        if self.s.simulate_step_ms is not None:
            return self.s.simulate_step_ms / 1000
        assert self.profile is not None
        return self.profile.typical_step_s

    def bounds(self, mode: Mode) -> tuple[float, list[list[int]]]:
        """Codec-aware bound (samples/hour) and the step ranges of `mode`."""
        from svdpipe.partition import partition_steps

        assert self.profile is not None
        s = self.s
        if mode == "pipeline":
            weights = self.weights()
            loads = stage_loads(self.profile, s.steps, s.stages, s.colocate_codec, weights)
            ranges = partition_steps(s.steps, s.stages, weights)
            return bound_samples_per_hour(loads), [[r.start, r.stop] for r in ranges]
        loads = stage_loads(self.profile, s.steps, 1, True, None)
        return bound_samples_per_hour(loads, self.s.workers_for(mode)), [[0, s.steps]]

    # 2. one mode on running engines
    async def run_mode(self, mode: Mode, engines: Sequence[Engine]) -> dict[str, Any]:
        s = self.s
        workers = s.workers_for(mode)
        loads = [0] * len(engines)

        async def dispatch(index: int) -> tuple[int, EngineResult]:
            replica = least_loaded(loads)
            loads[replica] += 1
            try:
                return replica, await engines[replica].generate(self.png, self.video_params(index), _OUTPUT_FORMAT)
            finally:
                loads[replica] -= 1

        concurrency = s.concurrency_for(mode)
        load_before, cpu_before = os.getloadavg()[0], _cpu_times()
        samples = await closed_loop(dispatch, s.num_requests, concurrency, desc=mode)
        cpu_busy = cpu_busy_fraction(cpu_before, _cpu_times())
        if mode == "pipeline" and s.ray_timeline:
            import ray

            ray.timeline(filename=s.ray_timeline)
        # One request at a time on the idle system, alternating with the local path so both see the same
        # background load (this machine is shared).
        split_loaded = sum(e.split_requests for e in engines)
        idle, local, idle_results = [], [], []
        for i in range(s.idle_requests):
            t0 = time.perf_counter()
            idle_results.append((await dispatch(s.num_requests + i))[1])
            idle.append(time.perf_counter() - t0)
            local.append(self.local_once(s.num_requests + i))
        ideal = ideal_samples_per_hour(workers, s.steps, self.step_s())
        bound, ranges = self.bounds(mode)
        out: dict[str, Any] = {
            "mode": mode,
            "workers": workers,
            "actors": sum(len(e.layout) for e in engines),
            "concurrency": concurrency,
            "step_ranges": ranges,
            **summarise(samples, workers),
            "idle_latency_s": statistics.median(idle) if idle else None,
            "local_idle_latency_s": statistics.median(local) if local else None,
            # The machine is shared: its load when the mode started and how busy all its CPUs were during
            # the closed loop (every process, not only this benchmark's).
            "load_avg_1m_at_start": load_before,
            "machine_cpu_busy": cpu_busy,
            "idle_latency_ratio": statistics.median(idle) / statistics.median(local) if idle else None,
            "latency_mode": s.latency_mode if mode == "pipeline" else "off",
            "split_requests_loaded": split_loaded,  # of the closed loop's requests
            "split_requests_idle": sum(r.split for r in idle_results),
            "helper_busy_s": sum(e.helper_busy_s for e in engines),
            "exchange_ms_per_step": _exchange_ms(idle_results),
            "parareal": [dataclasses.asdict(r.parareal) for r in idle_results if r.parareal is not None],
        }
        out["ideal_samples_per_hour"] = ideal
        out["efficiency"] = efficiency(out["samples_per_hour"], ideal)
        out["bound_samples_per_hour"] = bound
        out["efficiency_vs_bound"] = efficiency(out["samples_per_hour"], bound)
        return out

    async def run_modes(self) -> dict[str, dict[str, Any]]:
        from svdpipe.engine import Engine

        s = self.s
        results: dict[str, dict[str, Any]] = {}
        replicas: list[Engine] = []
        try:
            for mode in s.modes:
                if mode == "pipeline":
                    engine = Engine(self.engine_config("pipeline"))
                    t0 = time.perf_counter()
                    await engine.start()
                    started = time.perf_counter() - t0
                    try:
                        results[mode] = await self.run_mode(mode, [engine])
                    finally:
                        await engine.shutdown()
                else:
                    # data-parallel and sequential share replicas: sequential is replica 0 alone.
                    wanted = s.workers_for(mode)
                    t0 = time.perf_counter()
                    if len(replicas) < wanted:
                        new = [Engine(self.engine_config(mode, i)) for i in range(len(replicas), wanted)]
                        replicas.extend(new)
                        await asyncio.gather(*(e.start() for e in new))
                    started = time.perf_counter() - t0
                    results[mode] = await self.run_mode(mode, replicas[:wanted])
                results[mode]["start_s"] = started
                logger.info("%s: %.0f samples/hour", mode, results[mode]["samples_per_hour"])
        finally:
            await asyncio.gather(*(e.shutdown() for e in replicas), return_exceptions=True)
        return results


def _exchange_ms(results: Sequence[EngineResult]) -> float | None:
    """Mean per-step CFG exchange cost (round trip minus the helper's compute) over split steps."""
    steps = sum(t.split_steps for r in results for t in r.video.trace)
    if not steps:
        return None
    return sum(t.exchange_s for r in results for t in r.video.trace) * 1000 / steps


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


def run_bench(settings: BenchSettings) -> dict[str, Any]:
    """Run every mode of `settings` and return the result object (`--json` prints it)."""
    from svdpipe.engine.sync import ensure_ray

    t0 = time.perf_counter()
    # 1. Ray once for the whole run; the profile and local baseline in this process
    ensure_ray(settings.address)
    bench = _Bench(settings)
    prepared = bench.prepare()
    # 2. each mode on its own engines, shut down before the next
    modes = asyncio.run(bench.run_modes())
    out: dict[str, Any] = {
        "settings": settings.model_dump(mode="json"),
        "num_requests": settings.num_requests,
        "machine": machine_info(),
        **prepared,
        "modes": modes,
    }
    if "pipeline" in modes:
        out["idle_latency_ratio"] = modes["pipeline"]["idle_latency_ratio"]
    out["wall_s"] = time.perf_counter() - t0
    return out


# ---------------------------------------------------------------- output


def format_table(result: dict[str, Any]) -> str:
    """The human-readable summary of a result object."""
    s, prof = result["settings"], result["profile"]
    step = s["simulate_step_ms"]

    def num(value: float | None, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    lines = [
        f"model {s['model']}, N={s['stages']}, T={s['steps']}, {s['frames']} frames {s['width']}x{s['height']}, "
        + (f"simulated UNet step {step:g} ms" if step else "real UNet")
        + f", M={result['num_requests']} requests per mode; {result['machine']['cpus']} CPUs, "
        + f"GPU: {result['machine']['gpu'] or 'none'}",
        f"profile ({prof['source']}): encode {prof['encode_ms']:.1f} ms, "
        f"step {statistics.median(prof['step_ms']):.1f} ms, decode {prof['decode_ms']:.1f} ms",
        "",
        f"{'mode':<14}{'W':>3}{'C':>4}{'samples/h':>11}{'ideal/h':>10}{'eff':>7}{'eff/bnd':>8}"
        f"{'p50 s':>8}{'p95 s':>8}{'hop ms':>8}{'busy min-max':>14}{'idle s':>8}{'/local':>8}",
    ]
    for r in result["modes"].values():
        busy = list(r["busy_fraction"].values())
        lines.append(
            f"{r['mode']:<14}{r['workers']:>3}{r['concurrency']:>4}{r['samples_per_hour']:>11.0f}"
            f"{r['ideal_samples_per_hour']:>10.0f}{r['efficiency']:>7.3f}{r['efficiency_vs_bound']:>8.3f}"
            f"{r['latency_p50_s']:>8.3f}{r['latency_p95_s']:>8.3f}{num(r['per_hop_ms'], '.2f'):>8}"
            f"{min(busy):>9.2f}-{max(busy):.2f}{num(r['idle_latency_s'], '.3f'):>8}"
            f"{num(r['idle_latency_ratio'], '.3f'):>8}"
        )
    lines += [
        "",
        "eff: measured / ideal N/(T x step); eff/bnd: measured / bound with encode and decode; hop: median "
        "hand-off into stages after the first; idle: one request on the idle system, /local: vs the "
        "single-process path",
    ]
    return "\n".join(lines)


def plot_results(results: Sequence[dict[str, Any]], path: str | Path) -> None:
    """Two panels: samples/hour vs N per mode; efficiency vs simulated step time. Medians of repeated runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def key_counts(key: str) -> Any:
        values = [r["settings"][key] for r in results]
        return max(set(values), key=values.count)

    ref_step, ref_n = key_counts("simulate_step_ms"), key_counts("stages")
    by_n: dict[tuple[str, int], list[float]] = defaultdict(list)
    by_step: dict[tuple[str, float], list[float]] = defaultdict(list)
    ideal_n: dict[int, float] = {}
    for r in results:
        st = r["settings"]
        for name, m in r["modes"].items():
            mode = f"{name} ({r['label']})" if r.get("label") else name
            if st["simulate_step_ms"] == ref_step:
                by_n[(mode, st["stages"])].append(m["samples_per_hour"])
                if name != "sequential":
                    ideal_n[st["stages"]] = m["ideal_samples_per_hour"]
            if st["stages"] == ref_n and st["simulate_step_ms"] is not None:
                by_step[(mode, st["simulate_step_ms"])].append(m["efficiency"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    series = sorted({mode for mode, _ in by_n} | {mode for mode, _ in by_step}, key=_series_order)
    for i, mode in enumerate(series):  # a series needs two points to say anything about a trend
        style = {"marker": "o", "label": mode, "color": f"C{i}", "ls": "--" if " (" in mode else "-"}
        pts = sorted((n, statistics.median(v)) for (m, n), v in by_n.items() if m == mode)
        if len(pts) > 1:
            left.plot(*zip(*pts, strict=True), **style)
        pts = sorted((x, statistics.median(v)) for (m, x), v in by_step.items() if m == mode)
        if len(pts) > 1:
            right.plot(*zip(*pts, strict=True), **style)
    if ideal_n:
        left.plot(*zip(*sorted(ideal_n.items()), strict=True), "k:", label="ideal N/(T·step)")
    step_label = f"{ref_step:g} ms simulated step" if ref_step else "real UNet"
    left.set(xlabel="N (stages or replicas)", ylabel="samples / hour", title=f"Throughput vs N ({step_label})")
    right.set(xlabel="simulated UNet step (ms)", ylabel="efficiency (measured / ideal)", title=f"Efficiency, N={ref_n}")
    right.axhline(0.97, color="grey", ls="--", lw=0.8, label="target 0.97")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("svdpipe bench on a 2-core CPU (no GPU), tiny model, closed loop", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _series_order(name: str) -> tuple[int, str]:
    base = name.split(" (")[0]
    return (MODES.index(base) if base in MODES else len(MODES), name)


# ---------------------------------------------------------------- CLI


def add_bench_parser(subparsers: Any) -> None:
    """Register `svdpipe bench` on the CLI's subparsers."""
    p = subparsers.add_parser(
        "bench",
        help="closed-loop throughput/latency: pipeline vs data-parallel vs sequential",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    f = BenchSettings.model_fields

    def opt(flag: str, name: str, **kwargs: Any) -> None:
        default = f[name].default
        shown = ",".join(default) if isinstance(default, tuple) else default
        suffix = f" (default: {shown})" if default is not None else ""
        p.add_argument(flag, dest=name, default=None, help=f"{f[name].description}{suffix}", **kwargs)

    opt("--model", "model")
    opt("--stages", "stages", type=int)
    opt("--steps", "steps", type=int)
    opt("--frames", "frames", type=int)
    opt("--height", "height", type=int)
    opt("--width", "width", type=int)
    opt("--simulate-step-ms", "simulate_step_ms", type=float)
    opt("--transport", "transport", choices=get_args(Transport))
    opt("--latency-mode", "latency_mode", choices=get_args(LatencyMode))
    opt("--parareal-tol", "parareal_tol", type=float)
    opt("--parareal-max-iters", "parareal_max_iters", type=int)
    opt("--dtype", "dtype", choices=get_args(Dtype))
    opt("--num-gpus-per-actor", "num_gpus_per_actor", type=float)
    opt("--modes", "modes", type=_mode_list, metavar="MODE[,MODE...]")
    opt("--colocate-codec", "colocate_codec", action=argparse.BooleanOptionalAction)
    opt("--balance", "balance", action=argparse.BooleanOptionalAction)
    opt("--profile", "profile", metavar="FILE")
    opt("--save-profile", "save_profile", metavar="FILE")
    opt("--requests", "requests", type=int)
    opt("--concurrency", "concurrency", type=int)
    opt("--idle-requests", "idle_requests", type=int)
    opt("--torch-threads", "torch_threads", type=int)
    opt("--num-cpus-per-actor", "num_cpus_per_actor", type=float)
    opt("--address", "address")
    opt("--ray-timeline", "ray_timeline", metavar="FILE")
    proj = p.add_argument_group("projection (no run: arithmetic from a cost profile and a per-hop overhead)")
    proj.add_argument("--project", action="store_true", help="print the projection for --stages GPUs and exit")
    proj.add_argument("--assume-step-ms", type=float, help="assumed UNet step cost (with CFG), if no --profile")
    proj.add_argument("--assume-encode-ms", type=float, help="assumed encode cost (CLIP + VAE encoder)")
    proj.add_argument("--assume-decode-ms", type=float, help="assumed decode cost (VAE decoder + file)")
    proj.add_argument("--hop-ms", type=float, default=3.0, help="per-hop overhead (default 3.0: measured here)")
    p.add_argument("--label", help="a name for this run, kept in the JSON and used by --plot (e.g. an engine variant)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--out-json", metavar="FILE", help="also write the JSON object to FILE")
    p.add_argument("--plot", metavar="PNG", help="plot the results (with --from-json: of those files)")
    p.add_argument("--from-json", nargs="+", metavar="FILE", help="plot earlier --out-json files; run nothing")


def _mode_list(text: str) -> tuple[str, ...]:
    modes = tuple(m.strip() for m in text.split(",") if m.strip())
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise argparse.ArgumentTypeError(f"unknown mode(s) {unknown or text!r}; choose from {', '.join(MODES)}")
    return modes


def settings_from_args(args: argparse.Namespace) -> BenchSettings:
    values = {n: getattr(args, n) for n in BenchSettings.model_fields if getattr(args, n, None) is not None}
    return BenchSettings(**values)


def run_bench_command(args: argparse.Namespace) -> int:
    """`svdpipe bench`: run (or, with --from-json, only plot) and print the table or the JSON object."""
    if args.from_json:
        if not args.plot:
            raise ValueError("--from-json needs --plot PNG")
        results = [json.loads(Path(p).read_text()) for p in args.from_json]
        plot_results(results, args.plot)
        print(f"wrote {args.plot} from {len(results)} result file(s)")
        return 0
    settings = settings_from_args(args)
    if args.project:
        return _project_command(args, settings)
    result = run_bench(settings)
    if args.label:
        result["label"] = args.label
    text = json.dumps(result, indent=2)
    if args.out_json:
        Path(args.out_json).write_text(text + "\n")
    if args.plot:
        plot_results([result], args.plot)
    print(text if args.json else format_table(result), flush=True)
    return 0


def _project_command(args: argparse.Namespace, settings: BenchSettings) -> int:
    if settings.profile is not None:
        profile = CostProfile.load(settings.profile)
    else:
        assumed = (args.assume_step_ms, args.assume_encode_ms, args.assume_decode_ms)
        if any(v is None for v in assumed):
            raise ValueError("--project needs --profile FILE or all of --assume-step-ms/-encode-ms/-decode-ms")
        step, enc, dec = (v / 1000 for v in assumed)
        profile = CostProfile(enc, (step,) * settings.steps, dec, {"source": "assumed"})
    rows = projection(profile, settings.steps, settings.stages, args.hop_ms / 1000)
    if args.json:
        print(json.dumps({"profile": profile.to_json(), "hop_ms": args.hop_ms, "modes": rows}, indent=2))
        return 0
    print(
        f"PROJECTION for {settings.stages} GPUs, T={settings.steps}: step {profile.typical_step_s * 1000:g} ms, "
        f"encode {profile.encode_s * 1000:g} ms, decode {profile.decode_s * 1000:g} ms, hop {args.hop_ms:g} ms"
    )
    print(f"{'mode':<26}{'GPUs':>5}{'busiest s':>10}{'samples/h':>11}{'ideal/h':>9}{'eff':>7}{'idle s':>8}")
    for name, r in rows.items():
        print(
            f"{name:<26}{r['gpus']:>5.0f}{r['bottleneck_s']:>10.3f}{r['samples_per_hour']:>11.0f}"
            f"{r['ideal_samples_per_hour']:>9.0f}{r['efficiency']:>7.3f}{r['idle_latency_s']:>8.3f}"
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m svdpipe.bench ...`: the same as `svdpipe bench ...`."""
    parser = argparse.ArgumentParser(prog="svdpipe")
    add_bench_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["bench", *(argv if argv is not None else sys.argv[1:])])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    return run_bench_command(args)


if __name__ == "__main__":
    raise SystemExit(main())
