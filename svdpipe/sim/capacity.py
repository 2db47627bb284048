"""`svdpipe capacity`'s search: the fewest GPUs, and the layout on them, that carry a traffic within its SLOs.

For every GPU count g = 1..max_gpus, every layout of g GPUs (R pipelines x N model actors with R x N = g,
pipeline or data-parallel, latency mode off or auto) runs the traffic in the simulator. A layout meets the SLOs
when its p95 latency is within --p95 and it keeps up: it served at least KEEP_UP of the arrivals' rate over the
run (samples/h as the bench counts them, first arrival to last completion, so a stable service loses only the
drain at the end; one that falls behind loses more each hour). The answer is the smallest g with a layout that meets
them (ties: the lowest p95). The curve: per g, the best layout's p95 and samples/h at the traffic's rate, and
its capacity, the highest rate that still meets the SLOs, found by bisection on the rate (Vidur's capacity
search); the SLOs are assumed monotone in the rate.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace

from svdpipe.bench.metrics import poisson_arrivals, summarise_open
from svdpipe.bench.settings import MAX_REQUESTS
from svdpipe.planner import RequestShape
from svdpipe.sim.costs import SimCosts
from svdpipe.sim.run import to_samples
from svdpipe.sim.service import Layout
from svdpipe.sim.workload import TraceRow, open_loop, shape_of

logger = logging.getLogger(__name__)

KEEP_UP = 0.9  # served / offered below this: the layout falls behind the arrivals
BISECTIONS = 8  # rate bisection steps per capacity figure (1/256 of the bracket)


@dataclass(frozen=True)
class Traffic:
    """Open-loop arrivals: Poisson at `rate_per_s` for `duration_s` (seeded), or a trace scaled to a rate."""

    shape: RequestShape
    rate_per_s: float
    duration_s: float
    seed: int = 0
    trace: tuple[TraceRow, ...] | None = None
    clips: int = 1

    def arrivals(self, rate_per_s: float) -> list[float]:
        if self.trace is None:
            return poisson_arrivals(rate_per_s, self.seed, MAX_REQUESTS, self.duration_s)
        scale = self.rate_per_s / rate_per_s  # the trace's own mean rate is self.rate_per_s
        return [r.arrival * scale for r in self.trace]

    def shapes(self) -> Callable[[int], RequestShape]:
        rows = self.trace
        if rows is None:
            return lambda _i: self.shape
        return lambda i: shape_of(self.shape, rows[i])


@dataclass(frozen=True)
class Slo:
    """What the traffic needs: a p95 latency bound (seconds) and a throughput floor (samples/hour)."""

    p95_s: float | None = None
    min_per_hour: float | None = None


@dataclass(frozen=True)
class Point:
    """One layout at one arrival rate."""

    layout: Layout
    rate_per_s: float
    samples_per_hour: float
    p95_s: float
    meets: bool


@dataclass(frozen=True)
class CurvePoint:
    """The best layout of one GPU count: at the traffic's rate, and its capacity under the SLOs."""

    gpus: int
    at_rate: Point
    capacity_per_hour: float


@dataclass(frozen=True)
class Answer:
    cheapest: Point | None  # None: no layout up to max_gpus meets the SLOs
    points: tuple[Point, ...]  # every layout tried at the traffic's rate
    curve: tuple[CurvePoint, ...]


def layouts(
    gpus: int,
    mux_actors: int,
    max_inflight: int,
    parallelisms: Sequence[str] = ("pipeline", "data-parallel"),
    latency_modes: Sequence[str] = ("off", "auto"),
    parareal_max_iters: int | None = None,
) -> Iterator[Layout]:
    """Every layout of `gpus` GPUs: R pipelines of N actors (R x N = gpus), each parallelism and latency mode
    (one actor: pipeline and data-parallel are the same, and there is no actor to help)."""
    for actors in range(1, gpus + 1):
        if gpus % actors:
            continue
        for parallelism in parallelisms if actors > 1 else parallelisms[:1]:
            for latency in latency_modes if actors > 1 else ("off",):
                yield Layout(
                    actors,
                    mux_actors,
                    gpus // actors,
                    parallelism,  # type: ignore[arg-type]
                    latency,
                    max_inflight,
                    parareal_max_iters,
                    "cap",
                )


def evaluate(layout: Layout, costs: SimCosts, traffic: Traffic, rate_per_s: float, slo: Slo) -> Point:
    """The layout under the traffic at `rate_per_s`: samples/h, p95, and whether it meets the SLOs."""
    arrivals = traffic.arrivals(rate_per_s)
    if not arrivals:
        raise ValueError(f"no arrival within {traffic.duration_s:g} s at {rate_per_s:g} requests/s")
    done, _ = open_loop(layout, costs, traffic.shapes(), arrivals, traffic.seed, traffic.clips)
    summary = summarise_open(to_samples(done), rate_per_s)
    per_hour, p95 = summary["samples_per_hour"], summary["latency_p95_s"]
    # kept up with the arrivals drawn (a Poisson draw of an hour at a low rate is off its mean by several %)
    span = traffic.duration_s if traffic.trace is None else max(arrivals[-1], 1e-9)
    meets = per_hour >= KEEP_UP * 3600 * len(arrivals) / span
    meets &= slo.p95_s is None or p95 <= slo.p95_s
    meets &= slo.min_per_hour is None or per_hour >= KEEP_UP * slo.min_per_hour
    return Point(layout, rate_per_s, per_hour, p95, meets)


def capacity_rate(layout: Layout, costs: SimCosts, traffic: Traffic, slo: Slo) -> float:
    """The highest arrival rate (requests/s) at which the layout meets the SLOs (bisection; 0 if none)."""
    ideal = layout.gpus / costs.work_s(traffic.shape.num_steps, traffic.shape.num_frames) / traffic.clips
    lo, hi = 0.0, 1.25 * ideal
    for _ in range(BISECTIONS):
        mid = (lo + hi) / 2
        if evaluate(layout, costs, traffic, mid, replace(slo, min_per_hour=None)).meets:
            lo = mid
        else:
            hi = mid
    return lo


def search(
    costs: SimCosts,
    traffic: Traffic,
    slo: Slo,
    max_gpus: int,
    mux_actors: int = 2,
    max_inflight: int = 16,
    parallelisms: Sequence[str] = ("pipeline", "data-parallel"),
    latency_modes: Sequence[str] = ("off", "auto"),
    curve: bool = True,
) -> Answer:
    """Every layout of 1..max_gpus GPUs at the traffic's rate; the cheapest that meets the SLOs; the curve."""
    if max_gpus < 1:
        raise ValueError(f"--max-gpus must be at least 1, got {max_gpus}")
    from tqdm import tqdm

    points: list[Point] = []
    best: list[CurvePoint] = []
    cheapest: Point | None = None
    for gpus in tqdm(range(1, max_gpus + 1), desc="GPU counts", unit="count", leave=False, disable=None):
        tried = [
            evaluate(layout, costs, traffic, traffic.rate_per_s, slo)
            for layout in layouts(gpus, mux_actors, max_inflight, parallelisms, latency_modes)
        ]
        points += tried
        top = min(tried, key=lambda p: (not p.meets, p.p95_s))
        logger.info("%d GPU(s): best %s, p95 %.1f s, meets: %s", gpus, top.layout.describe(), top.p95_s, top.meets)
        if cheapest is None and top.meets:
            cheapest = top
        cap = 3600 * capacity_rate(top.layout, costs, traffic, slo) if curve else 0.0
        best.append(CurvePoint(gpus, top, cap))
    return Answer(cheapest, tuple(points), tuple(best))


def write_csv(answer: Answer, path: str) -> None:
    """The curve as CSV: per GPU count, the best layout, its samples/h and p95 at the rate, its capacity."""
    lines = ["gpus,layout,samples_per_hour,p95_s,meets,capacity_samples_per_hour"]
    for c in answer.curve:
        p = c.at_rate
        lines.append(
            f"{c.gpus},{p.layout.describe()},{p.samples_per_hour:.1f},{p.p95_s:.3f},{p.meets},{c.capacity_per_hour:.1f}"
        )
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def plot(answer: Answer, path: str, slo: Slo, title: str) -> str:
    """The curve as a PNG (matplotlib), or as CSV next to it when matplotlib is not installed; returns the file
    written."""
    try:
        import matplotlib
    except ImportError:
        csv = path.rsplit(".", 1)[0] + ".csv"
        write_csv(answer, csv)
        return csv
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gpus = [c.gpus for c in answer.curve]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    left.plot(gpus, [c.capacity_per_hour for c in answer.curve], "o-", label="capacity under the SLOs")
    left.plot(gpus, [c.at_rate.samples_per_hour for c in answer.curve], "s--", label="served at the traffic's rate")
    left.set(xlabel="GPUs", ylabel="samples / hour", title="Throughput")
    right.plot(gpus, [c.at_rate.p95_s for c in answer.curve], "o-", label="p95 at the traffic's rate")
    if slo.p95_s is not None:
        right.axhline(slo.p95_s, color="grey", ls="--", label="SLO")
    right.set(xlabel="GPUs", ylabel="seconds", title="p95 latency", yscale="log")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
