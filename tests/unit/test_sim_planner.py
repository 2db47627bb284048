"""Planner equivalence: the simulator drives svdpipe.planner.Planner itself, and what it feeds it (admissions,
call events, ready calls, bindings, releases) replayed into a fresh Planner built as the engine builds it gives the
same plans, the same bindings and the same ledger. Every call of every plan reports `started` once and then `ended`
once, as the actors do."""

from __future__ import annotations

from collections import Counter

import pytest

from svdpipe import planner as planner_module
from svdpipe.bench.metrics import poisson_arrivals
from svdpipe.ledger import CallEvent
from svdpipe.planner import UNTRACKED, Planner, RequestShape, mux_call_index, plan_calls
from svdpipe.sim.clock import EventLoop
from svdpipe.sim.costs import SimCosts
from svdpipe.sim.service import Job, Layout, Service
from svdpipe.sim.workload import closed_loop, open_loop

COSTS = SimCosts(encode_s=0.1, step_s=0.76, decode_frame_s=0.136, mux_s=0.3, cv=0.2)
SHAPES = [RequestShape(25, 25, 8), RequestShape(14, 14, 14), RequestShape(6, 3, 1, cfg=False)]


def _replay(layout: Layout, log) -> list[Planner]:
    """The log into fresh planners, one per pipeline, constructed as Engine.start constructs its planner."""
    fresh = [
        Planner(layout.actors, layout.mux_actors, COSTS.planner_costs(), layout.parallelism, None, layout.latency_mode)
        for _ in range(layout.replicas)
    ]
    for kind, payload in log:
        if kind == "admit":
            replica, rid, shape, now, plan, mux_actor = payload
            assert fresh[replica].admit(rid, shape, now, mux_actor) == plan, f"{rid} planned differently on replay"
        elif kind == "record":
            replica, event = payload
            fresh[replica].record(event)
        elif kind == "ready":
            replica, rid, call, since, previous = payload
            fresh[replica].ready(rid, call, since, previous)
        elif kind == "assign":
            replica, now, bound = payload
            assert fresh[replica].assign(now) == bound, "bound differently on replay"
        elif kind == "ended":
            replica, call = payload
            fresh[replica].ended(call)
        else:
            replica, rid, completed = payload
            fresh[replica].release(rid, completed)
    return fresh


@pytest.mark.parametrize(
    "layout",
    [
        Layout(3, latency_mode="auto"),
        Layout(4, latency_mode="cfg-split", mux_actors=1),
        Layout(3, parallelism="data-parallel", replicas=2, max_inflight=3),
        Layout(3, latency_mode="parareal"),
    ],
    ids=lambda lay: lay.describe(),
)
def test_replayed_events_give_the_same_plans_and_ledger(layout):
    log: list = []
    arrivals = poisson_arrivals(0.1, 3, 40)
    done, _ = open_loop(layout, COSTS, lambda i: SHAPES[i % 3], arrivals, seed=5, clips=1, log=log)
    assert len(done) == 40
    fresh = _replay(layout, log)
    admits = [p for k, p in log if k == "admit"]
    assert len(admits) == 40
    for replayed in fresh:
        assert replayed.ledger.requests == []  # every request released


def test_every_call_reports_started_then_ended_once():
    log: list = []
    layout = Layout(3, latency_mode="auto")
    closed_loop(layout, COSTS, lambda i: SHAPES[i % 3], total=12, concurrency=4, seed=1, clips=2, log=log)
    plans = {p[1]: p[4] for k, p in log if k == "admit"}
    assert len(plans) == 24  # 12 requests x 2 clips, each admitted by the planner
    events: Counter = Counter()
    last: dict[tuple[str, int], str] = {}
    for kind, payload in log:
        if kind != "record":
            continue
        event: CallEvent = payload[1]
        key = (event.request_id, event.call)
        assert last.get(key) == ("started" if event.kind == "ended" else None), f"{key}: {event.kind} out of order"
        last[key] = event.kind
        events[event.request_id] += 1
    for rid, plan in plans.items():
        expected = {c.index for c in plan_calls(plan)} | {mux_call_index(plan)}
        reported = {call for (r, call), kind in last.items() if r == rid and kind == "ended"}
        assert reported == expected, rid
    assert [k for k, _ in log].count("release") == 24


def test_the_ledger_follows_the_same_events():
    """Not only the plans: stopped mid-run, the simulator's own planners hold the ledgers the replay builds."""
    log: list = []
    layout = Layout(3, latency_mode="auto", replicas=2, max_inflight=4)
    loop = EventLoop()
    service = Service(layout, COSTS, loop, lambda f: None, seed=2, log=log)
    assert all(type(r.planner) is planner_module.Planner for r in service.replicas)  # the real one, not a copy
    for i, t in enumerate(poisson_arrivals(0.3, 9, 60)):
        loop.at(t, service.submit, Job(i, t, SHAPES[i % 3]))
    loop.run(until=90.0)
    fresh = _replay(layout, log)
    for live, replayed in zip(service.replicas, fresh, strict=True):
        assert live.planner.ledger.requests  # requests still in flight
        assert replayed.ledger.requests == live.planner.ledger.requests
        assert replayed.ledger.backlog(loop.now) == live.planner.ledger.backlog(loop.now)
        assert replayed.ledger.mux_backlog() == live.planner.ledger.mux_backlog()


def test_parareal_calls_report_untracked():
    log: list = []
    closed_loop(Layout(3, latency_mode="parareal"), COSTS, lambda _i: SHAPES[0], total=1, concurrency=1, log=log)
    plan = next(p[4] for k, p in log if k == "admit")
    assert plan.parareal
    calls = {p[1].call for k, p in log if k == "record"}
    assert calls == {UNTRACKED, mux_call_index(plan)}
