"""The simulator's event loop on cases computed by hand (deterministic costs, no hop): one actor, closed loops of
1 and 2, a 2-actor pipeline, a CFG split, clips, replicas sharing a queue, a slot limit."""

from __future__ import annotations

import pytest

from svdpipe.planner import RequestShape
from svdpipe.sim.clock import EventLoop
from svdpipe.sim.costs import SimCosts
from svdpipe.sim.service import Layout
from svdpipe.sim.workload import closed_loop, open_loop, read_trace

# encode 0.5, a guided step 1.0, decode 0.5 per frame, mux 0.25, no hop
COSTS = SimCosts(encode_s=0.5, step_s=1.0, decode_frame_s=0.5, mux_s=0.25, hop_s=0.0)
SHAPE = RequestShape(num_steps=2, num_frames=1, decode_chunk_size=1)


def _latencies(done):
    return [round(f.done - f.job.arrival, 9) for f in sorted(done, key=lambda f: f.job.index)]


def test_event_loop_runs_in_time_order_ties_in_scheduling_order():
    loop, seen = EventLoop(), []
    loop.at(2.0, seen.append, "b")
    loop.at(1.0, seen.append, "a")
    loop.at(2.0, seen.append, "c")
    loop.run()
    assert seen == ["a", "b", "c"] and loop.now == 2.0 and loop.events == 3


def test_one_actor_closed_loop_of_one():
    # one call (encode + 2 steps + decode, merged) of 3.0 s, then the mux's 0.25 s; one request at a time
    done = closed_loop(Layout(1), COSTS, lambda _i: SHAPE, total=3, concurrency=1)
    assert _latencies(done) == [3.25, 3.25, 3.25]
    assert [f.done for f in sorted(done, key=lambda f: f.job.index)] == [3.25, 6.5, 9.75]


def test_one_actor_closed_loop_of_two():
    # both admitted at 0; the actor runs the first (same priority, earlier arrival), then the second
    done = closed_loop(Layout(1), COSTS, lambda _i: SHAPE, total=2, concurrency=2)
    assert _latencies(done) == [3.25, 6.25]
    assert [f.admitted for f in done] == [0.0, 0.0]


def test_two_actor_pipeline():
    # the plan: actor 0 encode + step 0 (1.5 s), actor 1 step 1 + decode (1.5 s); mux 0.25. Both requests are
    # admitted at 0; the first's first call takes actor 0, and the second's, planned on busy actor 0, goes to free
    # actor 1 (late binding); each request's second call then runs where its state is. Nothing waits
    done = closed_loop(Layout(2), COSTS, lambda _i: SHAPE, total=2, concurrency=2)
    assert _latencies(done) == [3.25, 3.25]
    first, second = sorted(done, key=lambda f: f.job.index)
    assert [(t.stage, t.started, t.finished) for t in first.trace] == [
        ("sim-model-0", 0.0, 1.5),
        ("sim-model-0", 1.5, 3.0),
        ("sim-mux-0", 3.0, 3.25),
    ]
    assert [t.stage for t in second.trace][:2] == ["sim-model-1", "sim-model-1"]
    assert [t.queue_ms for t in second.timings] == [0.0, 0.0]


def test_two_actor_pipeline_serves_older_requests_first():
    # three requests on two actors, all admitted at 0: older requests' calls go first, so the third waits until
    # both others are done (3.0) and then runs on one actor
    done = closed_loop(Layout(2), COSTS, lambda _i: SHAPE, total=3, concurrency=3)
    assert _latencies(done) == [3.25, 3.25, 6.25]
    third = sorted(done, key=lambda f: f.job.index)[2]
    assert [t.queue_ms for t in third.timings] == [3000.0] + [0.0] * (len(third.timings) - 1)


def test_cfg_split_on_idle_actors_halves_the_steps():
    # cfg-split: each stage's helper is the other actor, idle, so each step costs half a guided step
    done = closed_loop(Layout(2, latency_mode="cfg-split"), COSTS, lambda _i: SHAPE, total=1, concurrency=1)
    assert done[0].split
    assert _latencies(done) == [0.5 + 0.5 + 0.5 + 0.5 + 0.25]


def test_cfg_split_helper_busy_declines():
    # two requests at once: while actor 1 runs the first request's call, the second's split step on actor 0
    # finds its helper busy and computes the whole step
    costs = SimCosts(encode_s=0.0, step_s=1.0, decode_frame_s=0.0, mux_s=0.0, hop_s=0.0)
    shape = RequestShape(2, 1, 1)
    done = closed_loop(Layout(2, latency_mode="cfg-split"), costs, lambda _i: shape, total=2, concurrency=2)
    # 0..0.5: the first's step 0 on actor 0, helped by idle actor 1. At 0.5 actor 1 takes the first's step 1 and
    # actor 0 the second's step 0: each one's helper is busy, so both steps are whole (0.5..1.5). At 1.5 the
    # second's step 1 on actor 1 finds actor 0 idle: helped, 1.5..2.0
    assert _latencies(done) == [1.5, 2.0]
    assert all(f.split for f in done)


def test_clips_follow_the_last_frame():
    # clip 1 is admitted when clip 0's last frame is decoded (3.0); its mux ends at 6.25
    done = closed_loop(Layout(1), COSTS, lambda _i: SHAPE, total=1, concurrency=1, clips=2)
    assert _latencies(done) == [6.25]
    assert [p.request_id for p in done[0].plans] == ["0.clip0", "0.clip1"]


def test_replicas_share_one_queue_and_slots_limit_admission():
    done = closed_loop(Layout(1, replicas=2), COSTS, lambda _i: SHAPE, total=2, concurrency=2)
    assert _latencies(done) == [3.25, 3.25] and {f.replica for f in done} == {0, 1}
    done = closed_loop(Layout(1, max_inflight=1), COSTS, lambda _i: SHAPE, total=2, concurrency=2)
    assert _latencies(done) == [3.25, 6.5]
    assert sorted(f.admitted for f in done) == [0.0, 3.25]


def test_open_loop_and_trace(tmp_path):
    trace = tmp_path / "trace.csv"
    trace.write_text("seconds,steps,frames\n0.0\n10.0, 4\n# a comment\n20.0 2 1\n")
    rows = read_trace(trace)
    assert [(r.arrival, r.steps, r.frames) for r in rows] == [(0.0, None, None), (10.0, 4, None), (20.0, 2, 1)]
    done, _ = open_loop(Layout(1), COSTS, lambda i: RequestShape(rows[i].steps or 2, 1, 1), [r.arrival for r in rows])
    assert _latencies(done) == [3.25, 5.25, 3.25]
    with pytest.raises(ValueError, match="expected seconds"):
        (tmp_path / "bad").write_text("0\nsoon\n")
        read_trace(tmp_path / "bad")


def test_spread_is_seeded_and_keeps_the_mean():
    costs = SimCosts(encode_s=0.5, step_s=1.0, decode_frame_s=0.5, mux_s=0.25, hop_s=0.0, cv=0.3)
    runs = [closed_loop(Layout(1), costs, lambda _i: SHAPE, total=200, concurrency=1, seed=4) for _ in range(2)]
    assert _latencies(runs[0]) == _latencies(runs[1])
    mean = sum(_latencies(runs[0])) / 200
    assert 2.9 < mean < 3.6 and len(set(_latencies(runs[0]))) > 100
