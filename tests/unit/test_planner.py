"""The planner: plans cover every step once and in order, use diffusers' decode chunks, and balance actors."""

from __future__ import annotations

import itertools

import pytest

from svdpipe.planner import (
    ActorCall,
    CostModel,
    Planner,
    RequestShape,
    actor_calls,
    decode_chunks,
)

COSTS = CostModel(encode_s=0.002, step_s=0.020, decode_frame_s=0.045)


def check_plan(plan, shape: RequestShape, num_actors: int) -> None:
    # every step exactly once, in chain order, from 0 to T
    assert plan.stages[0].start == 0 and plan.num_steps == shape.num_steps
    for a, b in itertools.pairwise(plan.stages):
        assert a.stop == b.start
    assert all(s.stop > s.start for s in plan.stages)
    # every frame exactly once, in diffusers' chunks
    assert [(d.start, d.stop) for d in plan.decode] == decode_chunks(shape.num_frames, shape.decode_chunk_size)
    actors = {plan.encode_actor, *(s.actor for s in plan.stages), *(d.actor for d in plan.decode)}
    assert actors <= set(range(num_actors))
    assert len(plan.work_s) == num_actors
    if plan.parallelism == "pipeline":
        # one range per actor, in actor order (a request with fewer steps than actors: one step per range)
        owners = [s.actor for s in plan.stages]
        assert owners == sorted(set(owners)) and len(owners) == min(num_actors, shape.num_steps)


@pytest.mark.parametrize("frames", [1, 4, 14, 25])
@pytest.mark.parametrize("chunk", [1, 2, 3, 8, 14, 25])
def test_decode_chunks_are_diffusers_chunks(frames, chunk, reference_pipe):
    """Record the frame ranges diffusers' decode_latents hands the VAE."""
    import torch

    seen: list[int] = []

    class RecordingVAE:
        config = reference_pipe.vae.config

        def forward(self, z, num_frames):  # decode_latents reads the signature for num_frames
            raise AssertionError

        def decode(self, z, num_frames):
            seen.append(num_frames)
            assert z.shape[0] == num_frames

            class Out:
                sample = torch.zeros(num_frames, 3, 8, 8)

            return Out()

    class Pipe:
        vae = RecordingVAE()

    type(reference_pipe).decode_latents(Pipe(), torch.zeros(1, frames, 4, 1, 1), frames, chunk)
    starts = list(itertools.accumulate([0, *seen]))
    assert list(itertools.pairwise(starts)) == decode_chunks(frames, chunk)


@pytest.mark.parametrize("parallelism", ["pipeline", "data-parallel"])
@pytest.mark.parametrize(("steps", "actors"), [(1, 1), (7, 3), (21, 7), (23, 7), (25, 4), (9, 9), (3, 7), (1, 4)])
@pytest.mark.parametrize(("frames", "chunk"), [(2, 2), (2, 1), (14, 4), (25, 8)])
def test_plans_cover_every_step_and_frame(parallelism, steps, actors, frames, chunk):
    planner = Planner(actors, 2, COSTS, parallelism)
    shape = RequestShape(steps, frames, chunk)
    load = [0.0] * actors
    for i in range(3 * actors):
        plan = planner.plan(f"r{i}", shape, load)
        check_plan(plan, shape, actors)
        load = [a + b for a, b in zip(load, plan.work_s, strict=True)]
        if parallelism == "data-parallel":
            assert {s.actor for s in plan.stages} == {d.actor for d in plan.decode} == {plan.encode_actor}


@pytest.mark.parametrize(
    ("steps", "actors", "costs"),
    [
        (21, 7, COSTS),
        (23, 7, COSTS),
        (21, 7, CostModel(0.002, 0.020, 0.0)),
        (21, 7, CostModel(0.0, 0.76, 3.4 / 25)),  # SVD-XT on an H100 (TensorRT figures)
        (25, 4, CostModel(0.3, 0.76, 0.5, call_s=0.003)),
        (8, 8, CostModel(0.1, 0.02, 0.2)),
        (30, 2, COSTS),
        (4, 7, COSTS),  # fewer steps than actors: one step each on the least-loaded four
    ],
)
@pytest.mark.parametrize(("frames", "chunk"), [(2, 2), (2, 1), (25, 5)])
def test_expected_work_per_actor_is_equal(steps, actors, costs, frames, chunk):
    """Over a stream of requests each actor's total expected work stays within one work item of the others."""
    planner = Planner(actors, 1, costs)
    shape = RequestShape(steps, frames, chunk)
    ledger = [0.0] * actors
    requests = 50 * actors
    for i in range(requests):
        plan = planner.plan(f"r{i}", shape, ledger)
        ledger = [a + b for a, b in zip(ledger, plan.work_s, strict=True)]
    per_request = sum(ledger) / requests
    work = costs.encode_s + steps * costs.step_s + frames * costs.decode_frame_s
    assert per_request >= work - 1e-9  # nothing dropped; call turnarounds come on top
    biggest_item = max(-(-steps // actors) * costs.step_s, chunk * costs.decode_frame_s, costs.encode_s)
    biggest_item += costs.call_s
    assert max(ledger) - min(ledger) <= biggest_item + 1e-9
    # so each actor's share per request tends to W / N
    for total in ledger:
        assert total / requests == pytest.approx(per_request / actors, abs=biggest_item / requests + 1e-12)


def test_actors_with_fewer_steps_take_the_codec_work():
    # 23 steps over 7 actors: two actors own 4 steps; an idle engine gives the codec to 3-step actors.
    plan = Planner(7, 1, COSTS).plan("r", RequestShape(23, 2, 2))
    long_owners = {s.actor for s in plan.stages if s.stop - s.start == 4}
    assert plan.encode_actor not in long_owners and plan.decode[0].actor not in long_owners


def test_load_steers_work_away_from_busy_actors():
    planner = Planner(3, 2, COSTS, "data-parallel")
    plan = planner.plan("r", RequestShape(6, 2, 2), load=[1.0, 0.5, 2.0], mux_load=[3.0, 1.0])
    assert plan.encode_actor == 1 and plan.mux_actor == 1


def test_no_guidance_halves_the_step_cost():
    cfg = Planner(1, 1, COSTS).plan("a", RequestShape(10, 1, 1, cfg=True))
    half = Planner(1, 1, COSTS).plan("b", RequestShape(10, 1, 1, cfg=False))
    assert cfg.work_s[0] - half.work_s[0] == pytest.approx(10 * COSTS.step_s / 2)


def test_parallel_decode_spreads_chunks_over_actors():
    # idle engine, 3 chunks: each goes to a different actor, so they run at the same time
    plan = Planner(7, 1, COSTS).plan("r", RequestShape(21, 6, 2))
    assert len({d.actor for d in plan.decode}) == 3
    chain, decodes = actor_calls(plan)
    assert [c.steps for c in chain] == [(s.start, s.stop) for s in plan.stages]
    assert sorted(f for c in decodes for f in c.decode) == [(0, 2), (2, 4), (4, 6)]
    assert all(c.steps is None and not c.encode for c in decodes)


def test_calls_merge_phases_on_one_actor():
    plan = Planner(4, 1, COSTS, "data-parallel").plan("r", RequestShape(9, 4, 2), load=[1, 1, 0, 1])
    assert actor_calls(plan) == ([ActorCall(2, True, (0, 9), ((0, 2), (2, 4)))], [])
    # a pipeline whose encode runs apart from stage 0 gets an encode-only call first
    # (23 steps over 7: stage 0 owns 4 steps, so a 3-step actor encodes)
    plan = Planner(7, 1, COSTS).plan("r", RequestShape(23, 2, 2))
    chain, decodes = actor_calls(plan)
    assert chain[0] == ActorCall(plan.encode_actor, True, None, ())
    assert [c.steps for c in chain[1:]] == [(s.start, s.stop) for s in plan.stages]
    # one chunk: decoded in whichever call runs on its actor (the last stage's call, or a decode call)
    assert [(c.actor, c.decode) for c in [*chain, *decodes] if c.decode] == [(plan.decode[0].actor, ((0, 2),))]


def test_bad_input():
    with pytest.raises(ValueError, match="actor loads"):
        Planner(2, 1, COSTS).plan("r", RequestShape(5, 2, 2), load=[0.0])
    with pytest.raises(ValueError):
        CostModel(0.0, 0.0, 0.0)
    with pytest.raises(ValueError):
        RequestShape(0, 1, 1)


def test_fewer_steps_than_actors_run_one_step_each_on_the_least_loaded():
    plan = Planner(5, 1, COSTS).plan("r", RequestShape(3, 2, 2), [0.5, 0.0, 0.2, 0.0, 0.1])
    assert [(s.actor, s.start, s.stop) for s in plan.stages] == [(1, 0, 1), (3, 1, 2), (4, 2, 3)]


def test_a_clip_that_feeds_the_next_decodes_its_last_frame_first():
    planner = Planner(3, 1, CostModel(encode_s=0.1, step_s=1.0, decode_frame_s=0.5))
    shape = RequestShape(num_steps=6, num_frames=6, decode_chunk_size=2, feeds_next=True)
    plan = planner.admit("clip", shape, now=0.0)
    assert plan.feeds_next
    _chain, decodes = actor_calls(plan)
    assert decodes, "the chunks spread over actors"
    first = min(decodes, key=lambda c: c.index)
    assert first.decode[0] == (4, 6)  # the chunk holding the last frame, first of its call, its call first
    assert all(c.priority == 0.0 for c in decodes)  # ahead of every step call: nothing holds a clip's tail back
    assert sorted(f for c in decodes for f in c.decode) == [(0, 2), (2, 4), (4, 6)]


def test_a_long_video_keeps_its_mux_actor():
    planner = Planner(2, 3, CostModel(encode_s=0.1, step_s=1.0, decode_frame_s=0.5))
    shape = RequestShape(num_steps=4, num_frames=2, decode_chunk_size=2)
    assert planner.admit("a", shape, now=0.0, mux_actor=2).mux_actor == 2
    with pytest.raises(ValueError, match="mux actor 3"):
        planner.admit("b", shape, now=0.0, mux_actor=3)
