"""`svdpipe simulate --validate`: the same small configurations on Ray (the bench, in this process, with the
stand-in model's simulated costs) and in the simulator (with the cost profile the bench measured in the same
run), and the simulator's error on samples/h, p50 and p95.

Each configuration is small (a few requests of a few 200 ms steps) so the whole matrix runs in about a quarter
of an hour on a 2-core machine; `--quick` runs two of them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

from svdpipe.bench.settings import BenchSettings
from svdpipe.profile import CostProfile
from svdpipe.sim.costs import from_profile
from svdpipe.sim.run import SimOptions, simulate

logger = logging.getLogger(__name__)

VALIDATION_MUX_S = 0.01  # the bench writes .npy files of a few 32x32 frames: milliseconds on a mux actor
# samples_per_hour: the window of completions (it counts the drain); full_load_samples_per_hour: finished clips
# while every client is busy (closed loops only).
FIGURES = ("samples_per_hour", "full_load_samples_per_hour", "latency_p50_s", "latency_p95_s")
# Every configuration: the tiny model, 200 ms steps (the stand-in waits, leaving the CPU free), 32x32, 2 frames.
_BASE: dict[str, Any] = {
    "model": "tiny",
    "steps": 6,
    "frames": 2,
    "simulate_step_ms": 200.0,
    "simulate_encode_ms": 20.0,
    "simulate_decode_ms": 40.0,
    "idle_requests": 1,
}


@dataclass(frozen=True)
class Case:
    name: str
    settings: BenchSettings


def _case(name: str, **fields: Any) -> Case:
    return Case(name, BenchSettings(**{**_BASE, **fields}))


def matrix(quick: bool = False) -> list[Case]:
    """N in {1, 3, 7}, pipeline and data-parallel, closed and open loops, latency mode auto, long videos."""
    cases = [
        _case("N=1 closed", stages=1, modes=("pipeline",), loops=("closed",), requests=4, concurrency=2),
        _case("N=3 pipeline closed", stages=3, modes=("pipeline",), loops=("closed",), requests=12, concurrency=6),
    ]
    if quick:
        return cases
    return [
        *cases,
        _case("N=3 data-parallel closed", stages=3, modes=("data-parallel",), loops=("closed",), requests=12),
        _case(
            "N=3 pipeline open 0.6", stages=3, modes=("pipeline",), loops=("open",), arrival_rate_frac=0.6, requests=12
        ),
        _case(
            "N=3 pipeline auto, C=1",
            stages=3,
            modes=("pipeline",),
            loops=("closed",),
            latency_mode="auto",
            requests=6,
            concurrency=1,
        ),
        _case(
            "N=7 pipeline closed", stages=7, steps=7, modes=("pipeline",), loops=("closed",), requests=21, concurrency=7
        ),
        _case(
            "N=7 data-parallel closed",
            stages=7,
            steps=7,
            modes=("data-parallel",),
            loops=("closed",),
            requests=21,
            concurrency=7,
        ),
        _case(
            "N=7 data-parallel open 0.6",
            stages=7,
            steps=7,
            modes=("data-parallel",),
            loops=("open",),
            arrival_rate_frac=0.6,
            requests=14,
        ),
        _case(
            "N=3 pipeline 3-clip videos",
            stages=3,
            modes=("pipeline",),
            loops=("closed",),
            clips=3,
            frames=4,
            decode_chunk_size=2,
            requests=6,
            concurrency=3,
            idle_requests=0,
        ),
        _case(
            "N=7 pipeline auto open 0.3",
            stages=7,
            steps=7,
            modes=("pipeline",),
            loops=("open",),
            latency_mode="auto",
            arrival_rate_frac=0.3,
            requests=10,
        ),
    ]


def errors(real: dict[str, Any], sim: dict[str, Any]) -> list[dict[str, Any]]:
    """Per mode and loop, each figure on Ray and in the simulator and the simulator's relative error."""
    rows = []
    for mode, r in real["modes"].items():
        for loop in ("closed_loop", "open_loop"):
            if loop not in r:
                continue
            row: dict[str, Any] = {"mode": mode, "loop": loop.removesuffix("_loop")}
            for key in FIGURES:
                a, b = r[loop].get(key), sim["modes"][mode][loop].get(key)
                row[key] = {"ray": a, "sim": b, "error": (b - a) / a if a and b is not None else None}
            rows.append(row)
    return rows


def run_validation(quick: bool = False) -> list[dict[str, Any]]:
    """Every case on Ray and in the simulator; the error rows of each."""
    from svdpipe.bench.workload import run_bench

    out = []
    for case in matrix(quick):
        logger.info("validation: %s on Ray", case.name)
        real = run_bench(case.settings)
        measured = CostProfile.from_json(real["profile"])
        costs = from_profile(measured, case.settings.frames, "measured in the same run")
        costs = replace(costs, mux_s=VALIDATION_MUX_S)
        sim = simulate(case.settings, SimOptions(costs))
        for row in errors(real, sim):
            out.append({"case": case.name, **row, "ray_wall_s": real["wall_s"]})
    return out


def format_errors(rows: list[dict[str, Any]]) -> str:
    head = f"{'case':<30}{'loop':>7}" + "".join(f"{k.removesuffix('_s'):>30}" for k in FIGURES)
    lines = [head, f"{'':<37}" + "".join(f"{'ray':>10}{'sim':>10}{'error':>10}" for _ in FIGURES)]
    worst = 0.0
    for row in rows:
        cells = ""
        for key in FIGURES:
            f = row[key]
            err = f["error"]
            worst = max(worst, abs(err)) if err is not None else worst
            cells += _value(f["ray"]) + _value(f["sim"]) + (f"{err:>+10.1%}" if err is not None else f"{'-':>10}")
        lines.append(f"{row['case']:<30}{row['loop']:>7}" + cells)
    lines.append(f"\nworst |error|: {worst:.1%} over {len(rows)} loop(s)")
    return "\n".join(lines)


def _value(x: float | None) -> str:
    return f"{x:>10.3f}" if x is not None else f"{'-':>10}"
