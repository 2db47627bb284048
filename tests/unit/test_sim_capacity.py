"""The capacity search on a case whose answer is known, and the simulate/capacity CLIs (--help lists every
flag with its help; a small run of each)."""

from __future__ import annotations

import argparse
import json

import pytest

from svdpipe.cli import build_parser, main
from svdpipe.planner import RequestShape
from svdpipe.sim.capacity import Slo, Traffic, capacity_rate, evaluate, search
from svdpipe.sim.cli import parse_seconds
from svdpipe.sim.costs import SimCosts
from svdpipe.sim.service import Layout
from svdpipe.sim.workload import TraceRow

# One request is W = 10 s of work on one actor (10 steps of 1 s, nothing else); one arrives every 4 s.
W_COSTS = SimCosts(encode_s=0.0, step_s=1.0, decode_frame_s=0.0, mux_s=0.0, hop_s=0.0)
SHAPE = RequestShape(10, 1, 1)
PERIODIC = Traffic(SHAPE, 0.25, 400.0, trace=tuple(TraceRow(4.0 * i) for i in range(100)))


def test_capacity_of_data_parallel_is_the_smallest_n_above_the_rate():
    # N / W > r: 2 actors carry 0.2/s (< 0.25: the queue grows), 3 carry 0.3/s; with 3 every arrival finds an
    # idle actor, so every latency is exactly W
    answer = search(
        W_COSTS,
        PERIODIC,
        Slo(p95_s=11.0),
        max_gpus=4,
        parallelisms=("data-parallel",),
        latency_modes=("off",),
        curve=False,
    )
    assert answer.cheapest is not None and answer.cheapest.layout.gpus == 3
    assert answer.cheapest.p95_s == pytest.approx(10.0)
    two = [p for p in answer.points if p.layout.gpus == 2]
    assert two and not any(p.meets for p in two) and min(p.p95_s for p in two) > 11.0
    assert [c.gpus for c in answer.curve] == [1, 2, 3, 4]


def test_capacity_rate_bisects_to_n_over_w():
    traffic = Traffic(SHAPE, 0.25, 400.0, trace=PERIODIC.trace)
    rate = capacity_rate(Layout(3, parallelism="data-parallel"), W_COSTS, traffic, Slo(p95_s=11.0))
    # periodic arrivals: every rate up to N / W keeps latency at W (a little above it, 100 arrivals barely queue)
    assert 0.28 < rate < 0.31
    assert not evaluate(Layout(2, parallelism="data-parallel"), W_COSTS, traffic, 0.25, Slo(p95_s=11.0)).meets


def test_parse_seconds():
    assert [parse_seconds(t) for t in ("90s", "90", "1.5m", "1h", "250ms")] == [90, 90, 90, 3600, 0.25]
    with pytest.raises(argparse.ArgumentTypeError):
        parse_seconds("soon")


@pytest.mark.parametrize("command", ["simulate", "capacity"])
def test_help_lists_every_flag(command, capsys):
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    parser = sub.choices[command]
    text = parser.format_help()
    flags = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert len(flags) > 15
    for action in flags:
        assert action.help, f"{action.option_strings} has no help"
        assert any(o in text for o in action.option_strings)
    with pytest.raises(SystemExit):
        main([command, "--help"])
    assert "--profile-name" in capsys.readouterr().out


def test_simulate_takes_a_bench_command_line(capsys):
    code = main(
        [
            "simulate",
            "--stages",
            "3",
            "--steps",
            "6",
            "--simulate-step-ms",
            "200",
            "--modes",
            "pipeline,data-parallel",
            "--arrival-rate-frac",
            "0.5",
            "--requests",
            "12",
            "--json",
        ]
    )
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    for mode in ("pipeline", "data-parallel"):
        closed, opened = out["modes"][mode]["closed_loop"], out["modes"][mode]["open_loop"]
        for key in ("samples_per_hour", "latency_p50_s", "latency_p95_s", "queue_wait_p95_s", "busy_fraction"):
            assert key in closed and key in opened
        assert out["modes"][mode]["idle_latency_s"] == pytest.approx(
            6 * 0.2 + 0.05 + 0.003 * (1 if mode != "pipeline" else 3), abs=0.01
        )


def test_capacity_command(capsys, tmp_path):
    code = main(
        [
            "capacity",
            "--simulate-step-ms",
            "1000",
            "--steps",
            "10",
            "--frames",
            "1",
            "--hop-ms",
            "0",
            "--mux-ms",
            "0",
            "--trace",
            str(_trace(tmp_path)),
            "--p95",
            "11s",
            "--max-gpus",
            "3",
            "--parallelism",
            "data-parallel",
            "--latency-modes",
            "off",
            "--plot",
            str(tmp_path / "c.png"),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "cheapest: 3 GPU(s)" in out
    assert (tmp_path / "c.png").exists() or (tmp_path / "c.csv").exists()


def _trace(tmp_path):
    path = tmp_path / "trace.txt"
    path.write_text("\n".join(str(4.0 * i) for i in range(100)) + "\n")
    return path


def test_simulate_runs_a_trace_with_its_shapes(capsys, tmp_path):
    path = tmp_path / "trace.csv"
    path.write_text("seconds,steps,frames\n0,4,1\n100,8,2\n")
    code = main(["simulate", "--simulate-step-ms", "1000", "--stages", "1", "--modes", "pipeline", "--hop-ms", "0",
                 "--mux-ms", "0", "--trace", str(path), "--idle-requests", "0", "--json"])  # fmt: skip
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    opened = out["modes"]["pipeline"]["open_loop"]
    assert opened["requests"] == 2 and opened["latency_p50_s"] == pytest.approx(6.0)  # 4 s and 8 s
    assert out["arrival_rate_per_s"] == pytest.approx(0.02)


def test_the_profile_name_flag_names_every_table():
    from typing import get_args

    from svdpipe.sim.costs import ASSUMPTIONS
    from svdpipe.sim.settings import ProfileName

    assert set(get_args(ProfileName)) == set(ASSUMPTIONS)
    assert all("ASSUMED" in a.note for a in ASSUMPTIONS.values())
