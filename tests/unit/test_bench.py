"""The bench's arithmetic and the cost profile, on a fake clock (no Ray, no model)."""

from __future__ import annotations

import argparse
import dataclasses
import json

import pytest

from svdpipe.bench import (
    BenchSettings,
    Sample,
    add_bench_parser,
    cpu_busy_fraction,
    efficiency,
    ideal_samples_per_hour,
    projection,
    request_work_s,
    settings_from_args,
    steady_state_rate,
    steady_state_window,
    summarise,
)
from svdpipe.profile import CostProfile
from svdpipe.state import StageTrace
from svdpipe.timing import hop_timings


def test_ideal_is_n_over_w():
    # 7 actors, 21 steps of 20 ms + 2 ms encode + 90 ms decode: W = 0.512 s, 7 / W = 13.67 samples/s.
    w = request_work_s(21, 0.020, 0.002, 0.090)
    assert w == pytest.approx(0.512)
    assert ideal_samples_per_hour(7, w) == pytest.approx(3600 * 7 / 0.512)
    assert ideal_samples_per_hour(1, 0.42) == pytest.approx(60_000 / 7)
    with pytest.raises(ValueError):
        ideal_samples_per_hour(0, 0.5)
    with pytest.raises(ValueError):
        ideal_samples_per_hour(1, 0.0)


def test_efficiency():
    assert efficiency(58_200, 60_000) == pytest.approx(0.97)
    assert efficiency(1.0, 0.0) == 0.0


def pipeline_completions(workers: int, period: float, total: int, latency: float) -> list[float]:
    """A pipeline: the first request after the fill latency, then one every `period`."""
    return [latency + i * period for i in range(total)]


def test_steady_state_rate_excludes_pipeline_fill():
    # Fill takes 0.5 s, then one completion every 60 ms: the rate is 1/0.06 whatever the fill.
    done = pipeline_completions(7, 0.060, 28, latency=0.5)
    assert steady_state_window(28, 7) == (6, 27)
    assert steady_state_rate(done, 7) == pytest.approx(1 / 0.060)
    # Irregular fill (the first 6 completions before the 7th, at any times) does not change it either.
    done[:6] = [0.1, 0.2, 0.35, 0.6, 0.7, 0.8]
    assert steady_state_rate(done, 7) == pytest.approx(1 / 0.060)
    # Nor does the order the completions are given in.
    assert steady_state_rate(done[::-1], 7) == pytest.approx(1 / 0.060)


def test_steady_state_rate_measures_whole_rounds_for_replicas():
    # 4 replicas, each finishing one request every 0.4 s in lock-step: completions come in bursts of 4.
    done = [0.4 * (1 + i // 4) + 0.001 * (i % 4) for i in range(16)]
    # First-to-last completion would overestimate (15 completions in 1.2 s: 12.5/s); whole rounds give 10/s.
    assert 15 / (done[-1] - done[0]) > 12
    assert steady_state_rate(done, 4) == pytest.approx(10, rel=0.01)
    # 18 completions: the window start moves so that it still spans whole rounds of 4.
    a, b = steady_state_window(18, 4)
    assert (b - a) % 4 == 0 and a >= 3 and b == 17


def test_steady_state_window_needs_two_rounds():
    with pytest.raises(ValueError, match="at least 14"):
        steady_state_window(13, 7)
    assert steady_state_window(2, 1) == (0, 1)


def fake_run(n_stages: int, stage_s: float, hop_s: float, total: int) -> list[Sample]:
    """A closed loop through a perfect pipeline on a fake clock: each stage takes stage_s, each hand-off hop_s.

    Every request is ready at t=0 (requests queue at the first stage), so stage 0 runs back to back.
    """
    free = [0.0] * n_stages  # when each stage finished its previous request
    samples = []
    for r in range(total):
        ready, trace = 0.0, []
        for j in range(n_stages):
            arrive = ready + (hop_s if j else 0.0)
            start = max(arrive, free[j] + (hop_s if j == 0 and r else 0.0))
            trace.append(StageTrace(f"s{j}", start, start + stage_s, free[j], steps=3))
            free[j] = ready = start + stage_s
        samples.append(Sample(r, 0.0, ready, tuple(hop_timings(trace, 0.0)), tuple(trace)))
    return samples


def test_summarise_on_a_fake_pipeline():
    samples = fake_run(n_stages=4, stage_s=0.060, hop_s=0.002, total=16)
    out = summarise(samples, workers=4, model_actors={"s0", "s1", "s2"})
    # stage 0 turns around in 2 ms, so one completion every 62 ms
    assert out["samples_per_hour"] == pytest.approx(3600 / 0.062)
    assert out["measured_requests"] == 12
    assert out["per_hop_ms"] == pytest.approx(2.0)
    assert out["calls_per_request"] == 4
    assert out["actor_step_ms"] == pytest.approx(20.0)
    # every stage works 60 of each 62 ms in steady state; s3 is not a model actor here
    assert set(out["busy_fraction"]) == {"s0", "s1", "s2"} and set(out["mux_busy_fraction"]) == {"s3"}
    for fraction in out["busy_fraction"].values():
        assert fraction == pytest.approx(60 / 62, abs=0.01)
    eff = efficiency(out["samples_per_hour"], ideal_samples_per_hour(4, request_work_s(12, 0.020, 0.0, 0.0)))
    assert eff == pytest.approx(60 / 62)


def test_summarise_with_requests_that_carry_no_hop_timings():
    """A parareal request (alone on the engine) comes back without hop timings; the run still summarises."""
    samples = fake_run(n_stages=4, stage_s=0.060, hop_s=0.002, total=16)
    samples[5] = dataclasses.replace(samples[5], timings=())
    samples[9] = dataclasses.replace(samples[9], timings=())
    out = summarise(samples, workers=4)
    assert out["measured_requests"] == 12 and out["dispatch_ms"] == pytest.approx(2.0)
    assert summarise([dataclasses.replace(s, timings=()) for s in samples], workers=4)["dispatch_ms"] is None


def test_parallel_decode_entries_share_their_input():
    """Two decode calls start from the same state; the mux waits for both (hop_timings on a fake clock)."""
    trace = [
        StageTrace("m0", 0.0, 1.0, 0.0, steps=2),
        StageTrace("m1", 1.1, 2.0, 0.0),  # decode chunk 0: input ready at 1.0
        StageTrace("m2", 1.2, 2.5, 0.0, parallel=True),  # decode chunk 1: input ready at 1.0 too
        StageTrace("mux", 2.6, 2.7, 0.0),  # ready when both chunks are: 2.5
    ]
    hops = [t.hop_ms for t in hop_timings(trace, 0.0)]
    assert hops == pytest.approx([0.0, 100.0, 200.0, 100.0])


def profile(encode_ms: float = 30.0, step_ms: float = 20.0, decode_ms: float = 70.0, steps: int = 21) -> CostProfile:
    return CostProfile(encode_ms / 1000, tuple([step_ms / 1000] * steps), decode_ms / 1000)


def test_profile_json_round_trip(tmp_path):
    p = CostProfile(0.012, (0.020, 0.021), 0.031, {"model": "tiny"})
    path = tmp_path / "profile.json"
    p.save(path)
    data = json.loads(path.read_text())
    assert data["encode_ms"] == pytest.approx(12.0) and data["step_ms"] == pytest.approx([20.0, 21.0])
    assert CostProfile.load(path) == p
    with pytest.raises(ValueError, match="not a cost profile"):
        CostProfile.from_json({"encode_ms": 1})
    with pytest.raises(ValueError):
        CostProfile(0.01, (), 0.01)


def parse(*argv: str) -> BenchSettings:
    parser = argparse.ArgumentParser()
    add_bench_parser(parser.add_subparsers(dest="command"))
    return settings_from_args(parser.parse_args(["bench", *argv]))


def test_cli_flags_build_settings():
    s = parse("--stages", "3", "--steps", "9", "--simulate-step-ms", "20", "--modes", "pipeline,sequential")
    assert (s.stages, s.steps, s.simulate_step_ms, s.modes) == (3, 9, 20.0, ("pipeline", "sequential"))
    assert s.num_requests == 12 and s.concurrency_for("pipeline") == 6 and s.concurrency_for("sequential") == 2
    s = parse("--simulate-decode-ms", "90", "--frames", "3", "--decode-chunk-size", "1", "--mux-actors", "3")
    assert (s.simulate_decode_frame_ms, s.decode_chunk_size, s.mux_actors) == (30.0, 1, 3)
    # engine flags come from the engine config's own fields, bounds included
    assert parse("--dtype", "fp16", "--transport", "gloo").dtype == "fp16"
    with pytest.raises(SystemExit):
        parse("--dtype", "fp64")
    with pytest.raises(SystemExit):
        parse("--modes", "pipeline,warp")


def test_settings_reject_impossible_runs():
    with pytest.raises(ValueError, match="at least 14"):
        BenchSettings(stages=7, requests=10)
    assert BenchSettings(stages=7, requests=10, modes=("sequential",)).num_requests == 10


def test_projection_from_assumed_costs():
    # SVD-XT on an H100 (assumed): 25 steps of 0.76 s, decode 3.4 s, encode 0.1 s; 3 ms per call; 7 GPUs
    rows = projection(0.76, 0.1, 3.4, num_steps=25, num_frames=25, gpus=7, hop_s=0.003)
    whole = 25 * 0.76 + 0.1 + 3.4
    assert rows["sequential"]["samples_per_hour"] == pytest.approx(3600 / (whole + 0.003))
    assert rows["data-parallel"]["samples_per_hour"] == pytest.approx(7 * 3600 / (whole + 0.003))
    assert rows["data-parallel"]["ideal_samples_per_hour"] == pytest.approx(7 * 3600 / whole)
    # the planner spreads encode and decode: the busiest actor carries about W / N plus its calls
    assert whole / 7 < rows["pipeline"]["busiest_s"] < whole / 7 + 0.76 / 7 + 3 * 0.003
    assert rows["pipeline"]["efficiency"] > 0.97
    assert rows["pipeline"]["idle_latency_s"] == pytest.approx(whole + 8 * 0.003)
    with pytest.raises(ValueError):
        projection(0.5, 0.05, 1.5, num_steps=5, num_frames=2, gpus=0, hop_s=0.0)


def test_fewer_steps_than_stages():
    assert BenchSettings(stages=7, steps=5).steps == 5
    # 5 steps over 7 GPUs: each request's steps on 5 of them (6 hops); over a stream the planner rotates them,
    # so the busiest actor carries about W / 7, never a whole request
    rows = projection(0.5, 0.05, 1.5, num_steps=5, num_frames=2, gpus=7, hop_s=0.003)
    whole = 5 * 0.5 + 0.05 + 1.5
    assert rows["pipeline"]["idle_latency_s"] == pytest.approx(whole + 6 * 0.003)
    assert whole / 7 < rows["pipeline"]["busiest_s"] < whole / 7 + 0.5 / 7 + 3 * 0.003


def test_cpu_busy_fraction_from_jiffies():
    assert cpu_busy_fraction((100.0, 400.0), (250.0, 600.0)) == pytest.approx(0.75)
    assert cpu_busy_fraction(None, (1.0, 2.0)) is None
    assert cpu_busy_fraction((1.0, 2.0), (1.0, 2.0)) is None


def test_the_report_flags_a_run_that_was_one_burst():
    from svdpipe.bench.report import format_table

    def mode(name: str, requests: int, concurrency: int) -> dict:
        return {
            "mode": name,
            "actors": 7,
            "mux_actors": 2,
            "requests": requests,
            "concurrency": concurrency,
            "samples_per_hour": 7000.0,
            "ideal_samples_per_hour": 6000.0,
            "efficiency": 7000 / 6000,
            "latency_p50_s": 1.0,
            "latency_p95_s": 1.2,
            "per_hop_ms": 1.0,
            "busy_fraction": {"m0": 0.5},
            "idle_latency_s": 0.4,
            "idle_latency_ratio": 0.9,
        }

    simulated = {"simulate_step_ms": 20.0, "simulate_encode_ms": None, "simulate_decode_ms": None}
    settings = {"model": "tiny", "stages": 7, "steps": 21, "frames": 2, "width": 32, "height": 32, **simulated}
    result = {
        "settings": {**settings, "decode_chunk_size": None},
        "profile": {"source": "measured", "encode_ms": 17.0, "step_ms": [20.0], "decode_ms": 12.0},
        "num_requests": 14,
        "machine": {"cpus": 2, "gpu": None},
        "modes": {"pipeline": mode("pipeline", 14, 14), "data-parallel": mode("data-parallel", 28, 14)},
    }
    text = format_table(result)
    assert "note: pipeline: M <= C" in text and "data-parallel: M" not in text
    result["modes"]["pipeline"] = mode("pipeline", 28, 14)
    assert "note:" not in format_table(result)
