"""`svdpipe bench`: closed-loop benchmarks of the engine's modes (settings, workload, pure metrics, report, CLI)."""

from svdpipe.bench.cli import add_bench_parser, main, run_bench_command, settings_from_args
from svdpipe.bench.metrics import (
    Sample,
    cpu_busy_fraction,
    efficiency,
    ideal_samples_per_hour,
    projection,
    request_work_s,
    steady_state_rate,
    steady_state_window,
    summarise,
)
from svdpipe.bench.settings import MODES, BenchSettings, Mode

__all__ = [
    "MODES",
    "BenchSettings",
    "Mode",
    "Sample",
    "add_bench_parser",
    "cpu_busy_fraction",
    "efficiency",
    "ideal_samples_per_hour",
    "main",
    "projection",
    "request_work_s",
    "run_bench_command",
    "settings_from_args",
    "steady_state_rate",
    "steady_state_window",
    "summarise",
]
