"""Per-stage timing from request traces (pure): step time, hop time, queue wait, busy fraction."""

from __future__ import annotations

import time
from collections import defaultdict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from svdpipe.state import StageTrace


@dataclass(frozen=True)
class HopTiming:
    """How one request entered one stage."""

    stage: str
    hop_ms: float  # from the input being ready (and the stage free) to the stage starting: transport + dispatch
    queue_ms: float  # the input was ready but the stage was busy with another request
    work_ms: float  # the stage's own compute on this request
    steps: int
    codec_ms: float = 0.0  # part of work_ms spent encoding, decoding or muxing

    @property
    def step_ms(self) -> float:
        """Time per denoising step on this stage (0 for a stage without steps)."""
        return (self.work_ms - self.codec_ms) / self.steps if self.steps else 0.0


def hop_timings(trace: Sequence[StageTrace], submitted: float) -> list[HopTiming]:
    """Split each stage's wait into hop (transport/dispatch) and queue (stage busy) time.

    The first stage's input is ready at `submitted`; stage i's input is ready when stage i-1 finished. Entries
    marked `parallel` started from the same input as the entry before them (decode chunks on several actors),
    and the entry after such a group waits for all of it. A stage that was still busy (idle_since > ready)
    queued the request for that long.
    """
    out = []
    ready = group_done = submitted
    for entry in trace:
        if entry.parallel:
            group_done = max(group_done, entry.finished)
        else:
            ready, group_done = group_done, entry.finished
        free = max(ready, entry.idle_since)
        out.append(
            HopTiming(
                stage=entry.stage,
                hop_ms=max(0.0, entry.started - free) * 1000,
                queue_ms=max(0.0, entry.idle_since - ready) * 1000,
                work_ms=(entry.finished - entry.started) * 1000,
                steps=entry.steps,
                codec_ms=entry.codec_s * 1000,
            )
        )
    return out


@dataclass
class StageStats:
    """Rolling per-stage figures over the last `window` requests."""

    window: int = 1000
    hop_ms: dict[str, deque[float]] = field(default_factory=lambda: defaultdict(deque))
    queue_ms: dict[str, deque[float]] = field(default_factory=lambda: defaultdict(deque))
    step_ms: dict[str, deque[float]] = field(default_factory=lambda: defaultdict(deque))
    busy: dict[str, deque[tuple[float, float]]] = field(default_factory=lambda: defaultdict(deque))

    def add(self, trace: Sequence[StageTrace], submitted: float) -> list[HopTiming]:
        timings = hop_timings(trace, submitted)
        for t, entry in zip(timings, trace, strict=True):
            _push(self.hop_ms[t.stage], t.hop_ms, self.window)
            _push(self.queue_ms[t.stage], t.queue_ms, self.window)
            if t.steps:
                _push(self.step_ms[t.stage], t.step_ms, self.window)
            _push(self.busy[t.stage], (entry.started, entry.finished), self.window)
        return timings

    def summary(self, busy_window_s: float = 60.0, now: float | None = None) -> dict[str, dict[str, float]]:
        """Per stage: median hop/queue/step ms, and the busy fraction over the last `busy_window_s`."""
        end = time.time() if now is None else now
        out: dict[str, dict[str, float]] = {}
        for stage in self.busy:
            out[stage] = {
                "hop_ms_p50": median(self.hop_ms[stage]),
                "queue_ms_p50": median(self.queue_ms[stage]),
                "step_ms_p50": median(self.step_ms[stage]) if self.step_ms[stage] else 0.0,
                "busy_fraction": busy_fraction(self.busy[stage], end - busy_window_s, end),
            }
        return out


def busy_fraction(
    intervals: Iterable[tuple[float, float]], start: float | None = None, end: float | None = None
) -> float:
    """Fraction of [start, end] covered by the (non-overlapping) work intervals."""
    spans = sorted(intervals)
    if not spans:
        return 0.0
    lo = spans[0][0] if start is None else start
    hi = max(e for _, e in spans) if end is None else end
    if hi <= lo:
        return 0.0
    busy = sum(max(0.0, min(e, hi) - max(s, lo)) for s, e in spans)
    return min(1.0, busy / (hi - lo))


def median(values: Iterable[float]) -> float:
    return percentile(values, 50)


def percentile(values: Iterable[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method), 0.0 for no values."""
    data = sorted(values)
    if not data:
        return 0.0
    pos = (len(data) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def _push(d: deque, value, window: int) -> None:
    d.append(value)
    while len(d) > window:
        d.popleft()
