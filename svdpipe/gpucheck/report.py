"""gpu-check's Markdown report from its JSON object (pure): environment, every figure, and what failed."""

from __future__ import annotations

from typing import Any

MIB = 1024**2


def _mib(b: Any) -> str:
    return f"{b / MIB:.0f} MiB" if isinstance(b, int | float) else "-"


def _ms(v: Any) -> str:
    return f"{v:.1f}" if isinstance(v, int | float) else "-"


def markdown(report: dict[str, Any]) -> str:
    env, s, parts = report.get("environment", {}), report.get("settings", {}), report.get("parts", {})
    lines = [
        "# svdpipe gpu-check" + (" (dry run: CPU, tiny model)" if report.get("dry_run") else ""),
        "",
        f"Started {report.get('started', '?')}; GPU {env.get('gpu') or 'none'}, driver {env.get('driver') or '-'}, "
        f"torch {env.get('torch')} (CUDA {env.get('torch_cuda') or '-'}), diffusers {env.get('diffusers')}, "
        f"Python {env.get('python')}.",
        f"Model {s.get('model')} ({s.get('dtype')}, random weights), {s.get('width')}x{s.get('height')}, "
        f"frames {', '.join(str(f) for f in s.get('frames', ()))}; {s.get('timed_steps')} steps timed per run, "
        "the first dropped.",
        "",
        "## Parts",
        "",
        "| part | status | seconds | budget s | error |",
        "|---|---|---|---|---|",
    ]
    for name, p in parts.items():
        error = (p.get("error") or p.get("reason") or "").replace("|", "/")[:300]
        lines.append(f"| {name} | {p['status']} | {p.get('seconds', '-')} | {p.get('budget_s', '-')} | {error} |")
    failed = report.get("failed")
    if failed is not None:
        lines += ["", "Failed or incomplete: " + (", ".join(failed) if failed else "none") + "."]
    lines += _gpu_tests(parts.get("gpu_tests", {}).get("result"))
    lines += _measure(parts.get("measure", {}).get("result"), parts.get("compile", {}).get("result"))
    lines += _bench(parts.get("bench", {}).get("result"))
    return "\n".join(lines) + "\n"


def _gpu_tests(result: Any) -> list[str]:
    if not result:
        return []
    c = result["counts"]
    out = ["", "## GPU tests (pytest -m gpu)", ""]
    out.append(f"{c['passed']} passed, {c['failed']} failed, {c['error']} errors, {c['skipped']} skipped.")
    out += ["", "| test | outcome | details |", "|---|---|---|"]
    for t in result["tests"]:
        extra = {k: v for k, v in t.items() if k not in ("test", "outcome", "reason")}
        details = t.get("reason") or ", ".join(f"{k}={v}" for k, v in extra.items())
        out.append(f"| {t['test']} | {t['outcome']} | {(details or '').replace('|', '/')[:200]} |")
    return out


def _measure(result: Any, compiled: Any) -> list[str]:
    if not result:
        return []
    out = ["", "## Per-step and decode figures", ""]
    out.append(
        f"Weights: {_mib(result.get('weights_allocated_bytes'))} allocated after loading, "
        f"{_mib(result.get('weights_estimated_bytes'))} estimated by the fit check; "
        f"peak {_mib(result.get('peak_bytes'))}; load {_ms(result.get('load_s'))} s."
    )
    out += ["", "| frames | svdpipe step ms | compiled step ms | diffusers step ms | denoise peak | auto chunk |"]
    out.append("|---|---|---|---|---|---|")
    comp = (compiled or {}).get("frames", {})
    for frames, row in result.get("frames", {}).items():
        c = comp.get(frames, {})
        out.append(
            f"| {frames} | {_ms(row.get('step_ms_median'))} | {_ms(c.get('step_ms_median'))} | "
            f"{_ms(row.get('diffusers_step_ms_median'))} | {_mib(row.get('denoise_peak_bytes'))} | "
            f"{row.get('auto_decode_chunk', '-')} |"
        )
    for frames, c in comp.items():
        out.append(
            f"\nCompiled ({(compiled or {}).get('backend')}), {frames} frames: first call {c['first_call_s']:.1f} s."
        )
    out += [
        "",
        "| frames | decode chunk | decode ms | ms per chunk | peak | per-frame peak |",
        "|---|---|---|---|---|---|",
    ]
    for frames, row in result.get("frames", {}).items():
        for chunk, d in row.get("decode", {}).items():
            if "error" in d:
                out.append(f"| {frames} | {chunk} | {d['error'][:80]} | | | |")
            else:
                out.append(
                    f"| {frames} | {chunk} | {_ms(d['ms'])} | {_ms(d['ms_per_chunk'])} | {_mib(d['peak_bytes'])} | "
                    f"{_mib(d['frame_bytes'])} |"
                )
    return out


def _bench(result: Any) -> list[str]:
    if not result:
        return []
    out = ["", "## svdpipe bench: actors sharing one GPU against sequential", ""]
    out += ["| mode | samples/h | idle latency s |", "|---|---|---|"]
    for mode, m in result.get("modes", {}).items():
        idle = m.get("idle_latency_s", m.get("idle_latency_s_p50"))
        out.append(f"| {mode} | {_ms(m.get('samples_per_hour'))} | {_ms(idle)} |")
    return out
