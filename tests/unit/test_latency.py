"""The CFG-split decision on plain data: who helps, and never under load in auto mode."""

from __future__ import annotations

import pytest

from svdpipe.latency import plan_cfg_split, should_help, split_work
from svdpipe.planner import CostModel, Planner, RequestShape


def chain(load):
    """Range i owned by actor i, as in a pipeline over every actor."""
    return list(range(len(load)))


def test_off_and_parareal_never_split():
    for mode in ("off", "parareal"):
        plan = plan_cfg_split(mode, True, chain([0, 0, 0]), [0, 0, 0])
        assert plan.helpers == (None, None, None) and not plan.split


def test_guidance_off_runs_unsplit_and_says_so():
    plan = plan_cfg_split("cfg-split", False, chain([0, 0, 0]), [0, 0, 0])
    assert not plan.split and "guidance off" in plan.reason


def test_one_actor_cannot_split():
    assert not plan_cfg_split("cfg-split", True, chain([0]), [0]).split


def test_cfg_split_on_an_idle_pipeline_uses_the_next_actor():
    plan = plan_cfg_split("cfg-split", True, chain([0, 0, 0, 0]), [0, 0, 0, 0])
    assert plan.helpers == (1, 2, 3, 0)
    assert plan.split


@pytest.mark.parametrize("mode", ["cfg-split", "auto"])
def test_no_helper_is_the_owner(mode):
    for n in range(2, 9):
        plan = plan_cfg_split(mode, True, list(range(n)), [0] * n)
        assert all(h is not None and h != i for i, h in enumerate(plan.helpers))


def test_auto_under_full_load_changes_nothing():
    plan = plan_cfg_split("auto", True, chain([1, 2, 1, 1, 3, 1, 1]), [1, 2, 1, 1, 3, 1, 1])
    assert plan.helpers == (None,) * 7 and "no idle actor" in plan.reason


def test_auto_borrows_only_idle_actors():
    # actors 1 and 2 are busy: range 0 skips to 3, ranges 1 and 2 take 3, range 3 takes 0
    plan = plan_cfg_split("auto", True, chain([0, 1, 2, 0]), [0, 1, 2, 0])
    assert plan.helpers == (3, 3, 3, 0)
    for h in plan.helpers:
        assert h is None or h in (0, 3)


def test_auto_with_one_idle_actor_never_asks_it_to_help_itself():
    plan = plan_cfg_split("auto", True, chain([0, 1, 1]), [0, 1, 1])
    assert plan.helpers == (None, 0, 0)


def test_cfg_split_is_forced_even_under_load():
    assert plan_cfg_split("cfg-split", True, chain([5, 5, 5]), [5, 5, 5]).helpers == (1, 2, 0)


def test_bad_load_is_an_error():
    with pytest.raises(ValueError, match=">= 0"):
        plan_cfg_split("auto", True, chain([0, -1]), [0, -1])


def test_helper_declines_when_busy_or_awaited():
    assert should_help(False, 0)
    assert not should_help(True, 0)
    assert not should_help(False, 1)


def test_owners_in_any_order_and_actors_without_a_range():
    # the planner may give ranges to actors in any order; actor 3 owns no range (e.g. it only decodes)
    plan = plan_cfg_split("cfg-split", True, [2, 0, 1], [0.0, 0.0, 0.0, 0.0])
    assert plan.helpers == (0, 1, 2)
    plan = plan_cfg_split("auto", True, [2, 0, 1], [0.5, 0.2, 0.0, 0.0])
    assert plan.helpers == (3, 2, 2)


def test_data_parallel_request_borrows_any_idle_actor():
    plan = plan_cfg_split("auto", True, [1], [0.0, 0.3, 0.0])
    assert plan.helpers == (0,)
    assert plan_cfg_split("auto", True, [1], [0.1, 0.3, 0.2]).helpers == (None,)


def test_owner_outside_the_actors_is_an_error():
    with pytest.raises(ValueError, match="outside"):
        plan_cfg_split("auto", True, [0, 4], [0.0, 0.0])


def test_ledger_residue_counts_as_idle():
    load = [0.1 + 0.2 - 0.3, 0.0]  # what adding and removing a plan's seconds can leave behind
    assert load[0] != 0
    assert plan_cfg_split("auto", True, [1], load).helpers == (0,)


def test_split_work_moves_half_of_each_helped_stage():
    planner = Planner(3, 1, CostModel(encode_s=0.01, step_s=0.02, decode_frame_s=0.005))
    plan = planner.plan("r", RequestShape(num_steps=9, num_frames=2, decode_chunk_size=2))
    owners = [st.actor for st in plan.stages]
    split = plan_cfg_split("cfg-split", True, owners, [0.0, 0.0, 0.0])
    work = split_work(plan, split, 0.02)
    assert sum(work) == pytest.approx(sum(plan.work_s))
    for stage, helper in zip(plan.stages, split.helpers, strict=True):
        assert helper is not None and helper != stage.actor
    unsplit = plan_cfg_split("off", True, owners, [0.0, 0.0, 0.0])
    assert split_work(plan, unsplit, 0.02) == plan.work_s
