"""The planner's dispatch (late binding): a free actor takes the oldest request's ready call; planned actor first,
then the actor holding the request's state, else any free one; pinned calls wait for their own actor."""

from __future__ import annotations

import pytest

from svdpipe.dispatch import Dispatch
from svdpipe.planner import ActorCall, CostModel, Planner, RequestShape, plan_calls


def _call(actor: int, index: int = 0, priority: float | None = None, pinned: bool = False) -> ActorCall:
    return ActorCall(actor, False, (0, 1), (), index, float(index) if priority is None else priority, pinned=pinned)


def test_a_call_runs_on_its_planned_actor_when_free():
    d = Dispatch(3)
    d.ready("a", _call(2), since=0.0)
    assert d.assign() == [("a", _call(2))]
    assert not d.free(2) and d.free(0)


def test_a_busy_planned_actor_gives_the_call_to_the_previous_actor_then_any_free_one():
    d = Dispatch(3)
    d.ready("a", _call(0), since=0.0)
    assert [c.actor for _, c in d.assign()] == [0]
    d.ready("b", _call(0), since=1.0, previous=2)
    d.ready("c", _call(0), since=2.0)
    assert [(r, c.actor) for r, c in d.assign()] == [("b", 2), ("c", 1)]
    assert d.assign() == []  # every actor busy
    d.ready("e", _call(1), since=3.0)
    assert d.assign() == [] and d.waiting == 1
    d.ended(1)
    assert [(r, c.actor) for r, c in d.assign()] == [("e", 1)]


def test_the_oldest_request_goes_first_then_upstream_calls():
    d = Dispatch(1)
    d.ready("new", _call(0, index=0), since=5.0)
    d.ready("old", _call(0, index=3), since=1.0)
    d.ready("old2", _call(0, index=0), since=1.0)  # same admission time: the request seen first wins the tie
    order = []
    for _ in range(3):
        ((rid, _),) = d.assign()
        order.append(rid)
        d.ended(0)
    assert order == ["old", "old2", "new"]


def test_a_pinned_call_waits_for_its_actor_and_keeps_its_place():
    d = Dispatch(2)
    d.ready("x", _call(0), since=0.0)
    d.assign()
    d.ready("p", _call(0, pinned=True), since=1.0)
    d.ready("q", _call(0), since=2.0)
    assert [(r, c.actor) for r, c in d.assign()] == [("q", 1)]  # p waits for actor 0; q takes actor 1
    d.ended(0)
    assert [(r, c.actor) for r, c in d.assign()] == [("p", 0)]


def test_dropped_requests_leave_the_queue_and_errors_are_clear():
    d = Dispatch(1)
    d.ready("x", _call(0), since=0.0)
    d.assign()
    d.ready("y", _call(0), since=1.0)
    d.drop("y")
    d.ended(0)
    assert d.assign() == []
    with pytest.raises(ValueError, match="no call running"):
        d.ended(0)
    with pytest.raises(ValueError, match="names actor 4"):
        d.ready("z", _call(4), since=0.0)
    with pytest.raises(ValueError, match="at least one actor"):
        Dispatch(0)


def test_the_planner_moves_a_rebound_calls_seconds_in_its_ledger():
    costs = CostModel(encode_s=0.0, step_s=1.0, decode_frame_s=0.0)
    planner = Planner(2, 1, costs)
    plan = planner.admit("r", RequestShape(2, 1, 1), now=0.0)
    first, *_ = plan_calls(plan)
    before = planner.ledger.backlog(0.0)
    planner.dispatch._busy[first.actor] = 1  # its planned actor is taken by something else
    planner.ready("r", first, since=0.0)
    ((_, bound),) = planner.assign(0.0)
    assert bound.actor != first.actor
    after = planner.ledger.backlog(0.0)
    moved = before[first.actor] - after[first.actor]
    assert moved == pytest.approx(after[bound.actor] - before[bound.actor]) and moved > 0
    planner.ended(bound)
    assert planner.dispatch.free(bound.actor)
    planner.release("r", completed=False)


def test_warm_up_calls_are_pinned_and_a_split_call_never_runs_on_its_helper():
    costs = CostModel(encode_s=0.0, step_s=1.0, decode_frame_s=0.0)
    warm = Planner(3, 1, costs).warmup_plan(RequestShape(3, 1, 1))
    assert all(c.pinned for c in plan_calls(warm))
    assert not any(c.pinned for c in plan_calls(Planner(2, 1, costs).admit("u", RequestShape(2, 1, 1), now=0.0)))
    d = Dispatch(3)
    d.ready("x", _call(0), since=0.0)
    d.assign()  # actor 0 busy
    split = ActorCall(0, False, (0, 2), (), 0, 0.0, helper=1)
    d.ready("s", split, since=1.0, previous=1)
    assert [(r, c.actor, c.helper) for r, c in d.assign()] == [("s", 2, 1)]  # not 1: it helps this call
    d.ready("t", ActorCall(0, False, (0, 2), (), 0, 0.0, helper=1), since=2.0)
    assert d.assign() == []  # only actor 1 is free, and it is this call's helper
    assert d.waiting == 1


def test_the_ledger_moves_a_split_calls_own_seconds_and_leaves_its_helpers():
    costs = CostModel(encode_s=0.0, step_s=1.0, decode_frame_s=0.0)
    planner = Planner(3, 1, costs, latency_mode="cfg-split")
    plan = planner.admit("s", RequestShape(2, 1, 1), now=0.0)
    call = next(c for c in plan_calls(plan) if c.helper is not None)
    others = [a for a in range(3) if a not in (call.actor, call.helper)]
    before = planner.ledger.backlog(0.0)
    planner.ledger.rebind("s", call.index, others[0], 0.0)
    after = planner.ledger.backlog(0.0)
    assert after[call.helper] == before[call.helper]
    moved = before[call.actor] - after[call.actor]
    assert moved > 0 and moved == pytest.approx(after[others[0]] - before[others[0]])


def test_a_wide_call_waits_until_its_whole_group_is_free_and_frees_it_whole():
    d = Dispatch(3)
    d.ready("x", _call(1), since=0.0)
    d.assign()
    wide = ActorCall(0, False, (0, 4), (), 1, 1.0, pinned=True, wide=(0, 1))
    d.ready("w", wide, since=1.0)
    d.ready("y", _call(2), since=2.0)
    assert [(r, c.actor) for r, c in d.assign()] == [("y", 2)]  # actor 1 is busy: the wide call waits
    d.ended(1)
    assert d.assign() == [("w", wide)]
    assert not d.free(0) and not d.free(1)
    planner = Planner(2, 1, CostModel(0.0, 1.0, 0.0), latency_mode="wide")
    planner.dispatch._busy[:] = [1, 1]
    planner.ended(wide)
    assert planner.dispatch.free(0) and planner.dispatch.free(1)
