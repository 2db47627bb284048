"""The bench's output: the human-readable table of a result object, and plots over several result files."""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from svdpipe.bench.settings import MODES


def format_table(result: dict[str, Any]) -> str:
    """The human-readable summary of a result object."""
    s, prof = result["settings"], result["profile"]

    def num(value: float | None, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    phases = (("step", "simulate_step_ms"), ("encode", "simulate_encode_ms"), ("decode", "simulate_decode_ms"))
    simulated = [f"{name} {s[key]:g} ms" for name, key in phases if s[key] is not None]
    lines = [
        f"model {s['model']}, N={s['stages']}, T={s['steps']}, {s['frames']} frames {s['width']}x{s['height']}, "
        f"decode chunk {s['decode_chunk_size'] or s['frames']}, "
        + ("simulated " + ", ".join(simulated) if simulated else "real model")
        + f", M={result['num_requests']} requests per mode; {result['machine']['cpus']} CPUs, "
        + f"GPU: {result['machine']['gpu'] or 'none'}",
        f"profile ({prof['source']}): encode {prof['encode_ms']:.1f} ms, "
        f"step {statistics.median(prof['step_ms']):.1f} ms, decode {prof['decode_ms']:.1f} ms",
        "",
        f"{'mode':<14}{'act':>4}{'mux':>4}{'C':>4}{'samples/h':>11}{'ideal/h':>10}{'eff':>7}"
        f"{'p50 s':>8}{'p95 s':>8}{'hop ms':>8}{'busy min-max':>14}{'idle s':>8}{'/local':>8}",
    ]
    for r in result["modes"].values():
        busy = list(r["busy_fraction"].values())
        lines.append(
            f"{r['mode']:<14}{r['actors']:>4}{r['mux_actors']:>4}{r['concurrency']:>4}{r['samples_per_hour']:>11.0f}"
            f"{r['ideal_samples_per_hour']:>10.0f}{r['efficiency']:>7.3f}"
            f"{r['latency_p50_s']:>8.3f}{r['latency_p95_s']:>8.3f}{num(r['per_hop_ms'], '.2f'):>8}"
            f"{min(busy):>9.2f}-{max(busy):.2f}{num(r['idle_latency_s'], '.3f'):>8}"
            f"{num(r['idle_latency_ratio'], '.3f'):>8}"
        )
    if "pipeline_over_data_parallel" in result:
        lines.append(f"\npipeline / data-parallel: {result['pipeline_over_data_parallel']:.3f}")
    bursts = [r["mode"] for r in result["modes"].values() if r["requests"] <= r["concurrency"]]
    if bursts:
        lines.append(
            f"\nnote: {', '.join(bursts)}: M <= C, so every request was sent at once and the loop never reached a "
            "steady state: its samples/h and eff describe one burst (use --requests above C for throughput)"
        )
    lines += [
        "",
        "act: model-holding actors; mux: CPU mux actors; eff: measured / ideal N / W, W = T x step + encode + "
        "decode; hop: median hand-off into calls after the first; busy: model actors; idle: one request on the "
        "idle system, /local: vs the single-process path",
    ]
    return "\n".join(lines)


def plot_results(results: Sequence[dict[str, Any]], path: str | Path) -> None:
    """Two panels: samples/hour vs N per mode; efficiency vs simulated step time. Medians of repeated runs."""
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
            mode = f"{name} ({r['label']})" if r.get("label") else name
            if st["simulate_step_ms"] == ref_step:
                by_n[(mode, st["stages"])].append(m["samples_per_hour"])
                if name != "sequential":
                    ideal_n[st["stages"]] = m["ideal_samples_per_hour"]
            if st["stages"] == ref_n and st["simulate_step_ms"] is not None:
                by_step[(mode, st["simulate_step_ms"])].append(m["efficiency"])
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
