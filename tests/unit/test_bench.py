"""The bench's arithmetic and the cost profile, on a fake clock (no Ray, no model)."""

from __future__ import annotations

import argparse
import json

import pytest

from svdpipe.bench import (
    BenchSettings,
    Sample,
    add_bench_parser,
    bound_samples_per_hour,
    cpu_busy_fraction,
    efficiency,
    ideal_samples_per_hour,
    least_loaded,
    projection,
    settings_from_args,
    steady_state_rate,
    steady_state_window,
    summarise,
)
from svdpipe.partition import partition_steps
from svdpipe.profile import CostProfile, stage_loads, step_weights
from svdpipe.state import StageTrace
from svdpipe.timing import hop_timings


def test_ideal_is_n_over_t_times_step():
    # 7 stages, 21 steps of 20 ms: 7 / 0.42 s = 16.67 samples/s.
    assert ideal_samples_per_hour(7, 21, 0.020) == pytest.approx(60_000)
    assert ideal_samples_per_hour(1, 21, 0.020) == pytest.approx(60_000 / 7)
    with pytest.raises(ValueError):
        ideal_samples_per_hour(0, 21, 0.02)
    with pytest.raises(ValueError):
        ideal_samples_per_hour(1, 21, 0.0)


def test_efficiency_and_bound():
    assert efficiency(58_200, 60_000) == pytest.approx(0.97)
    assert efficiency(1.0, 0.0) == 0.0
    # the busiest actor (70 ms) limits the chain; two replicas double it
    assert bound_samples_per_hour([0.010, 0.070, 0.060]) == pytest.approx(3600 / 0.07)
    assert bound_samples_per_hour([0.4], replicas=2) == pytest.approx(18_000)


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


def test_least_loaded_prefers_fewest_then_lowest_index():
    assert least_loaded([2, 1, 1, 3]) == 1
    assert least_loaded([0, 0]) == 0
    with pytest.raises(ValueError):
        least_loaded([])


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
        samples.append(Sample(r, 0, 0.0, ready, tuple(hop_timings(trace, 0.0)), tuple(trace)))
    return samples


def test_summarise_on_a_fake_pipeline():
    samples = fake_run(n_stages=4, stage_s=0.060, hop_s=0.002, total=16)
    out = summarise(samples, workers=4)
    # stage 0 turns around in 2 ms, so one completion every 62 ms
    assert out["samples_per_hour"] == pytest.approx(3600 / 0.062)
    assert out["measured_requests"] == 12
    assert out["per_hop_ms"] == pytest.approx(2.0)
    assert out["hops_per_request"] == 3
    assert out["stage_step_ms"] == pytest.approx(20.0)
    # every stage works 60 of each 62 ms in steady state
    for fraction in out["busy_fraction"].values():
        assert fraction == pytest.approx(60 / 62, abs=0.01)
    eff = efficiency(out["samples_per_hour"], ideal_samples_per_hour(4, 12, 0.020))
    assert eff == pytest.approx(60 / 62)


def profile(encode_ms: float = 30.0, step_ms: float = 20.0, decode_ms: float = 70.0, steps: int = 21) -> CostProfile:
    return CostProfile(encode_ms / 1000, tuple([step_ms / 1000] * steps), decode_ms / 1000)


def test_step_weights_put_codec_costs_on_the_end_steps():
    p = profile()
    w = step_weights(p, 21, colocate_codec=True)
    assert w[0] == pytest.approx(0.050) and w[-1] == pytest.approx(0.090)
    assert all(x == pytest.approx(0.020) for x in w[1:-1])
    # without colocation the encoder and decoder are separate actors: equal weights, the count split
    w = step_weights(p, 21, colocate_codec=False)
    assert len(set(w)) == 1
    assert partition_steps(21, 7, w) == partition_steps(21, 7)


def test_step_weights_use_the_median_step_so_noise_cannot_move_a_cut():
    noisy = CostProfile(0.0, (0.020, 0.0215, 0.019, 0.0205, 0.020, 0.0199), 0.0)
    assert set(step_weights(noisy, 6, colocate_codec=False)) == {0.020}


def test_balanced_split_relieves_the_decoding_stage():
    p = profile(encode_ms=30, step_ms=20, decode_ms=70)
    weights = step_weights(p, 21, colocate_codec=True)
    by_count = stage_loads(p, 21, 7, True, None)
    by_cost = stage_loads(p, 21, 7, True, weights)
    # by count the last stage decodes on top of 3 steps (130 ms); by cost it gets fewer steps
    assert max(by_count) == pytest.approx(0.130)
    assert max(by_cost) < max(by_count)
    ranges = partition_steps(21, 7, weights)
    assert len(ranges[-1]) < 3 and sum(len(r) for r in ranges) == 21
    assert bound_samples_per_hour(by_cost) > bound_samples_per_hour(by_count)
    # not colocated: encoder and decoder are actors of their own in the chain
    assert stage_loads(p, 21, 7, False, None) == pytest.approx([0.03] + [0.06] * 7 + [0.07])


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
    assert parse("--colocate-codec", "--no-balance").colocate_codec is True
    with pytest.raises(SystemExit):
        parse("--modes", "pipeline,warp")


def test_settings_reject_impossible_runs():
    with pytest.raises(ValueError, match="at least --stages"):
        BenchSettings(stages=7, steps=5)
    with pytest.raises(ValueError, match="at least 14"):
        BenchSettings(stages=7, requests=10)
    assert BenchSettings(stages=7, requests=10, modes=("sequential",)).num_requests == 10


def test_projection_from_assumed_costs():
    # 25 steps of 0.5 s, encode 0.05 s, decode 1.5 s, 4 ms per hop, 7 GPUs
    rows = projection(CostProfile(0.05, (0.5,) * 25, 1.5), num_steps=25, gpus=7, hop_s=0.004)
    whole = 0.05 + 12.5 + 1.5
    assert rows["sequential"]["samples_per_hour"] == pytest.approx(3600 / (whole + 0.004))
    assert rows["data-parallel"]["samples_per_hour"] == pytest.approx(7 * 3600 / (whole + 0.004))
    # by count the last stage decodes after 3 steps (3.0 s); by cost it keeps 1 step (2.0 s) and the
    # first stage, 4 steps plus encode, is the busiest (2.05 s)
    assert rows["pipeline, count split"]["bottleneck_s"] == pytest.approx(3.0)
    assert rows["pipeline, cost-balanced"]["bottleneck_s"] == pytest.approx(2.05)
    assert rows["pipeline, cost-balanced"]["idle_latency_s"] == pytest.approx(whole + 8 * 0.004)
    assert rows["data-parallel"]["ideal_samples_per_hour"] == pytest.approx(7 * 3600 / 12.5)
    # 5 denoise stages (25 steps: 5 each, 2.5 s) and the decoder (1.5 s) on GPUs of their own
    assert rows["pipeline, codec apart"]["bottleneck_s"] == pytest.approx(2.5)
    with pytest.raises(ValueError):
        projection(CostProfile(0.05, (0.5,) * 5, 1.5), num_steps=5, gpus=7, hop_s=0.0)


def test_cpu_busy_fraction_from_jiffies():
    assert cpu_busy_fraction((100.0, 400.0), (250.0, 600.0)) == pytest.approx(0.75)
    assert cpu_busy_fraction(None, (1.0, 2.0)) is None
    assert cpu_busy_fraction((1.0, 2.0), (1.0, 2.0)) is None
