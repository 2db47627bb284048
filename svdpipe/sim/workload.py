"""The simulator's workloads on the virtual clock: a closed loop of C clients, open-loop arrivals (Poisson, as
the bench draws them, or a trace file), and the per-request shapes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from svdpipe.planner import RequestShape
from svdpipe.sim.clock import EventLoop
from svdpipe.sim.costs import SimCosts
from svdpipe.sim.service import Finished, Job, Layout, PlannerLog, Service


@dataclass(frozen=True)
class TraceRow:
    """One arrival of a trace: seconds from the start, and the request's steps and frames if the row has them."""

    arrival: float
    steps: int | None = None
    frames: int | None = None


def read_trace(path: str | Path) -> list[TraceRow]:
    """A trace file: one arrival per line, `seconds[,steps[,frames]]` (commas or whitespace), sorted or not;
    blank lines, `#` comments and a header line are skipped."""
    rows: list[TraceRow] = []
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise ValueError(f"cannot read trace {path}: {exc}") from exc
    for number, line in enumerate(lines, 1):
        fields = line.split("#")[0].replace(",", " ").split()
        if not fields:
            continue
        try:
            values = [float(f) for f in fields[:3]]
        except ValueError:
            if not rows and number == 1:
                continue  # a header
            raise ValueError(f"{path}:{number}: expected seconds[,steps[,frames]], got {line.strip()!r}") from None
        if values[0] < 0 or any(v < 1 for v in values[1:]):
            raise ValueError(f"{path}:{number}: arrival must be >= 0 and steps/frames >= 1: {line.strip()!r}")
        steps = int(values[1]) if len(values) > 1 else None
        frames = int(values[2]) if len(values) > 2 else None
        rows.append(TraceRow(values[0], steps, frames))
    if not rows:
        raise ValueError(f"trace {path} has no arrivals")
    return sorted(rows, key=lambda r: r.arrival)


def shape_of(base: RequestShape, row: TraceRow | None) -> RequestShape:
    """The base shape, with a trace row's steps and frames where it has them."""
    if row is None or (row.steps is None and row.frames is None):
        return base
    frames = row.frames or base.num_frames
    chunk = min(base.decode_chunk_size, frames)
    return RequestShape(row.steps or base.num_steps, frames, chunk, base.cfg)


def closed_loop(
    layout: Layout,
    costs: SimCosts,
    shape: Callable[[int], RequestShape],
    total: int,
    concurrency: int,
    seed: int = 0,
    clips: int = 1,
    log: PlannerLog | None = None,
) -> list[Finished]:
    """`concurrency` clients, each sending its next request when its last one finishes, `total` in all."""
    loop = EventLoop()
    done: list[Finished] = []
    sent = 0

    def send() -> None:
        nonlocal sent
        if sent < total:
            sent += 1
            service.submit(Job(sent - 1, loop.now, shape(sent - 1), clips))

    def finished(f: Finished) -> None:
        done.append(f)
        send()

    service = Service(layout, costs, loop, finished, seed, log)
    for _ in range(min(concurrency, total)):
        send()
    loop.run()
    return done


def open_loop(
    layout: Layout,
    costs: SimCosts,
    shape: Callable[[int], RequestShape],
    arrivals: Sequence[float],
    seed: int = 0,
    clips: int = 1,
    log: PlannerLog | None = None,
) -> tuple[list[Finished], int]:
    """One request per arrival time, sent at its time whatever is still running. Returns the finished requests
    and the number of events the loop ran."""
    loop = EventLoop()
    done: list[Finished] = []
    service = Service(layout, costs, loop, done.append, seed, log)
    for i, t in enumerate(arrivals):
        loop.at(t, service.submit, Job(i, t, shape(i), clips))
    loop.run()
    return done, loop.events
