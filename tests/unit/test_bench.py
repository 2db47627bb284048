"""The bench's arithmetic and the cost profile, on a fake clock (no Ray, no model)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import json
import statistics
from types import SimpleNamespace

import pytest

from svdpipe.bench import (
    BenchSettings,
    Sample,
    add_bench_parser,
    arrival_rate_from_fraction,
    cpu_busy_fraction,
    efficiency,
    ideal_samples_per_hour,
    percentiles,
    poisson_arrivals,
    projection,
    request_work_s,
    settings_from_args,
    steady_state_rate,
    steady_state_window,
    summarise,
    summarise_open,
)
from svdpipe.bench.workload import open_loop
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
        samples.append(Sample(r, 0.0, ready, 0.0, tuple(hop_timings(trace, 0.0)), tuple(trace)))
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


WAITS = {f"{name}_p{q}_s": 1.0 + q / 100 for name in ("latency", "queue_wait") for q in (50, 95, 99)}


def report_mode(name: str, requests: int, concurrency: int, open_loop: bool = False) -> dict:
    loop = {"samples_per_hour": 7000.0, "efficiency": 7000 / 6000, "busy_fraction": {"m0": 0.5}, **WAITS}
    out = {
        "mode": name,
        "latency_mode": "off",
        "actors": 7,
        "mux_actors": 2,
        "ideal_samples_per_hour": 6000.0,
        "closed_loop": {**loop, "requests": requests, "concurrency": concurrency, "per_hop_ms": 1.0},
        "idle_latency_s": 0.4,
        "idle_latency_ratio": 0.9,
    }
    if open_loop:
        out["open_loop"] = {**loop, "requests": 20, "offered_per_hour": 3000.0, "busy_fraction": {}}
    return out


def report_result(modes: dict) -> dict:
    simulated = {"simulate_step_ms": 20.0, "simulate_encode_ms": None, "simulate_decode_ms": None}
    settings = {"model": "tiny", "stages": 7, "steps": 21, "frames": 2, "width": 32, "height": 32, **simulated}
    return {
        "settings": {**settings, "decode_chunk_size": None, "arrival_rate_frac": 0.5, "seed": 3},
        "profile": {"source": "measured", "encode_ms": 17.0, "step_ms": [20.0], "decode_ms": 12.0},
        "num_requests": 14,
        "machine": {"cpus": 2, "gpu": None},
        "arrival_rate_per_s": 0.84,
        "modes": modes,
    }


def test_the_report_flags_a_run_that_was_one_burst():
    from svdpipe.bench.report import format_table

    result = report_result(
        {"pipeline": report_mode("pipeline", 14, 14), "data-parallel": report_mode("data-parallel", 28, 14)}
    )
    text = format_table(result)
    assert "note: pipeline: M <= C" in text and "data-parallel: M" not in text
    assert "open loop" not in text
    result["modes"]["pipeline"] = report_mode("pipeline", 28, 14)
    assert "note:" not in format_table(result)


def test_the_report_has_a_table_per_loop_kind():
    from svdpipe.bench.report import format_table

    result = report_result({"pipeline": report_mode("pipeline", 28, 14, open_loop=True)})
    lines = format_table(result).splitlines()
    closed = lines.index(next(line for line in lines if line.startswith("closed loop")))
    opened = lines.index(next(line for line in lines if line.startswith("open loop")))
    assert "0.84/s = 0.5 x N / W (seed 3)" in lines[opened]
    # latency p50/p95/p99 then queue wait p50/p95/p99, in both tables; an open loop with no busy figures says so
    for row in (lines[closed + 2], lines[opened + 2]):
        assert row.startswith("pipeline") and "1.500   1.950   1.990   1.500   1.950   1.990" in row
    assert lines[opened + 2].endswith("-")


def test_plots_read_result_files_from_before_the_open_loop():
    from svdpipe.bench.report import closed_loop_of

    new = report_mode("pipeline", 28, 14)
    assert closed_loop_of(new) is new["closed_loop"]
    old = {"mode": "pipeline", "samples_per_hour": 7000.0, "efficiency": 0.9}
    assert closed_loop_of(old) is old
    assert closed_loop_of({"mode": "pipeline", "open_loop": {}}) is None


def test_percentiles():
    values = [float(v) for v in range(1, 102)]  # 1 .. 101
    assert percentiles(values, "latency") == {"latency_p50_s": 51.0, "latency_p95_s": 96.0, "latency_p99_s": 100.0}
    assert percentiles(reversed(values), "x")["x_p99_s"] == 100.0
    assert percentiles([], "queue_wait") == {
        "queue_wait_p50_s": None,
        "queue_wait_p95_s": None,
        "queue_wait_p99_s": None,
    }


def test_poisson_arrivals_are_reproducible_by_seed():
    a = poisson_arrivals(2.0, seed=7, max_requests=50)
    assert a == poisson_arrivals(2.0, seed=7, max_requests=50)
    assert a != poisson_arrivals(2.0, seed=8, max_requests=50)
    assert len(a) == 50 and all(0 < x < y for x, y in itertools.pairwise(a))
    # a shorter run is the same schedule cut short; a duration keeps the arrivals before it
    assert poisson_arrivals(2.0, seed=7, max_requests=10) == a[:10]
    within = poisson_arrivals(2.0, seed=7, max_requests=50, duration_s=a[20])
    assert within == a[:20]
    # exponential gaps of mean 1 / rate (a fixed seed: this is arithmetic, not chance)
    many = poisson_arrivals(4.0, seed=1, max_requests=20_000)
    assert many[-1] / len(many) == pytest.approx(0.25, rel=0.03)
    for bad in ({"rate_per_s": 0.0, "max_requests": 5}, {"rate_per_s": 1.0, "max_requests": 0}):
        with pytest.raises(ValueError):
            poisson_arrivals(seed=0, **bad)


def test_arrival_rate_from_the_ideal():
    # 7 actors, 25 steps of 250 ms + 0.05 s encode + 0.2 s decode: W = 6.5 s, N / W = 7 / 6.5 per second
    w = request_work_s(25, 0.250, 0.05, 0.2)
    assert arrival_rate_from_fraction(0.5, 7, w) == pytest.approx(0.5 * 7 / 6.5)
    assert arrival_rate_from_fraction(1.0, 1, 2.0) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        arrival_rate_from_fraction(0.0, 7, w)


def trace(stage: str, start: float, end: float) -> tuple[StageTrace, ...]:
    return (StageTrace(stage, start, end, 0.0, steps=1),)


def test_summarise_open_counts_from_arrival():
    # Two actors, requests arriving every second from t=0 while each takes 1.5 s, one actor at a time: the
    # engine admits them on arrival but the work queues, so latency grows while queue wait stays 0 (the
    # admission) and the start wait (arrival to first work) shows the queue.
    samples = [
        Sample(0, 0.0, 1.5, 0.0, (), trace("m0", 0.0, 1.5)),
        Sample(1, 1.0, 3.0, 1.0, (), trace("m1", 1.5, 3.0)),
        Sample(2, 2.0, 4.5, 2.5, (), trace("m0", 3.0, 4.5)),  # admitted late: waited 0.5 s for a slot
        Sample(3, 3.0, 6.0, 3.0, (), trace("m1", 4.5, 6.0)),
    ]
    out = summarise_open(samples, rate_per_s=1.0, model_actors={"m0", "m1"})
    assert out["requests"] == 4 and out["window_s"] == 6.0
    assert out["samples_per_hour"] == pytest.approx(3600 * 4 / 6.0)
    assert out["offered_per_hour"] == 3600.0
    assert out["latency_p50_s"] == pytest.approx(2.25) and out["latency_p99_s"] == pytest.approx(2.985)
    assert out["queue_wait_p50_s"] == 0.0 and out["queue_wait_p99_s"] == pytest.approx(0.485)
    assert out["start_wait_p50_s"] == pytest.approx(0.75) and out["start_wait_p99_s"] == pytest.approx(1.485)
    # busy over the whole run (0 .. 6 s): each actor worked 3 s of it
    assert out["busy_fraction"] == {"m0": 0.5, "m1": 0.5} and out["mux_busy_fraction"] == {}
    with pytest.raises(ValueError):
        summarise_open([], rate_per_s=1.0)


def test_summarise_closed_reports_p99_and_queue_wait():
    samples = fake_run(n_stages=4, stage_s=0.060, hop_s=0.002, total=16)
    samples = [dataclasses.replace(s, admitted=0.01 * s.index) for s in samples]
    out = summarise(samples, workers=4)
    measured = sorted(0.01 * s.index for s in samples)[4:]  # the window is completions 4..15, sent in order
    assert out["queue_wait_p50_s"] == pytest.approx(statistics.median(measured))
    assert out["latency_p50_s"] <= out["latency_p95_s"] <= out["latency_p99_s"]


def test_the_open_loop_sends_on_schedule_without_waiting_for_completions():
    # Every request holds its dispatch until all have been sent: a loop that waited for completions would hang.
    arrivals = [0.0, 0.001, 0.002, 0.004]
    started: list[int] = []
    all_sent = asyncio.Event()

    async def dispatch(index: int) -> SimpleNamespace:
        started.append(index)
        if len(started) == len(arrivals):
            all_sent.set()
        await all_sent.wait()
        return SimpleNamespace(latency_s=0.0, timings=[], video=SimpleNamespace(trace=()))

    samples = asyncio.run(asyncio.wait_for(open_loop(dispatch, arrivals), timeout=30))
    assert sorted(s.index for s in samples) == [0, 1, 2, 3]
    # each is counted from its scheduled arrival time, not from when the loop got round to sending it
    by_index = {s.index: s for s in samples}
    sent = [by_index[i].sent - by_index[0].sent for i in range(4)]
    assert sent == pytest.approx(arrivals, abs=1e-6)  # time.time() floats: microseconds; sending takes longer


def test_open_loop_settings():
    default = BenchSettings(stages=3, steps=2)
    assert default.loop_kinds == ("closed",) and default.latency_mode_for("pipeline") == "off"
    s = BenchSettings(stages=3, arrival_rate_frac=0.5, latency_mode="auto", mode_latency={"data-parallel": "off"})
    assert s.loop_kinds == ("closed", "open")
    assert s.latency_mode_for("pipeline") == "auto" and s.latency_mode_for("data-parallel") == "off"
    assert s.open_requests == 12  # 4N, as the closed loop
    only_open = BenchSettings(stages=7, arrival_rate=2.0, loops=("open",), duration_s=60, requests=3)
    assert only_open.open_requests == 3  # --requests bounds the open loop, which needs no two rounds
    assert BenchSettings(arrival_rate=2.0, duration_s=60).open_requests == 100_000  # the duration stops it
    bad = [
        ({"arrival_rate": 1.0, "arrival_rate_frac": 0.5}, "not both"),
        ({"loops": ("open",)}, "needs --arrival-rate"),
        ({"arrival_rate": 1.0, "loops": ("closed",)}, "add open to --loops"),
        ({"duration_s": 5.0}, "give an arrival rate"),
        ({"modes": ("pipeline",), "mode_latency": {"sequential": "off"}}, "which --modes does not run"),
        ({"arrival_rate": 1.0, "loops": ("open", "open")}, "a loop twice"),
    ]
    for kwargs, message in bad:
        with pytest.raises(ValueError, match=message):
            BenchSettings(**kwargs)


def test_open_loop_flags():
    parser = argparse.ArgumentParser()
    add_bench_parser(parser.add_subparsers(dest="command"))
    argv = ["bench", "--modes", "pipeline,data-parallel", "--stages", "7", "--steps", "25"]
    argv += ["--arrival-rate-frac", "0.5", "--latency-mode", "auto", "--mode-latency", "data-parallel=off"]
    argv += ["--loops", "open", "--seed", "3", "--duration-s", "120"]
    s = settings_from_args(parser.parse_args(argv))
    assert (s.arrival_rate_frac, s.seed, s.duration_s, s.loops) == (0.5, 3, 120.0, ("open",))
    assert s.latency_mode_for("pipeline") == "auto" and s.latency_mode_for("data-parallel") == "off"
    for flag, value in (("--mode-latency", "data-parallel"), ("--mode-latency", "replica=off"), ("--loops", "half")):
        with pytest.raises(SystemExit):
            parser.parse_args(["bench", flag, value])


def test_long_video_flags_and_idle_only_runs():
    parser = argparse.ArgumentParser()
    add_bench_parser(parser.add_subparsers(dest="command"))
    argv = ["bench", "--modes", "pipeline", "--clips", "10", "--frames", "8", "--loops", "none"]
    s = settings_from_args(parser.parse_args(argv))
    assert (s.clips, s.loop_kinds) == (10, ())
    with pytest.raises(ValueError):
        BenchSettings(clips=0)


def test_clips_per_hour_counts_finished_clips_while_every_client_is_busy():
    from svdpipe.bench.metrics import Sample, clips_per_hour
    from svdpipe.state import StageTrace

    def sample(sent: float, mux_ends: list[float]) -> Sample:
        trace = (*(StageTrace("mux-0", t - 0.1, t, 0.0) for t in mux_ends), StageTrace("model-0", 0, 1, 0))
        return Sample(0, sent, mux_ends[-1], sent, (), trace)

    # two clients, 3-clip videos: a clip ends every second from t=1; the last request is sent at t=7
    samples = [sample(0.0, [1, 3, 5]), sample(0.0, [2, 4, 6]), sample(5.0, [7, 9, 11]), sample(7.0, [8, 10, 12])]
    # window: from the 2nd clip's end (t=2) to the last send (t=7): clips ending at 3, 4, 5, 6, 7 -> 5 in 5 s
    assert clips_per_hour(samples, {"model-0"}, concurrency=2) == 3600.0
    assert clips_per_hour(samples[:1], {"model-0"}, concurrency=3) is None
