"""`svdpipe bench` on the command line: flags (generated from BenchSettings, as the main CLI's are from the
engine config), run or plot, and the GPU projection."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, get_args

from svdpipe.bench.settings import LOOPS, MODES, BenchSettings
from svdpipe.cli_flags import add_model_flags, model_from_args
from svdpipe.config import LatencyMode

_HELP = """closed- and open-loop throughput/latency of pipeline vs data-parallel vs sequential, on the same actors.

Every mode is one engine: pipeline and data-parallel with N model-holding actors each, sequential with one,
all with the same pool of CPU mux actors. Throughput is measured in steady state (the first round of
completions excluded); the ideal is N / W requests per second, W = T x step + encode + decode (the simulated
costs, or the profiled ones for a real model); efficiency = measured / ideal.

Open loop (--arrival-rate R, or --arrival-rate-frac F for R = F x N / W): Poisson arrivals seeded by --seed, the
same in every mode, each request sent at its arrival time whatever is still running; --requests and/or
--duration-s bound the arrivals. It runs after the closed loop (--loops open for it alone) and reports
p50/p95/p99 latency and queue wait (arrival to admission into the engine) from the arrival time, which a closed
loop hides. --mode-latency data-parallel=off sets one mode's latency mode over --latency-mode.

Simulation: --simulate-step-ms X makes a stand-in UNet wait X ms per call on a guidance batch of two (a batch of
one, as without guidance or with a CFG half, waits X/2); --simulate-encode-ms and --simulate-decode-ms make the
stand-in CLIP/VAE wait per request and per video (a decode chunk of k of F frames waits k/F of it). Waits leave
the CPU free, as GPU kernels would.
"""


def add_bench_parser(subparsers: Any) -> None:
    """Register `svdpipe bench` on the CLI's subparsers."""
    p = subparsers.add_parser(
        "bench",
        help="closed- and open-loop throughput/latency: pipeline vs data-parallel vs sequential",
        description=_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_settings_flags(p)
    proj = p.add_argument_group("projection (no run: arithmetic from assumed costs and a per-hop overhead)")
    proj.add_argument("--project", action="store_true", help="print the projection for --stages GPUs and exit")
    proj.add_argument("--assume-step-ms", type=float, help="assumed UNet step cost (with CFG), if no --profile")
    proj.add_argument("--assume-encode-ms", type=float, help="assumed encode cost (CLIP + VAE encoder)")
    proj.add_argument("--assume-decode-ms", type=float, help="assumed decode cost of the whole video")
    proj.add_argument("--hop-ms", type=float, default=3.0, help="per-call overhead (default 3.0: measured here)")
    p.add_argument("--label", help="a name for this run, kept in the JSON and used by --plot (e.g. an engine variant)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--out-json", metavar="FILE", help="also write the JSON object to FILE")
    p.add_argument("--plot", metavar="PNG", help="plot the results (with --from-json: of those files)")
    p.add_argument("--from-json", nargs="+", metavar="FILE", help="plot earlier --out-json files; run nothing")


def add_settings_flags(p: argparse.ArgumentParser, skip: set[str] | frozenset[str] = frozenset()) -> None:
    """A flag for every BenchSettings field not in `skip` (`svdpipe simulate` and `svdpipe capacity` take the
    same flags, so a bench command line runs in the simulator as it is)."""
    add_model_flags(p, BenchSettings, skip={"modes", "loops", "mode_latency", *skip})
    fields = BenchSettings.model_fields
    if "modes" not in skip:
        p.add_argument(
            "--modes",
            dest="modes",
            type=_mode_list,
            default=None,
            metavar="MODE[,MODE...]",
            help=f"{fields['modes'].description} (default: {','.join(MODES)})",
        )
    if "loops" not in skip:
        p.add_argument(
            "--loops",
            dest="loops",
            type=_loop_list,
            default=None,
            metavar="LOOP[,LOOP]|none",
            help=fields["loops"].description,
        )
    if "mode_latency" not in skip:
        p.add_argument(
            "--mode-latency",
            dest="mode_latency",
            type=_mode_latency,
            default=None,
            metavar="MODE=LATENCY[,...]",
            help=f"{fields['mode_latency'].description} (e.g. data-parallel=off)",
        )


def _mode_list(text: str) -> tuple[str, ...]:
    modes = tuple(m.strip() for m in text.split(",") if m.strip())
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise argparse.ArgumentTypeError(f"unknown mode(s) {unknown or text!r}; choose from {', '.join(MODES)}")
    return modes


def _loop_list(text: str) -> tuple[str, ...]:
    if text.strip() == "none":
        return ()
    loops = tuple(m.strip() for m in text.split(",") if m.strip())
    unknown = [m for m in loops if m not in LOOPS]
    if unknown or not loops:
        raise argparse.ArgumentTypeError(
            f"unknown loop(s) {unknown or text!r}; choose from {', '.join(LOOPS)} (or none)"
        )
    return loops


def _mode_latency(text: str) -> dict[str, str]:
    """`pipeline=auto,data-parallel=off` -> {mode: latency mode}."""
    latency_modes = get_args(LatencyMode)
    out: dict[str, str] = {}
    for item in (i.strip() for i in text.split(",") if i.strip()):
        mode, sep, latency = (part.strip() for part in item.partition("="))
        if not sep or mode not in MODES or latency not in latency_modes:
            raise argparse.ArgumentTypeError(
                f"{item!r} is not MODE=LATENCY with MODE one of {', '.join(MODES)} and LATENCY one of "
                f"{', '.join(latency_modes)}"
            )
        if mode in out:
            raise argparse.ArgumentTypeError(f"{mode} is given twice")
        out[mode] = latency
    if not out:
        raise argparse.ArgumentTypeError("expected MODE=LATENCY[,MODE=LATENCY...]")
    return out


def settings_from_args(args: argparse.Namespace) -> BenchSettings:
    return model_from_args(BenchSettings, args)


def run_bench_command(args: argparse.Namespace) -> int:
    """`svdpipe bench`: run (or, with --from-json, only plot) and print the table or the JSON object."""
    from svdpipe.bench.report import format_table, plot_results

    if args.from_json:
        if not args.plot:
            raise ValueError("--from-json needs --plot PNG")
        results = [json.loads(Path(p).read_text()) for p in args.from_json]
        plot_results(results, args.plot)
        print(f"wrote {args.plot} from {len(results)} result file(s)")
        return 0
    settings = settings_from_args(args)
    if args.project:
        return _project_command(args, settings)
    from svdpipe.bench.workload import run_bench

    result = run_bench(settings)
    if args.label:
        result["label"] = args.label
    text = json.dumps(result, indent=2)
    if args.out_json:
        Path(args.out_json).write_text(text + "\n")
    if args.plot:
        plot_results([result], args.plot)
    print(text if args.json else format_table(result), flush=True)
    return 0


def _project_command(args: argparse.Namespace, settings: BenchSettings) -> int:
    from svdpipe.bench.metrics import projection
    from svdpipe.profile import CostProfile

    if settings.profile is not None:
        profile = CostProfile.load(settings.profile)
        step, enc, dec = profile.typical_step_s, profile.encode_s, profile.decode_s
    else:
        assumed = (args.assume_step_ms, args.assume_encode_ms, args.assume_decode_ms)
        if any(v is None for v in assumed):
            raise ValueError("--project needs --profile FILE or all of --assume-step-ms/-encode-ms/-decode-ms")
        step, enc, dec = (v / 1000 for v in assumed)
    rows = projection(step, enc, dec, settings.steps, settings.frames, settings.stages, args.hop_ms / 1000)
    if args.json:
        costs = {"step_ms": step * 1000, "encode_ms": enc * 1000, "decode_ms": dec * 1000, "hop_ms": args.hop_ms}
        print(json.dumps({"costs": costs, "modes": rows}, indent=2))
        return 0
    print(
        f"PROJECTION for {settings.stages} GPUs, T={settings.steps}: step {step * 1000:g} ms, "
        f"encode {enc * 1000:g} ms, decode {dec * 1000:g} ms, hop {args.hop_ms:g} ms"
    )
    print(f"{'mode':<16}{'GPUs':>5}{'busiest s':>10}{'samples/h':>11}{'ideal/h':>9}{'eff':>7}{'idle s':>8}")
    for name, r in rows.items():
        print(
            f"{name:<16}{r['gpus']:>5.0f}{r['busiest_s']:>10.3f}{r['samples_per_hour']:>11.0f}"
            f"{r['ideal_samples_per_hour']:>9.0f}{r['efficiency']:>7.3f}{r['idle_latency_s']:>8.3f}"
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m svdpipe.bench ...`: the same as `svdpipe bench ...`."""
    parser = argparse.ArgumentParser(prog="svdpipe")
    add_bench_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["bench", *(argv if argv is not None else sys.argv[1:])])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    return run_bench_command(args)
