"""`svdpipe simulate`'s runner: a bench command line on the virtual clock, summarised by the bench's own metrics
into the bench's JSON keys (so `svdpipe bench --json` and `svdpipe simulate --json` compare field by field)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from svdpipe.bench.metrics import (
    Sample,
    arrival_rate_from_fraction,
    clips_per_hour,
    efficiency,
    ideal_samples_per_hour,
    mode_comparisons,
    poisson_arrivals,
    summarise,
    summarise_open,
)
from svdpipe.bench.settings import BenchSettings, Mode
from svdpipe.planner import RequestShape
from svdpipe.sim.costs import SimCosts
from svdpipe.sim.service import Finished, Layout
from svdpipe.sim.workload import TraceRow, closed_loop, open_loop, shape_of


@dataclass(frozen=True)
class SimOptions:
    """What the simulator adds to a bench command line."""

    costs: SimCosts
    replicas: int = 1  # pipelines sharing one job queue (the service's --replicas)
    max_inflight: int | None = None  # per pipeline; None: the bench's max(16, C)
    trace: tuple[TraceRow, ...] | None = None  # open-loop arrivals from a file instead of Poisson


def base_shape(settings: BenchSettings) -> RequestShape:
    """The bench's request: its steps and frames, its decode chunk (None: all frames), guidance on (the
    default max_guidance_scale 3.0)."""
    return RequestShape(settings.steps, settings.frames, settings.decode_chunk_size or settings.frames, True)


def to_samples(done: Sequence[Finished]) -> list[Sample]:
    """The simulated requests as the bench's samples (the trace and timing entries carry the fields its metrics
    read)."""
    return [
        Sample(f.job.index, f.job.arrival, f.done, f.admitted, tuple(f.timings), tuple(f.trace))  # type: ignore[arg-type]
        for f in sorted(done, key=lambda f: f.job.index)
    ]


class Simulation:
    """One `svdpipe simulate` run: each mode of the settings on a fresh simulated service per loop."""

    def __init__(self, settings: BenchSettings, options: SimOptions) -> None:
        self.s, self.o = settings, options
        self.shape = base_shape(settings)
        self.events = 0

    def workers(self, mode: Mode) -> int:
        """Model actors of the mode over every pipeline."""
        return self.s.workers_for(mode) * self.o.replicas

    def concurrency(self, mode: Mode) -> int:
        return self.s.concurrency if self.s.concurrency is not None else 2 * self.workers(mode)

    def requests(self, mode: Mode) -> int:
        return self.s.requests if self.s.requests is not None else 4 * self.workers(mode)

    def work_s(self) -> float:
        """W of one request: every clip's."""
        return self.s.clips * self.o.costs.work_s(self.s.steps, self.s.frames)

    def arrival_rate_per_s(self) -> float:
        """A trace's mean rate, else --arrival-rate, else --arrival-rate-frac of the ideal N / W with
        N = --stages x --replicas."""
        s = self.s
        if self.o.trace is not None:  # a trace: its mean rate
            return len(self.o.trace) / max(self.o.trace[-1].arrival, 1e-9)
        if s.arrival_rate is not None:
            return s.arrival_rate
        if s.arrival_rate_frac is None:
            raise ValueError("the open loop needs --arrival-rate, --arrival-rate-frac or --trace")
        return arrival_rate_from_fraction(s.arrival_rate_frac, s.stages * self.o.replicas, self.work_s())

    def layout(self, mode: Mode) -> Layout:
        s = self.s
        return Layout(
            actors=s.workers_for(mode),
            mux_actors=s.mux_actors,
            replicas=self.o.replicas,
            parallelism="data-parallel" if mode == "data-parallel" else "pipeline",
            latency_mode=s.latency_mode_for(mode),
            max_inflight=self.o.max_inflight or max(16, self.concurrency(mode)),
            parareal_max_iters=s.parareal_max_iters,
            wide_size=s.wide_size,
            name_prefix=f"bench-{mode}",
        )

    def shape_for(self) -> Callable[[int], RequestShape]:
        rows = self.o.trace
        if rows is None:
            return lambda _i: self.shape
        return lambda i: shape_of(self.shape, rows[i])

    def arrivals(self) -> list[float]:
        s = self.s
        if self.o.trace is not None:
            rows = [r.arrival for r in self.o.trace]
            return [t for t in rows if s.duration_s is None or t < s.duration_s][: s.requests or None]
        arrivals = poisson_arrivals(self.arrival_rate_per_s(), s.seed, s.open_requests, s.duration_s)
        if not arrivals:
            raise ValueError(f"no arrival within --duration-s {s.duration_s:g}")
        return arrivals

    def run_mode(self, mode: Mode) -> dict[str, Any]:
        s, o = self.s, self.o
        layout = self.layout(mode)
        names = set(layout.model_names())
        ideal = ideal_samples_per_hour(self.workers(mode), self.work_s())
        out: dict[str, Any] = {
            "mode": mode,
            "workers": self.workers(mode),
            "actors": layout.gpus,
            "mux_actors": s.mux_actors * o.replicas,
            "work_s": self.work_s(),
            "latency_mode": s.latency_mode_for(mode),
            "ideal_samples_per_hour": ideal,
        }
        for loop in s.loop_kinds:
            if loop == "closed":
                concurrency, total = self.concurrency(mode), self.requests(mode)
                done = closed_loop(layout, o.costs, self.shape_for(), total, concurrency, s.seed, s.clips)
                samples = to_samples(done)
                result = {"concurrency": concurrency, **summarise(samples, self.workers(mode), names)}
                per_hour = clips_per_hour(samples, names, concurrency)
                result["frames_per_hour"] = per_hour * s.frames if per_hour is not None else None
                result["full_load_samples_per_hour"] = per_hour / s.clips if per_hour is not None else None
            else:
                rate = self.arrival_rate_per_s()
                arrivals = self.arrivals()
                done, events = open_loop(layout, o.costs, self.shape_for(), arrivals, s.seed, s.clips)
                self.events += events
                result = {"seed": s.seed, **summarise_open(to_samples(done), rate, names)}
            result["efficiency"] = efficiency(result["samples_per_hour"], ideal)
            result["load_avg_1m_at_start"] = None  # a virtual clock: no machine load
            result["machine_cpu_busy"] = None
            result["split_requests"] = sum(f.split for f in done)
            # the simulator's own: how often a split step's helper took the half or was busy
            result["split_steps_helped"] = sum(f.helped_steps for f in done)
            result["split_steps_declined"] = sum(f.declined_steps for f in done)
            out[f"{loop}_loop"] = result
        idle = [
            closed_loop(layout, o.costs, lambda _i: self.shape, 1, 1, s.seed + i, s.clips)[0]
            for i in range(s.idle_requests)
        ]
        latencies = [f.done - f.admitted for f in idle]
        local = self.work_s() + s.clips * o.costs.mux_s  # one process: every phase in turn, no hop
        out |= {
            "idle_latency_s": statistics.median(latencies) if latencies else None,
            "local_idle_latency_s": local if latencies else None,
            "idle_latency_ratio": statistics.median(latencies) / local if latencies else None,
            "split_requests_idle": sum(f.split for f in idle),
            "helper_busy_s": 0.0,
            "exchange_ms_per_step": None,
            "parareal": [],
            "start_s": 0.0,
        }
        return out


def simulate(settings: BenchSettings, options: SimOptions) -> dict[str, Any]:
    """Every mode of `settings` in the simulator: the bench's result object, with a `simulation` object added."""
    t0 = time.perf_counter()
    sim = Simulation(settings, options)
    modes = {mode: sim.run_mode(mode) for mode in settings.modes}
    c = options.costs
    out: dict[str, Any] = {
        "settings": settings.model_dump(mode="json"),
        "num_requests": settings.num_requests,
        "machine": {"cpus": "simulated", "gpu": f"simulated ({c.source})"},
        "profile": {
            "source": c.source,
            "encode_ms": c.encode_s * 1000,
            "step_ms": [c.step_s * 1000],
            "decode_ms": c.decode_frame_s * settings.frames * 1000,
        },
        "modes": modes,
        "simulation": {
            "costs": asdict(c),
            "replicas": options.replicas,
            "clips": settings.clips,
            "trace": options.trace is not None,
            "open_loop_events": sim.events,
        },
    }
    if "open" in settings.loop_kinds:
        out["arrival_rate_per_s"] = sim.arrival_rate_per_s()
    out |= mode_comparisons(modes)
    out["wall_s"] = time.perf_counter() - t0
    return out
