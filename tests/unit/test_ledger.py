"""The planner's ledger and admission on a fake clock: work leaves an actor when its call ends, not when the
request does; latency decisions come from the ledger; everything the executor runs is in the plan."""

from __future__ import annotations

import pytest

from svdpipe.ledger import CallEvent, Ledger
from svdpipe.planner import (
    CostModel,
    Planner,
    RequestShape,
    call_work,
    choose_costs,
    mux_call_index,
    plan_calls,
)

COSTS = CostModel(encode_s=0.5, step_s=1.0, decode_frame_s=0.25)
SHAPE = RequestShape(6, 4, 4)  # 6 steps, one decode chunk of 4 frames (1 s)


def ended(request_id: str, call: int, at: float, duration: float = 0.0) -> CallEvent:
    return CallEvent(request_id, call, "ended", at, duration)


def started(request_id: str, call: int, at: float) -> CallEvent:
    return CallEvent(request_id, call, "started", at)


def test_backlog_is_each_actors_expected_finish_time_from_now():
    ledger = Ledger(2, 1)
    ledger.add("r", [(0, {0: 2.0}), (1, {1: 3.0})], 2, 0, now=0.0)
    assert ledger.backlog(0.0) == [2.0, 3.0]
    assert ledger.backlog(0.5) == [1.5, 2.5]
    ledger.add("s", [(0, {0: 1.0})], 1, 0, now=1.0)  # queued behind r's call on actor 0
    assert ledger.backlog(1.0) == [2.0, 2.0]
    ledger.record(started("r", 0, 0.0))
    ledger.record(ended("r", 0, 2.5, duration=2.5))  # half a second longer than expected: s starts later too
    assert ledger.backlog(2.5) == [1.0, 0.5]
    assert ledger.backlog(20.0) == [0.0, 0.0]  # nothing planned past its finish: idle
    assert ledger.mux_backlog() == [2.0]
    ledger.record(ended("r", 2, 13.0))  # the mux call
    assert ledger.mux_backlog() == [1.0]
    ledger.release("r")
    assert ledger.requests == ["s"]


def test_a_failed_request_gives_back_the_calls_that_never_started():
    ledger = Ledger(2, 1)
    ledger.add("r", [(0, {0: 2.0}), (1, {1: 3.0})], 2, 0, now=0.0)
    ledger.record(started("r", 0, 0.0))
    ledger.release("r", completed=False)  # call 0 ran (or part of it), call 1 never will
    assert ledger.backlog(0.0) == [2.0, 0.0] and ledger.requests == []


def test_late_events_of_a_completed_request_change_nothing():
    ledger = Ledger(1, 1)
    ledger.add("r", [(0, {0: 2.0})], 1, 0, now=0.0)
    ledger.release("r")  # the result came back before the call's "ended" event
    ledger.record(ended("r", 0, 2.0, duration=9.0))
    assert ledger.backlog(0.0) == [2.0]


def test_finish_times_give_every_actor_of_a_pipeline_the_same_work():
    """A stream of requests through a 4-actor chain at the ideal rate, each call taking what was expected:
    over 200 requests every actor's total work is the same to within the largest items the ledger places."""
    costs = CostModel(encode_s=0.025, step_s=0.25, decode_frame_s=0.55)
    planner = Planner(4, 1, costs)
    shape = RequestShape(10, 2, 2)
    total = [0.0] * 4
    per_request = costs.encode_s + 10 * costs.step_s + 2 * costs.decode_frame_s
    for i in range(200):
        now = i * per_request / 4  # the ideal rate of 4 actors
        plan = planner.admit(f"r{i}", shape, now=now)
        for call in plan_calls(plan):
            work = call_work(call, costs, True)
            for actor, seconds in work.items():
                total[actor] += seconds
            planner.record(ended(f"r{i}", call.index, now, duration=sum(work.values())))
        planner.release(f"r{i}")
    # within one decode plus a spare step (and an encode): the largest items a plan places by the ledger
    bound = 2 * costs.decode_frame_s + costs.step_s + costs.encode_s + 2 * costs.call_s
    assert max(total) - min(total) <= bound + 1e-9


def test_events_of_unknown_requests_are_ignored_and_a_request_enters_once():
    ledger = Ledger(1, 1)
    ledger.record(ended("ghost", 0, 1.0))
    ledger.add("r", [(0, {0: 1.0})], 1, 0, now=0.0)
    with pytest.raises(ValueError, match="already"):
        ledger.add("r", [(0, {0: 1.0})], 1, 0, now=0.0)
    with pytest.raises(ValueError, match="outside"):
        ledger.add("s", [(0, {3: 1.0})], 1, 0, now=0.0)


def test_plan_calls_carry_index_priority_transport_and_helper():
    planner = Planner(3, 1, COSTS, latency_mode="cfg-split", transport="gloo")
    plan = planner.admit("r", SHAPE, now=5.0)
    calls = plan_calls(plan)
    assert [c.index for c in calls] == list(range(len(calls)))
    assert mux_call_index(plan) == len(calls)
    assert [c.priority for c in calls] == [float(c.index) for c in calls]  # upstream first
    assert [c.output for c in calls] == ["object_store" if c.decode else "gloo" for c in calls]
    assert plan.split and [c.helper for c in calls if c.steps] == list(plan.helpers)


def test_a_call_that_ends_early_frees_its_actor_sooner():
    planner = Planner(3, 1, COSTS)
    plan = planner.admit("r", SHAPE, now=0.0)
    calls = plan_calls(plan)
    before = planner.ledger.backlog(0.0)
    assert sum(before) == pytest.approx(sum(sum(call_work(c, COSTS, True).values()) for c in calls))
    first = calls[0]
    expected = call_work(first, COSTS, True)[first.actor]
    planner.record(started("r", first.index, 0.0))
    planner.record(ended("r", first.index, 0.5, duration=0.5))
    after = planner.ledger.backlog(0.0)
    assert after[first.actor] == pytest.approx(before[first.actor] - (expected - 0.5))
    assert [a for i, a in enumerate(after) if i != first.actor] == [b for i, b in enumerate(before) if i != first.actor]


def test_auto_splits_an_idle_pipeline_and_nothing_under_load():
    planner = Planner(3, 1, COSTS, latency_mode="auto")
    assert planner.admit("a", SHAPE, now=0.0).split  # alone: every range borrows an idle actor
    planner.ledger.add("load", [(0, {0: 30.0, 1: 30.0, 2: 30.0})], 1, 0, now=0.0)  # every actor queued far ahead
    crowded = planner.admit("b", SHAPE, now=0.1)
    assert not crowded.split and "no idle actor" in crowded.split_reason


def test_auto_looks_ahead_an_actor_busy_now_helps_a_later_range():
    """Only actor 0 has work queued (1.5 s): the first range waits for it and runs unsplit, but by the time the
    request reaches ranges 1 and 2 (2 and 4 s from now) actor 0 is free again and can help."""
    planner = Planner(3, 1, COSTS, latency_mode="auto")
    planner.ledger.add("other", [(0, {0: 1.5})], 1, 0, now=0.0)
    plan = planner.admit("b", SHAPE, now=0.0)
    assert plan.helpers[0] is None and plan.helpers[1] is not None and plan.helpers[2] is not None
    assert 0 in plan.helpers[1:]


def test_parareal_only_alone_and_its_work_runs_from_admission():
    planner = Planner(3, 1, COSTS, latency_mode="parareal")
    alone = planner.admit("a", SHAPE, now=0.0)
    assert alone.parareal and not alone.split
    assert sum(planner.ledger.backlog(1.0)) == pytest.approx(sum(alone.work_s) - 3 * 1.0)  # running since 0
    crowded = planner.admit("b", SHAPE, now=0.5)
    assert not crowded.parareal and "other requests in flight" in crowded.split_reason
    one_stage = Planner(1, 1, COSTS, latency_mode="parareal").admit("c", SHAPE, now=0.0)
    assert not one_stage.parareal and "needs >= 2 stages" in one_stage.split_reason


def test_warmup_plan_splits_in_a_cfg_mode_and_stays_out_of_the_ledger():
    planner = Planner(3, 1, COSTS, latency_mode="auto")
    plan = planner.warmup_plan(RequestShape(3, 2, 2))
    assert plan.split and planner.ledger.requests == []
    assert not Planner(3, 1, COSTS).warmup_plan(RequestShape(3, 2, 2)).split


def test_costs_are_simulated_where_configured_measured_elsewhere():
    measured = CostModel(0.1, 0.2, 0.3, call_s=0.002)
    assert choose_costs(measured, None, None, None) == measured
    assert choose_costs(measured, 250.0, None, 44.0) == CostModel(0.1, 0.25, 0.044, call_s=0.002)


def test_call_work_moves_half_of_each_helped_step_to_the_helper():
    plan = Planner(2, 1, COSTS, latency_mode="cfg-split").admit("r", RequestShape(4, 2, 2), now=0.0)
    call = next(c for c in plan_calls(plan) if c.helper is not None)
    work = call_work(call, COSTS, cfg=True)
    steps = call.steps[1] - call.steps[0]
    assert work[call.helper] == pytest.approx(steps * COSTS.step_s / 2)
    assert sum(work.values()) == pytest.approx(
        sum(call_work(type(call)(**{**call.__dict__, "helper": None}), COSTS, True).values())
    )


def test_the_planner_releases_a_failed_request_through_the_ledger():
    planner = Planner(2, 1, COSTS)
    plan = planner.admit("r", SHAPE, now=0.0)
    assert sum(planner.ledger.backlog(0.0)) > 0
    planner.release("r", completed=False)  # no call of it started
    assert planner.ledger.backlog(0.0) == [0.0, 0.0] and plan.request_id not in planner.ledger.requests
