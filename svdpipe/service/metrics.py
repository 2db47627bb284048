"""The service's metrics (Ray's metrics API: Ray dashboard and its Prometheus endpoint)."""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)

_LATENCY_BOUNDS = [0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200]
_MS_BOUNDS = [0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000]


class ServiceMetrics:
    """Counters, gauges and histograms of the jobs API; no-ops where Ray's metrics are unavailable."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        if not enabled:
            return
        try:
            from ray.util import metrics as m
        except ImportError:  # pragma: no cover - ray is a dependency
            self.enabled = False
            return
        self.jobs = m.Counter("svdpipe_jobs_total", "Jobs that reached a status.", tag_keys=("status",))
        self.samples = m.Counter("svdpipe_samples_completed_total", "Videos completed.")
        self.queue_depth = m.Gauge("svdpipe_queue_depth", "Jobs waiting to enter the pipeline.")
        self.inflight = m.Gauge("svdpipe_inflight", "Jobs inside the pipeline.")
        self.latency = m.Histogram(
            "svdpipe_job_latency_seconds", "Job time from submission to completion.", boundaries=_LATENCY_BOUNDS
        )
        self.step_ms = m.Gauge("svdpipe_stage_step_ms", "Median UNet step time per stage.", tag_keys=("stage",))
        self.busy = m.Gauge(
            "svdpipe_stage_busy_fraction", "Fraction of recent time a stage worked.", tag_keys=("stage",)
        )
        self.hop_ms = m.Histogram(
            "svdpipe_hop_ms",
            "Hand-off time into a stage (transport + dispatch).",
            boundaries=_MS_BOUNDS,
            tag_keys=("stage",),
        )
        self.split = m.Counter("svdpipe_requests_split_total", "Jobs whose CFG halves ran on two actors.")
        self.helper_busy = m.Counter(
            "svdpipe_helper_busy_seconds_total", "Time helper actors spent on other jobs' CFG halves."
        )
        self.queue_ms = m.Histogram(
            "svdpipe_stage_queue_ms",
            "Time a request waited for a busy stage.",
            boundaries=_MS_BOUNDS,
            tag_keys=("stage",),
        )

    def job_status(self, status: str) -> None:
        if self.enabled:
            self.jobs.inc(1, tags={"status": status})

    def job_completed(self, latency_s: float, timings: list[Any]) -> None:
        if not self.enabled:
            return
        self.samples.inc(1)
        self.latency.observe(latency_s)
        for t in timings:
            self.hop_ms.observe(t.hop_ms, tags={"stage": t.stage})
            self.queue_ms.observe(t.queue_ms, tags={"stage": t.stage})

    def latency_mode(self, split: bool, helper_s: float) -> None:
        if self.enabled and split:
            self.split.inc(1)
            self.helper_busy.inc(helper_s)

    def occupancy(self, queued: int, inflight: int) -> None:
        if self.enabled:
            self.queue_depth.set(queued)
            self.inflight.set(inflight)

    def stages(self, summary: dict[str, dict[str, float]]) -> None:
        if not self.enabled:
            return
        for stage, figures in summary.items():
            self.step_ms.set(figures.get("step_ms_p50", 0.0), tags={"stage": stage})
            self.busy.set(figures.get("busy_fraction", 0.0), tags={"stage": stage})
