"""The bench's pure arithmetic: ideal throughput, steady-state rate, per-run summaries, the GPU projection.

Steady-state throughput (fill excluded). With completion times sorted, c[0] <= ... <= c[M-1], and W workers
(N model actors, or 1), the first W completions are the pipeline fill (or, for replicas, the first round).
Throughput is the rate between completion a = W - 1 and completion b = M - 1:

    throughput = (b - a) / (c[b] - c[a])    samples/s,

with a moved later, if needed, so that b - a is a multiple of W: replicas complete in rounds of W, and a window
of whole rounds measures them without bias (a pipeline completes evenly, so any window would do).

Ideal: the physical limit of N GPUs, N / W requests per second, with W = T x step + encode + decode the work of
one request. Efficiency = measured / ideal.

Open loop: requests arrive as a Poisson process of rate R (seeded, so every mode sees the same arrival times) and
are sent at their arrival time whatever is still running, so a request that waits is counted from when it
arrived (a closed loop, whose clients wait for completions before sending, hides that wait: coordinated
omission). R may be given as a fraction of the ideal N / W. Its throughput is completions over the span from the
first arrival to the last completion; busy fractions are over that same span (the load the arrivals put on each
actor); latency and queue-wait percentiles are over all requests.

Queue wait: arrival to admission into the engine (which admits max_inflight requests at a time; the others wait
for a slot). Start wait: arrival to the first actor's work on the request (also counting the wait behind other
requests in the actors' queues).
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from svdpipe.planner import CostModel, Planner, RequestShape

if TYPE_CHECKING:  # state.py imports torch; `svdpipe --help` must stay fast
    from svdpipe.state import StageTrace
    from svdpipe.timing import HopTiming


def request_work_s(num_steps: int, step_s: float, encode_s: float, decode_s: float) -> float:
    """W: the work of one request on one GPU (every step with guidance, encode, decode of every frame)."""
    return num_steps * step_s + encode_s + decode_s


def ideal_samples_per_hour(workers: int, work_s: float) -> float:
    """N model actors, each busy all the time with requests of W seconds of work: N / W samples/s, per hour."""
    if workers < 1 or not work_s > 0:
        raise ValueError(f"need workers >= 1 and work > 0; got {workers}, {work_s}")
    return 3600.0 * workers / work_s


def arrival_rate_from_fraction(fraction: float, workers: int, work_s: float) -> float:
    """Requests per second at `fraction` of the ideal N / W (N = `workers`)."""
    if not fraction > 0:
        raise ValueError(f"the arrival rate fraction must be positive, got {fraction}")
    return fraction * ideal_samples_per_hour(workers, work_s) / 3600.0


def poisson_arrivals(rate_per_s: float, seed: int, max_requests: int, duration_s: float | None = None) -> list[float]:
    """Arrival times (seconds from the start) of a Poisson process of `rate_per_s`: exponential gaps drawn from
    `seed`, at most `max_requests` of them, and only those before `duration_s` when it is given."""
    if not rate_per_s > 0:
        raise ValueError(f"the arrival rate must be positive, got {rate_per_s}")
    if max_requests < 1:
        raise ValueError(f"need at least one request, got {max_requests}")
    rng = random.Random(seed)
    arrivals: list[float] = []
    t = 0.0
    while len(arrivals) < max_requests:
        t += rng.expovariate(rate_per_s)
        if duration_s is not None and t >= duration_s:
            break
        arrivals.append(t)
    return arrivals


def percentiles(values: Iterable[float], name: str) -> dict[str, float | None]:
    """`{name}_p50_s`, `_p95_s` and `_p99_s` of `values` (seconds; None for no values)."""
    from svdpipe.timing import percentile

    data = list(values)
    return {f"{name}_p{q}_s": percentile(data, q) if data else None for q in (50, 95, 99)}


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


@dataclass(frozen=True)
class Sample:
    """One finished request (time.time() seconds, the clock of the actor traces)."""

    index: int
    sent: float  # when it arrived: the closed loop's send, the open loop's scheduled arrival
    done: float
    admitted: float  # when the engine admitted it (done minus the engine's own latency, which counts from there)
    timings: tuple[HopTiming, ...]
    trace: tuple[StageTrace, ...]

    @property
    def queue_wait_s(self) -> float:
        return self.admitted - self.sent

    @property
    def start_wait_s(self) -> float | None:
        """Arrival to the first actor's work on it (None without a trace)."""
        return min(t.started for t in self.trace) - self.sent if self.trace else None


def _waits(samples: Sequence[Sample]) -> dict[str, float | None]:
    """Latency, queue-wait and start-wait percentiles of `samples`."""
    starts = [w for w in (s.start_wait_s for s in samples) if w is not None]
    return {
        **percentiles((s.done - s.sent for s in samples), "latency"),
        **percentiles((s.queue_wait_s for s in samples), "queue_wait"),
        **percentiles(starts, "start_wait"),
    }


def busy_fractions(
    samples: Sequence[Sample],
    model_actors: Collection[str] | None,
    span: tuple[float, float] | None = None,
) -> dict[str, dict[str, float]]:
    """Per-actor busy fractions of the work on `samples`: `busy_fraction` (model actors) and `mux_busy_fraction`
    (the others). Each actor's over its own first start to last finish, or over `span` when given."""
    from svdpipe.timing import busy_fraction

    intervals: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for s in samples:
        for entry in s.trace:
            intervals[entry.stage].append((entry.started, entry.finished))
    lo, hi = span if span is not None else (None, None)
    busy = {stage: round(busy_fraction(iv, lo, hi), 4) for stage, iv in sorted(intervals.items())}
    is_model = (lambda name: name in model_actors) if model_actors is not None else (lambda name: True)
    return {
        "busy_fraction": {k: v for k, v in busy.items() if is_model(k)},
        "mux_busy_fraction": {k: v for k, v in busy.items() if not is_model(k)},
    }


def summarise(samples: Sequence[Sample], workers: int, model_actors: Collection[str] | None = None) -> dict[str, Any]:
    """Steady-state throughput, latency, per-hop time and busy fractions of one closed-loop run.

    `model_actors` names the model-holding actors; the others (mux actors) get their own busy fractions.
    """
    from svdpipe.timing import median, percentile

    done = sorted(s.done for s in samples)
    a, b = steady_state_window(len(done), workers)
    start, end = done[a], done[b]
    measured = [s for s in samples if start < s.done <= end]
    # Hops into every call but the first: from the input being ready (previous call finished) and the actor
    # being free, to the call starting. Split by whether the actor was idle when the input came (the
    # hand-off's latency) or busy (the input waited: the actor's own turnaround between requests).
    later = [t for s in measured for t in s.timings[1:]]
    idle_hops = [t.hop_ms for t in later if t.queue_ms <= 0]
    busy_hops = [t.hop_ms for t in later if t.queue_ms > 0]
    dispatch = [s.timings[0].hop_ms for s in measured if s.timings]  # a parareal request has no hop timings
    steps = [t.step_ms for s in measured for t in s.timings if t.steps]
    return {
        "requests": len(samples),
        "measured_requests": b - a,
        "window_s": end - start,
        "samples_per_hour": 3600.0 * steady_state_rate(done, workers),
        **_waits(measured),
        "calls_per_request": median(len(s.timings) for s in measured) if measured else 0,
        "per_hop_ms": median(t.hop_ms for t in later) if later else None,
        "per_hop_p95_ms": percentile([t.hop_ms for t in later], 95) if later else None,
        "hop_into_idle_actor_ms": median(idle_hops) if idle_hops else None,
        "hop_into_busy_actor_ms": median(busy_hops) if busy_hops else None,
        "dispatch_ms": median(dispatch) if dispatch else None,
        "actor_step_ms": median(steps) if steps else None,
        **busy_fractions(samples, model_actors, _full_load_span(samples, start, end)),
    }


def clips_per_hour(samples: Sequence[Sample], model_actors: Collection[str], concurrency: int) -> float | None:
    """A closed loop's finished clips (mux calls: one per clip of a long video, one per request otherwise) per
    hour while every client has a request in flight: from the `concurrency`-th clip's finish (the fill) to the
    last request's send (then the drain starts). Long videos end in bunches (their clients start together and
    their requests take as long), which the window of request completions (steady_state_rate) cannot average
    out; their clips end at a steady pace. None when that span holds no clip."""
    ends = sorted(e.finished for s in samples for e in s.trace if e.stage not in model_actors)
    if len(ends) <= concurrency:
        return None
    start, stop = ends[concurrency - 1], max(s.sent for s in samples)
    inside = sum(1 for t in ends if start < t <= stop)
    return 3600.0 * inside / (stop - start) if stop > start and inside else None


def _full_load_span(samples: Sequence[Sample], start: float, end: float) -> tuple[float, float] | None:
    """Where a closed loop's busy fractions are measured: from the steady-state window's start to the last
    request's send (after it, fewer than C requests are in flight: the drain), counting every request's work
    in that span, whichever request it served. (Counting only the measured requests' work misses what each
    actor did in the span for requests that ended outside the window: early in the chain just before the end,
    late in the chain just after the start.) None when the span is empty: each actor's own span then."""
    last_sent = max(s.sent for s in samples)
    stop = min(end, last_sent)
    return (start, stop) if stop > start else None


def summarise_open(
    samples: Sequence[Sample], rate_per_s: float, model_actors: Collection[str] | None = None
) -> dict[str, Any]:
    """Throughput, latency and queue-wait percentiles and busy fractions of one open-loop run at `rate_per_s`."""
    if not samples:
        raise ValueError("an open loop with no requests has nothing to summarise")
    first, last = min(s.sent for s in samples), max(s.done for s in samples)
    if last <= first:
        raise ValueError("completion times do not advance past the first arrival")
    return {
        "requests": len(samples),
        "arrival_rate_per_s": rate_per_s,
        "offered_per_hour": 3600.0 * rate_per_s,
        "window_s": last - first,
        "samples_per_hour": 3600.0 * len(samples) / (last - first),
        **_waits(samples),
        **busy_fractions(samples, model_actors, (first, last)),
    }


def exchange_ms_per_step(traces: Sequence[Any]) -> float | None:
    """Mean per-step CFG exchange cost over split steps (round trip to the helper minus its compute), from
    results carrying `.video.trace`; None when no step was split."""
    entries = [t for r in traces for t in r.video.trace]
    steps = sum(t.split_steps for t in entries)
    if not steps:
        return None
    return sum(t.exchange_s for t in entries) * 1000 / steps


def cpu_busy_fraction(before: tuple[float, float] | None, after: tuple[float, float] | None) -> float | None:
    """Share of the machine's CPU time that was busy between two (busy, total) jiffies readings."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])


def planned_busiest_s(costs: CostModel, shape: RequestShape, actors: int, requests: int = 2000) -> float:
    """The busiest actor's expected seconds per request when the planner spreads a long stream of requests
    (its own least-expected-work ledger as the load)."""
    planner = Planner(actors, 1, costs)
    ledger = [0.0] * actors
    for i in range(requests):
        plan = planner.plan(f"r{i}", shape, ledger)
        ledger = [a + b for a, b in zip(ledger, plan.work_s, strict=True)]
    return max(ledger) / requests


def projection(
    step_s: float, encode_s: float, decode_s: float, num_steps: int, num_frames: int, gpus: int, hop_s: float
) -> dict[str, dict[str, float]]:
    """Throughput and idle latency of each mode on `gpus` GPUs, from per-phase costs and a per-hop overhead.

    Pure arithmetic, for machines we cannot measure on. sequential: one GPU does everything; data-parallel:
    `gpus` such replicas; pipeline: `gpus` model actors, the planner spreading steps, encode and decode over
    them (its expected per-actor work over a long stream of requests). Every call costs `hop_s` of turnaround
    on its actor; a request's latency adds one hop per hand-off. Fewer steps than GPUs is allowed (the planner
    then gives T of them one step each, rotating over requests). Decoding is one chunk (decode_chunk_size =
    num_frames), so the idle pipeline's latency is the whole work plus its hops.
    """
    if gpus < 1 or num_steps < 1:
        raise ValueError(f"need at least one GPU and one step, got {gpus} GPUs for {num_steps} steps")
    whole = request_work_s(num_steps, step_s, encode_s, decode_s)
    costs = CostModel(encode_s, step_s, decode_s / num_frames, call_s=hop_s)
    busiest = planned_busiest_s(costs, RequestShape(num_steps, num_frames, num_frames), gpus)
    rows: dict[str, dict[str, float]] = {
        "sequential": {"gpus": 1, "busiest_s": whole + hop_s, "replicas": 1, "hops": 2},
        "data-parallel": {"gpus": gpus, "busiest_s": whole + hop_s, "replicas": gpus, "hops": 2},
        # with fewer steps than GPUs, a request's steps go to T of them, one step each
        "pipeline": {"gpus": gpus, "busiest_s": busiest, "replicas": 1, "hops": min(gpus, num_steps) + 1},
    }
    for row in rows.values():
        row["samples_per_hour"] = 3600.0 * row["replicas"] / row["busiest_s"]
        row["ideal_samples_per_hour"] = ideal_samples_per_hour(int(row["gpus"]), whole)
        row["efficiency"] = efficiency(row["samples_per_hour"], row["ideal_samples_per_hour"])
        row["idle_latency_s"] = whole + row["hops"] * hop_s
    return rows


def mode_comparisons(modes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The run's headline ratios: the pipeline's idle latency against the single process, and its closed-loop
    throughput against data-parallel's (by the completion window, and at full load)."""
    out: dict[str, Any] = {}
    pipeline, replicas = modes.get("pipeline"), modes.get("data-parallel")
    if pipeline is None:
        return out
    out["idle_latency_ratio"] = pipeline["idle_latency_ratio"]
    if replicas is not None and "closed_loop" in pipeline and "closed_loop" in replicas:
        a, b = pipeline["closed_loop"], replicas["closed_loop"]
        out["pipeline_over_data_parallel"] = a["samples_per_hour"] / b["samples_per_hour"]
        if a.get("full_load_samples_per_hour") and b.get("full_load_samples_per_hour"):
            out["pipeline_over_data_parallel_full_load"] = (
                a["full_load_samples_per_hour"] / b["full_load_samples_per_hour"]
            )
    return out
