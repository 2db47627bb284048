"""`svdpipe simulate` and `svdpipe capacity` on the command line: the bench's flags (bench/cli.py generates
them from BenchSettings) plus the simulator's own."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from svdpipe.bench.cli import add_settings_flags
from svdpipe.cli_flags import add_model_flags, model_from_args
from svdpipe.sim.costs import ASSUMPTIONS
from svdpipe.sim.settings import SimSettings

_SIMULATE_HELP = """the service on a virtual clock: the real planner, simulated actors, in seconds instead of hours.

Any `svdpipe bench ...` command line runs here with `simulate` in place of `bench`: the same workload flags
(closed loop of C clients and M requests; open loop of Poisson arrivals with --arrival-rate or
--arrival-rate-frac, bounded by --requests and/or --duration-s; the idle single requests) and the same JSON keys
with --json, so the two compare field by field. Every pipeline drives svdpipe.planner.Planner itself (admit, the
calls' started/ended events, release); model actors run one call at a time in the plan's priority order, CFG
helpers take a half only when idle, mux actors one video at a time.

Costs: --profile FILE (written by `svdpipe bench --save-profile`), --profile-name NAME (a table of ASSUMED
costs shipped with svdpipe: {names}), or the bench's --simulate-step-ms/-encode-ms/-decode-ms (which also
override the profile's figure for their phase). --cost-cv spreads each call's duration (lognormal, seeded by
--seed). A named table also sets --steps and --frames to its own when they are not given.

The flags that only matter on Ray (--model, --dtype, --transport, --num-gpus-per-actor, --num-cpus-per-actor,
--height, --width, --torch-threads, --address, --ray-timeline, --save-profile, --parareal-tol) are accepted, so
a bench command line runs unchanged, and ignored; a command line without costs needs --profile or
--profile-name. --replicas R runs R pipelines of --stages actors over one job queue (N in --arrival-rate-frac
is then --stages x R).

Not modelled: transfers' sizes (a hop costs --hop-ms whatever it carries), the events' delay to the planner
(it sees them at once), failures and retries, the CPU the actors share. Parareal is coarse: see
svdpipe/sim/service.py.
"""

_CAPACITY_HELP = """the fewest GPUs that carry a traffic within its SLOs, from simulated runs of every layout.

For 1..--max-gpus GPUs, every layout (R pipelines x N model actors with R x N GPUs, pipeline or data-parallel,
latency mode off or auto) runs the traffic (Poisson --arrival-rate for --duration-s, or --trace FILE, with the
bench's request flags: --steps, --frames, --decode-chunk-size) in the simulator. A layout meets the SLOs when
its p95 latency is within --p95 and it keeps up with the arrivals (serves at least 90 %% of them per hour over
the run; with --min-throughput, at least 90 %% of that). Prints the cheapest layout and, per GPU count, the best
layout's samples/h and p95 at the traffic's rate and its capacity (the highest rate meeting the SLOs, by
bisection); --plot PNG draws that curve (matplotlib; without it a CSV is written instead).
"""

# BenchSettings fields that mean nothing to the capacity search (it chooses layouts and runs one open loop).
_CAPACITY_SKIP = frozenset(
    {
        "model",
        "dtype",
        "transport",
        "num_gpus_per_actor",
        "num_cpus_per_actor",
        "latency_mode",
        "parareal_tol",
        "parareal_max_iters",
        "stages",
        "height",
        "width",
        "modes",
        "save_profile",
        "requests",
        "concurrency",
        "loops",
        "arrival_rate_frac",
        "mode_latency",
        "idle_requests",
        "torch_threads",
        "address",
        "ray_timeline",
    }
)


def _add_sim_flags(p: argparse.ArgumentParser, skip: frozenset[str] = frozenset()) -> None:
    add_model_flags(p, SimSettings, skip=skip)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")


def _tables() -> str:
    return "\nThe tables of assumed costs (--profile-name):\n" + "\n".join(
        f"  {name}: {a.note}" for name, a in ASSUMPTIONS.items()
    )


def add_simulate_parser(subparsers: Any) -> None:
    """Register `svdpipe simulate`."""
    p = subparsers.add_parser(
        "simulate",
        help="the service on a virtual clock (the real planner): bench figures in seconds",
        description=_SIMULATE_HELP.format(names=", ".join(ASSUMPTIONS)) + _tables(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_settings_flags(p)
    _add_sim_flags(p)
    p.add_argument("--label", help="a name for this run, kept in the JSON")
    p.add_argument("--out-json", metavar="FILE", help="also write the JSON object to FILE")
    v = p.add_argument_group("validation (runs Ray: the bench and the simulator on the same configurations)")
    v.add_argument("--validate", action="store_true", help="run the validation matrix (about 15 minutes) and print "
                   "the simulator's error on samples/h, p50 and p95; the other flags are ignored")  # fmt: skip
    v.add_argument("--quick", action="store_true", help="with --validate: two configurations only (a smoke check)")


def add_capacity_parser(subparsers: Any) -> None:
    """Register `svdpipe capacity`."""
    p = subparsers.add_parser(
        "capacity",
        help="the fewest GPUs (and the layout) that carry a traffic within its SLOs, by simulation",
        description=_CAPACITY_HELP + _tables(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_settings_flags(p, skip=_CAPACITY_SKIP)
    _add_sim_flags(p, skip=frozenset({"replicas"}))
    s = p.add_argument_group("SLOs and search")
    s.add_argument("--p95", type=parse_seconds, metavar="DURATION", help="p95 latency SLO, e.g. 90s, 2m, 90")
    s.add_argument("--min-throughput", type=float, metavar="PER_HOUR", help="samples/hour the layout must serve "
                   "(also the arrival rate when --arrival-rate is not given)")  # fmt: skip
    s.add_argument("--max-gpus", type=int, default=8, help="search 1..this many GPUs (default 8)")
    s.add_argument("--parallelism", choices=["pipeline", "data-parallel", "both"], default="both",
                   help="which parallelism the layouts use (default both)")  # fmt: skip
    s.add_argument("--latency-modes", default="off,auto", metavar="MODE[,MODE]",
                   help="latency modes to try (default off,auto)")  # fmt: skip
    s.add_argument("--no-curve", action="store_true", help="skip the capacity bisection per GPU count (faster)")
    s.add_argument("--plot", metavar="PNG", help="the throughput and p95 curves against GPUs (CSV if no matplotlib)")
    s.add_argument("--csv", metavar="FILE", help="also write the curve as CSV")


def parse_seconds(text: str) -> float:
    """`90s`, `1.5m`, `2h`, `90` -> seconds."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(ms|s|m|min|h)?\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"expected a duration such as 90s, 2m or 1h, got {text!r}")
    scale = {"ms": 0.001, "s": 1, None: 1, "m": 60, "min": 60, "h": 3600}[m.group(2)]
    return float(m.group(1)) * scale


def _costs(args: argparse.Namespace, sim: SimSettings, frames: int) -> Any:
    from svdpipe.sim.costs import choose

    return choose(
        args.profile,
        sim.profile_name,
        frames,
        args.simulate_step_ms,
        args.simulate_encode_ms,
        args.simulate_decode_ms,
        sim.cost_cv,
        sim.hop_ms,
        sim.mux_ms,
    )


def _table_defaults(args: argparse.Namespace, sim: SimSettings) -> None:
    """A named table's request shape, where --steps and --frames are not given."""
    if sim.profile_name is not None:
        table = ASSUMPTIONS[sim.profile_name]
        args.steps = args.steps if args.steps is not None else table.steps
        args.frames = args.frames if args.frames is not None else table.frames


def _trace(sim: SimSettings) -> Any:
    from svdpipe.sim.workload import read_trace

    return tuple(read_trace(sim.trace)) if sim.trace else None


def run_simulate_command(args: argparse.Namespace) -> int:
    from svdpipe.bench.cli import settings_from_args
    from svdpipe.bench.report import format_table
    from svdpipe.sim.run import SimOptions, simulate

    if args.validate:
        from svdpipe.sim.validate import format_errors, run_validation

        rows = run_validation(args.quick)
        print(json.dumps(rows, indent=2) if args.json else format_errors(rows), flush=True)
        return 0
    sim = model_from_args(SimSettings, args)
    _table_defaults(args, sim)
    trace = _trace(sim)
    if trace is not None:  # a trace is an open loop; its mean rate stands for the rate the settings ask for
        args.loops = args.loops or ("open",)
        if args.arrival_rate is None and args.arrival_rate_frac is None:
            args.arrival_rate = len(trace) / max(trace[-1].arrival, 1e-9)
    settings = settings_from_args(args)
    costs = _costs(args, sim, settings.frames)
    result = simulate(settings, SimOptions(costs, sim.replicas, sim.max_inflight, trace))
    if args.label:
        result["label"] = args.label
    text = json.dumps(result, indent=2)
    if args.out_json:
        Path(args.out_json).write_text(text + "\n")
    arrivals = f"; open-loop arrivals from {sim.trace}, not Poisson" if trace is not None else ""
    print(text if args.json else format_table(result) + f"\n\nsimulated: {costs}{arrivals}", flush=True)
    return 0


def run_capacity_command(args: argparse.Namespace) -> int:
    from svdpipe.bench.settings import BenchSettings
    from svdpipe.planner import RequestShape
    from svdpipe.sim.capacity import Slo, Traffic, plot, search, write_csv

    sim = model_from_args(SimSettings, args)
    _table_defaults(args, sim)
    d = BenchSettings.model_fields
    steps = args.steps if args.steps is not None else d["steps"].default
    frames = args.frames if args.frames is not None else d["frames"].default
    chunk = args.decode_chunk_size or frames
    trace = _trace(sim)
    rate = args.arrival_rate
    if trace is not None:
        rate = len(trace) / max(trace[-1].arrival, 1e-9)
    elif rate is None and args.min_throughput is not None:
        rate = args.min_throughput / 3600
    if rate is None:
        raise ValueError("capacity needs traffic: --arrival-rate, --trace or --min-throughput")
    if args.p95 is None and args.min_throughput is None:
        raise ValueError("capacity needs an SLO: --p95 and/or --min-throughput")
    modes = [m.strip() for m in args.latency_modes.split(",") if m.strip()]
    if not modes or any(m not in ("off", "cfg-split", "auto", "parareal") for m in modes):
        raise ValueError(f"--latency-modes: expected off, cfg-split, auto or parareal, got {args.latency_modes!r}")
    if args.max_gpus < 1:
        raise ValueError(f"--max-gpus must be at least 1, got {args.max_gpus}")
    costs = _costs(args, sim, frames)
    traffic = Traffic(
        RequestShape(steps, frames, chunk), rate, args.duration_s or 3600.0, args.seed or 0, trace, args.clips or 1
    )
    slo = Slo(args.p95, args.min_throughput)
    parallelisms = ("pipeline", "data-parallel") if args.parallelism == "both" else (args.parallelism,)
    answer = search(
        costs,
        traffic,
        slo,
        args.max_gpus,
        args.mux_actors or 2,
        sim.max_inflight or 16,
        parallelisms,
        modes,
        curve=not args.no_curve,
    )
    if args.csv:
        write_csv(answer, args.csv)
    written = plot(answer, args.plot, slo, f"capacity, {costs.source}") if args.plot else None
    if args.json:
        print(json.dumps(_answer_json(answer, costs), indent=2))
    else:
        print(_format_answer(answer, costs, traffic, slo))
    if written is not None:
        note = "" if written == args.plot else " (matplotlib is not installed: the curve as CSV instead of a PNG)"
        print(f"wrote {written}{note}")
    return 0


def _point_json(p: Any) -> dict[str, Any]:
    return {
        "layout": p.layout.describe(),
        "gpus": p.layout.gpus,
        "replicas": p.layout.replicas,
        "actors": p.layout.actors,
        "parallelism": p.layout.parallelism,
        "latency_mode": p.layout.latency_mode,
        "arrival_rate_per_s": p.rate_per_s,
        "samples_per_hour": p.samples_per_hour,
        "latency_p95_s": p.p95_s,
        "meets": p.meets,
    }


def _answer_json(answer: Any, costs: Any) -> dict[str, Any]:
    return {
        "costs": costs.__dict__,
        "cheapest": _point_json(answer.cheapest) if answer.cheapest else None,
        "curve": [{**_point_json(c.at_rate), "capacity_samples_per_hour": c.capacity_per_hour} for c in answer.curve],
        "tried": [_point_json(p) for p in answer.points],
    }


def _format_answer(answer: Any, costs: Any, traffic: Any, slo: Any) -> str:
    slos = []
    if slo.p95_s is not None:
        slos.append(f"p95 <= {slo.p95_s:g} s")
    if slo.min_per_hour is not None:
        slos.append(f">= {slo.min_per_hour:g} samples/h")
    lines = [
        f"costs ({costs.source}): step {costs.step_s * 1000:g} ms, encode {costs.encode_s * 1000:g} ms, decode "
        f"{costs.decode_frame_s * 1000:g} ms/frame, mux {costs.mux_s * 1000:g} ms, hop {costs.hop_s * 1000:g} ms, "
        f"cv {costs.cv:g}",
        f"traffic: {traffic.rate_per_s * 3600:.0f} requests/h ({'trace' if traffic.trace else 'Poisson'}), "
        f"T={traffic.shape.num_steps}, {traffic.shape.num_frames} frames, {traffic.duration_s:g} s; SLO: "
        + ", ".join(slos),
        "",
        f"{'GPUs':>5}  {'best layout':<34}{'samples/h':>10}{'p95 s':>9}{'meets':>7}{'capacity/h':>12}",
    ]
    for c in answer.curve:
        p = c.at_rate
        cap = f"{c.capacity_per_hour:>12.0f}" if c.capacity_per_hour else f"{'-':>12}"
        lines.append(
            f"{c.gpus:>5}  {p.layout.describe():<34}{p.samples_per_hour:>10.0f}{p.p95_s:>9.1f}"
            f"{'yes' if p.meets else 'no':>7}" + cap
        )
    best = answer.cheapest
    lines.append("")
    if best is None:
        lines.append(f"no layout of up to {len(answer.curve)} GPUs meets the SLOs")
    else:
        lines.append(
            f"cheapest: {best.layout.gpus} GPU(s), {best.layout.describe()}: {best.samples_per_hour:.0f} samples/h, "
            f"p95 {best.p95_s:.1f} s"
        )
    return "\n".join(lines)
