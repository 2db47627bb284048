"""The 'wide' latency mode's decisions: which requests get a group of actors (planner), what the config allows,
and how many positions the UNet's innermost level has (the limit of a position split)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from svdpipe.config import EngineConfig
from svdpipe.models import model_spec
from svdpipe.planner import CostModel, Planner, RequestShape, StageAssignment, plan_calls


def test_the_wide_mode_gives_an_idle_request_a_group_and_a_loaded_one_width_one():
    costs = CostModel(encode_s=0.1, step_s=1.0, decode_frame_s=0.1)
    planner = Planner(5, 1, costs, latency_mode="wide", wide_size=2)
    first = planner.admit("a", RequestShape(6, 5, 5), now=0.0)
    assert first.wide == (0, 1) and first.stages == (StageAssignment(0, 0, 6),)
    calls = plan_calls(first)
    assert calls[0].encode and calls[0].steps is None  # encode alone: both ranks start from its state
    assert calls[1].wide == (0, 1) and calls[1].pinned and calls[1].steps == (0, 6)
    backlog = planner.ledger.backlog(0.0)
    assert backlog[0] >= backlog[1] == pytest.approx(6 * 1.0 * 3 / 5)  # the busiest rank: 3 of 5 frames
    second = planner.admit("b", RequestShape(6, 5, 5), now=0.0)
    assert second.wide in ((2, 3), ()) and (second.wide or "no group" in second.split_reason)
    with pytest.raises(ValueError, match="wide_size"):
        Planner(3, 1, costs, latency_mode="wide", wide_size=1)


def test_too_few_frames_or_positions_for_the_group_keep_width_one():
    costs = CostModel(encode_s=0.1, step_s=1.0, decode_frame_s=0.1)
    planner = Planner(4, 1, costs, latency_mode="wide", wide_size=4)
    few_frames = planner.admit("f", RequestShape(4, 3, 3), now=0.0)
    assert not few_frames.wide and "fewer than 4" in few_frames.split_reason
    planner.release("f", completed=False)
    few_positions = planner.admit("p", RequestShape(4, 8, 8, positions=2), now=0.0)
    assert not few_positions.wide
    planner.release("p", completed=False)
    assert planner.admit("ok", RequestShape(4, 8, 8, positions=4), now=0.0).wide == (0, 1, 2, 3)


def test_innermost_positions_follow_the_down_samplers():
    assert model_spec("tiny").innermost_positions(32, 32) == 4  # 4x4 latent, one down-sampler
    assert model_spec("random-full-xt").innermost_positions(576, 1024) == 9 * 16  # 72x128, three
    assert model_spec("random-full-xt").innermost_positions(72, 72) == 4  # 9x9 -> 5x5 -> 3x3 -> 2x2


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"num_stages": 2, "wide_size": 3}, "needs at least that many actors"),
        ({"num_stages": 2, "transport": "gloo"}, "gloo"),
        ({"num_stages": 2, "num_gpus_per_actor": 0.5, "transport": "cuda_ipc"}, "one GPU per actor"),
    ],
)
def test_the_config_refuses_wide_layouts_that_cannot_run(fields, message):
    with pytest.raises(ValidationError, match=message):
        EngineConfig(latency_mode="wide", **fields)
    EngineConfig(latency_mode="wide", num_stages=4, wide_size=4)  # what does fit


def test_auto_tries_a_wide_group_first_where_the_config_allows_it():
    costs = CostModel(encode_s=0.1, step_s=1.0, decode_frame_s=0.1)
    planner = Planner(4, 1, costs, latency_mode="auto", wide_size=2, wide_in_auto=True)
    first = planner.admit("a", RequestShape(6, 4, 4), now=0.0)
    assert first.wide == (0, 1) and not first.split
    second = planner.admit("b", RequestShape(6, 4, 4), now=0.0)
    assert second.wide in ((2, 3), ())  # the other group, if the first one's decode left it idle
    if not second.wide:
        assert "wide" not in second.split_reason
    plain = Planner(4, 1, costs, latency_mode="auto").admit("c", RequestShape(6, 4, 4), now=0.0)
    assert not plain.wide and plain.split  # without wide_in_auto: CFG halves on idle actors, as before
    assert EngineConfig(latency_mode="auto", num_stages=4, num_gpus_per_actor=1).wide_steps
    assert not EngineConfig(latency_mode="auto", num_stages=4).wide_steps  # CPU actors: slower, not used
    assert not EngineConfig(latency_mode="auto", num_stages=4, num_gpus_per_actor=0.5).wide_steps
    assert EngineConfig(latency_mode="wide", num_stages=2).wide_steps
