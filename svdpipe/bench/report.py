"""The bench's output: the human-readable table of a result object, and plots over several result files."""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from svdpipe.bench.settings import MODES


def format_table(result: dict[str, Any]) -> str:
    """The human-readable summary of a result object: one table per loop kind, then the idle system."""
    s, prof = result["settings"], result["profile"]
    modes = list(result["modes"].values())
    closed = [m for m in modes if "closed_loop" in m]
    phases = (("step", "simulate_step_ms"), ("encode", "simulate_encode_ms"), ("decode", "simulate_decode_ms"))
    simulated = [f"{name} {s[key]:g} ms" for name, key in phases if s[key] is not None]
    lines = [
        f"model {s['model']}, N={s['stages']}, T={s['steps']}, {s['frames']} frames {s['width']}x{s['height']}, "
        f"decode chunk {s['decode_chunk_size'] or s['frames']}, "
        + ("simulated " + ", ".join(simulated) if simulated else "real model")
        + (f", M={result['num_requests']} closed-loop requests per mode" if closed else "")
        + f"; {result['machine']['cpus']} CPUs, "
        + f"GPU: {result['machine']['gpu'] or 'none'}",
        f"profile ({prof['source']}): encode {prof['encode_ms']:.1f} ms, "
        f"step {statistics.median(prof['step_ms']):.1f} ms, decode {prof['decode_ms']:.1f} ms",
    ]
    waits = f"{'p50 s':>8}{'p95 s':>8}{'p99 s':>8}{'wait50':>8}{'wait95':>8}{'wait99':>8}"
    if closed:
        lines += [
            "",
            "closed loop: C clients, each sending its next request when its last one finishes",
            f"{'mode':<14}{'latency':>10}{'act':>4}{'mux':>4}{'C':>4}{'samples/h':>11}{'full/h':>9}{'ideal/h':>10}"
            + f"{'eff':>7}"
            + waits
            + f"{'hop ms':>8}{'busy min-max':>14}",
        ]
        for m in closed:
            r = m["closed_loop"]
            lines.append(
                f"{m['mode']:<14}{m['latency_mode']:>10}{m['actors']:>4}{m['mux_actors']:>4}{r['concurrency']:>4}"
                f"{r['samples_per_hour']:>11.0f}{_num(r.get('full_load_samples_per_hour'), '.0f'):>9}"
                f"{m['ideal_samples_per_hour']:>10.0f}{r['efficiency']:>7.3f}"
                + _waits(r)
                + f"{_num(r['per_hop_ms'], '.2f'):>8}{_busy(r):>14}"
            )
    opened = [m for m in modes if "open_loop" in m]
    if opened:
        rate = result["arrival_rate_per_s"]
        frac = f" = {s['arrival_rate_frac']:g} x N / W" if s.get("arrival_rate_frac") is not None else ""
        lines += [
            "",
            f"open loop: Poisson arrivals at {rate:.3g}/s{frac} (seed {s['seed']}), each sent at its arrival time",
            f"{'mode':<14}{'latency':>10}{'act':>4}{'mux':>4}{'M':>5}{'samples/h':>11}{'offered/h':>10}{'eff':>7}"
            + waits
            + f"{'busy min-max':>14}",
        ]
        for m in opened:
            r = m["open_loop"]
            lines.append(
                f"{m['mode']:<14}{m['latency_mode']:>10}{m['actors']:>4}{m['mux_actors']:>4}{r['requests']:>5}"
                f"{r['samples_per_hour']:>11.0f}{r['offered_per_hour']:>10.0f}{r['efficiency']:>7.3f}"
                + _waits(r)
                + f"{_busy(r):>14}"
            )
    lines += ["", f"{'idle system':<14}{'idle s':>8}{'/local':>8}"]
    lines += [
        f"{m['mode']:<14}{_num(m['idle_latency_s'], '.3f'):>8}{_num(m['idle_latency_ratio'], '.3f'):>8}" for m in modes
    ]
    if "pipeline_over_data_parallel" in result:
        lines.append(f"\npipeline / data-parallel (closed loop): {result['pipeline_over_data_parallel']:.3f}")
    bursts = [m["mode"] for m in closed if m["closed_loop"]["requests"] <= m["closed_loop"]["concurrency"]]
    if bursts:
        lines.append(
            f"\nnote: {', '.join(bursts)}: M <= C, so every request was sent at once and the loop never reached a "
            "steady state: its samples/h and eff describe one burst (use --requests above C for throughput)"
        )
    lines += [
        "",
        "act: model-holding actors; mux: CPU mux actors; samples/h: completions from the fill to the end (the "
        "drain included); full/h: only while every client has a request in flight; eff: samples/h / ideal N / W, "
        "W = T x step + encode + decode; p50-p99: latency from arrival; wait: arrival to admission into the "
        "engine; hop: median hand-off into calls after the first; busy: model actors; idle: one request on the "
        "idle system, /local: vs the single-process path",
    ]
    return "\n".join(lines)


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _waits(loop: dict[str, Any]) -> str:
    keys = [f"{name}_p{q}_s" for name in ("latency", "queue_wait") for q in (50, 95, 99)]
    return "".join(f"{_num(loop[k], '.3f'):>8}" for k in keys)


def _busy(loop: dict[str, Any]) -> str:
    busy = list(loop["busy_fraction"].values())
    return f"{min(busy):.2f}-{max(busy):.2f}" if busy else "-"


def closed_loop_of(mode: dict[str, Any]) -> dict[str, Any] | None:
    """A mode's closed-loop figures: its `closed_loop` object, or the mode itself in files written before the
    open loop (whose modes held the closed loop's keys directly); None if it ran no closed loop."""
    if "closed_loop" in mode:
        return mode["closed_loop"]
    return mode if "samples_per_hour" in mode else None


def plot_results(results: Sequence[dict[str, Any]], path: str | Path) -> None:
    """Two panels: samples/hour vs N per mode; efficiency vs simulated step time. Medians of repeated runs, of
    the closed loop."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def key_counts(key: str) -> Any:
        values = [r["settings"][key] for r in results]
        return max(set(values), key=values.count)

    ref_step, ref_n = key_counts("simulate_step_ms"), key_counts("stages")
    by_n: dict[tuple[str, int], list[float]] = defaultdict(list)
    by_step: dict[tuple[str, float], list[float]] = defaultdict(list)
    ideal_n: dict[int, float] = {}
    for r in results:
        st = r["settings"]
        for name, m in r["modes"].items():
            loop = closed_loop_of(m)
            if loop is None:
                continue
            mode = f"{name} ({r['label']})" if r.get("label") else name
            if st["simulate_step_ms"] == ref_step:
                by_n[(mode, st["stages"])].append(loop["samples_per_hour"])
                if name != "sequential":
                    ideal_n[st["stages"]] = m["ideal_samples_per_hour"]
            if st["stages"] == ref_n and st["simulate_step_ms"] is not None:
                by_step[(mode, st["simulate_step_ms"])].append(loop["efficiency"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    series = sorted({mode for mode, _ in by_n} | {mode for mode, _ in by_step}, key=_series_order)
    for i, mode in enumerate(series):  # a series needs two points to say anything about a trend
        style = {"marker": "o", "label": mode, "color": f"C{i}", "ls": "--" if " (" in mode else "-"}
        pts = sorted((n, statistics.median(v)) for (m, n), v in by_n.items() if m == mode)
        if len(pts) > 1:
            left.plot(*zip(*pts, strict=True), **style)
        pts = sorted((x, statistics.median(v)) for (m, x), v in by_step.items() if m == mode)
        if len(pts) > 1:
            right.plot(*zip(*pts, strict=True), **style)
    if ideal_n:
        left.plot(*zip(*sorted(ideal_n.items()), strict=True), "k:", label="ideal N / W")
    step_label = f"{ref_step:g} ms simulated step" if ref_step else "real UNet"
    left.set(xlabel="N (model actors)", ylabel="samples / hour", title=f"Throughput vs N ({step_label})")
    right.set(xlabel="simulated UNet step (ms)", ylabel="efficiency (measured / ideal)", title=f"Efficiency, N={ref_n}")
    right.axhline(0.97, color="grey", ls="--", lw=0.8, label="target 0.97")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("svdpipe bench on a 2-core CPU (no GPU), tiny model, closed loop", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _series_order(name: str) -> tuple[int, str]:
    base = name.split(" (")[0]
    return (MODES.index(base) if base in MODES else len(MODES), name)
