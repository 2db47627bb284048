"""`svdpipe bench`: closed- and open-loop runs of the engine's modes (settings, workload, metrics, report, cli)."""

from svdpipe.bench.cli import add_bench_parser, main, run_bench_command, settings_from_args
from svdpipe.bench.metrics import (
    Sample,
    arrival_rate_from_fraction,
    cpu_busy_fraction,
    efficiency,
    ideal_samples_per_hour,
    percentiles,
    poisson_arrivals,
    projection,
    request_work_s,
    steady_state_rate,
    steady_state_window,
    summarise,
    summarise_open,
)
from svdpipe.bench.settings import LOOPS, MODES, BenchSettings, Loop, Mode

__all__ = [
    "LOOPS",
    "MODES",
    "BenchSettings",
    "Loop",
    "Mode",
    "Sample",
    "add_bench_parser",
    "arrival_rate_from_fraction",
    "cpu_busy_fraction",
    "efficiency",
    "ideal_samples_per_hour",
    "main",
    "percentiles",
    "poisson_arrivals",
    "projection",
    "request_work_s",
    "run_bench_command",
    "settings_from_args",
    "steady_state_rate",
    "steady_state_window",
    "summarise",
    "summarise_open",
]
