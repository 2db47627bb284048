"""Parareal over the stage blocks: exact at tol 0, bounded iterations, failures surface, latency model."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from svdpipe import parareal, stages
from svdpipe.config import VideoParams, resolve_params
from svdpipe.local import solve_parareal
from svdpipe.partition import partition_steps
from tests.conftest import diffusers_frames

TOLERANCE = 1e-5


# ------------------------------------------------------------------ the driver on a toy ODE (no model)


def toy_solvers(blocks, rate=0.7):
    """dx/dt = -rate * x * sin(x): fine = unit Euler steps, coarse = one step over the block."""

    async def fine(n, x):
        for _ in blocks[n]:
            x = x - rate * x * torch.sin(x) / len(blocks[n]) * 1.3
        return x

    async def coarse(n, x):
        return x - rate * x * torch.sin(x) * 1.3

    return fine, coarse


def serial(blocks, fine, x):
    for n in range(len(blocks)):
        x = asyncio.run(fine(n, x))
    return x


@pytest.mark.parametrize("lengths", [[1], [2, 3], [3, 3, 2], [4, 4, 4, 4, 3, 3, 3], [1, 1, 1, 1, 1]])
def test_tol_zero_is_the_serial_result_to_the_bit(lengths):
    blocks = partition_steps(sum(lengths), len(lengths))
    fine, coarse = toy_solvers(blocks)
    u0 = torch.linspace(0.1, 3.0, 50, dtype=torch.float64)
    out, stats = asyncio.run(parareal.parareal(u0, blocks, fine, coarse, tol=0.0))
    assert torch.equal(out, serial(blocks, fine, u0))
    assert stats.exact and stats.iterations == (len(lengths) if len(lengths) > 1 else 0)


@pytest.mark.parametrize("tol", [1e-12, 1e-6, 1e-3, 1e-1, 10.0])
def test_iterations_never_exceed_the_blocks(tol):
    blocks = partition_steps(12, 5)
    fine, coarse = toy_solvers(blocks)
    u0 = torch.linspace(0.1, 3.0, 50, dtype=torch.float64)
    _, stats = asyncio.run(parareal.parareal(u0, blocks, fine, coarse, tol=tol))
    assert 1 <= stats.iterations <= len(blocks)
    assert stats.exact == (stats.iterations == len(blocks))
    if not stats.exact:
        assert stats.final_change <= tol
    # the change is a true bound only at convergence, but a big tol must stop after one iteration
    if tol >= 10.0:
        assert stats.iterations == 1


def test_max_iters_caps_the_iterations():
    blocks = partition_steps(12, 5)
    fine, coarse = toy_solvers(blocks)
    u0 = torch.linspace(0.1, 3.0, 50, dtype=torch.float64)
    _, stats = asyncio.run(parareal.parareal(u0, blocks, fine, coarse, tol=0.0, max_iters=2))
    assert stats.iterations == 2 and not stats.exact


def test_counts_follow_the_iterations():
    blocks = partition_steps(6, 3)  # 2-2-2
    fine, coarse = toy_solvers(blocks)
    u0 = torch.ones(4, dtype=torch.float64)
    _, stats = asyncio.run(parareal.parareal(u0, blocks, fine, coarse, tol=0.0))
    # sweep: 3 G; k=1: 3 F + 2 G; k=2: 2 F + 1 G; k=3: 1 F  (no speculation left to run past k = N)
    assert (stats.fine_solves, stats.coarse_solves) == (6, 6)
    assert stats.unet_evals == 6 * 2 + 6


def test_a_failing_solve_fails_the_request_without_hanging():
    blocks = partition_steps(9, 3)
    fine, coarse = toy_solvers(blocks)

    async def broken_fine(n, x):
        if n == 2:
            raise RuntimeError("actor died")
        return await fine(n, x)

    with pytest.raises(RuntimeError, match="actor died"):
        asyncio.run(asyncio.wait_for(parareal.parareal(torch.ones(3), blocks, broken_fine, coarse), timeout=30))


def test_bad_arguments():
    fine, coarse = toy_solvers([range(0, 1)])
    with pytest.raises(ValueError, match="contiguous"):
        asyncio.run(parareal.parareal(torch.ones(1), [range(0, 2), range(3, 4)], fine, coarse))
    with pytest.raises(ValueError, match="tol"):
        asyncio.run(parareal.parareal(torch.ones(1), [range(0, 1)], fine, coarse, tol=-1.0))
    with pytest.raises(ValueError, match="at least one block"):
        asyncio.run(parareal.parareal(torch.ones(1), [], fine, coarse))


# ------------------------------------------------------------------ the latency model


def test_schedule_of_one_block_is_serial():
    s = parareal.schedule([5], 1)
    assert (s.latency, s.evals, s.latency_ratio) == (5.0, 5, 1.0)


def test_schedule_first_iteration_by_hand():
    # 2 blocks of 3: G1 [0,1] on a0, G2 [1,2] on a1; F1 [1,4] on a0 (after G1); F2 [2,5] on a1 (after G2)
    # U^1_1 = F1 at 4; G(1,2) on a1 [5,6]; U^1_2 = max(F2, G(1,2)) = 6.
    s = parareal.schedule([3, 3], 1)
    assert s.latency == 6.0
    assert parareal.schedule([3, 3], 2).latency >= s.latency


@pytest.mark.parametrize("lengths", [[4, 4, 4, 4, 3, 3, 3], [5, 5, 5, 5, 5], [2, 1]])
def test_schedule_grows_with_iterations_and_never_computes_less_than_serial(lengths):
    latencies = [parareal.schedule(lengths, k).latency for k in range(1, len(lengths) + 1)]
    assert latencies == sorted(latencies)
    for k in range(1, len(lengths) + 1):
        assert parareal.schedule(lengths, k).compute_ratio >= 1.0
    with pytest.raises(ValueError, match="iterations"):
        parareal.schedule(lengths, len(lengths) + 1)


# ------------------------------------------------------------------ the tiny model


@pytest.mark.parametrize(
    ("steps", "num_stages", "extra"),
    [
        (7, 3, {"seed": 0}),
        (6, 4, {"seed": 4, "height": 48, "width": 80, "num_frames": 3}),
        (5, 5, {"seed": 3, "max_guidance_scale": 1.0}),  # guidance off
        (4, 1, {"seed": 2, "num_frames": 3}),
    ],
)
def test_parareal_tol_zero_equals_diffusers(tiny_model, reference_pipe, image, steps, num_stages, extra):
    params = resolve_params(VideoParams(num_inference_steps=steps, **extra), tiny_model.spec)
    blocks = partition_steps(steps, num_stages)
    state = stages.encode(tiny_model, image, params, "req")
    solved, stats = solve_parareal(tiny_model, state, blocks, tol=0.0)
    assert stats.exact and stats.iterations <= num_stages
    serial_state = state
    for block in blocks:
        serial_state = stages.denoise(tiny_model, serial_state, block)
    assert torch.equal(solved.latents, serial_state.latents)
    ours = stages.decode(tiny_model, solved)
    assert float(np.abs(ours - diffusers_frames(reference_pipe, image, params)).max()) <= TOLERANCE


def test_parareal_with_a_tolerance_stays_within_the_block_count(tiny_model, image):
    params = resolve_params(VideoParams(num_inference_steps=8, seed=1, num_frames=3), tiny_model.spec)
    blocks = partition_steps(8, 4)
    state = stages.encode(tiny_model, image, params, "req")
    _, stats = solve_parareal(tiny_model, state, blocks, tol=1e-2)
    assert 1 <= stats.iterations <= 4
    assert stats.exact or stats.final_change <= 1e-2


def test_each_block_runs_one_solve_at_a_time():
    """A block's solves never overlap (its stage actor gets one call at a time), whatever is ready."""
    blocks = partition_steps(14, 5)
    fine, coarse = toy_solvers(blocks)
    running, most = [0] * len(blocks), [0] * len(blocks)

    def one_at_a_time(solver):
        async def solve(n, x):
            running[n] += 1
            most[n] = max(most[n], running[n])
            await asyncio.sleep(0.001 * (n + 1))  # later blocks slower: calls pile up behind them
            try:
                return await solver(n, x)
            finally:
                running[n] -= 1

        return solve

    x0 = torch.linspace(0.1, 3.0, 9, dtype=torch.float64)
    out, stats = asyncio.run(parareal.parareal(x0, blocks, one_at_a_time(fine), one_at_a_time(coarse)))
    assert most == [1] * len(blocks) and stats.exact
    assert torch.equal(out, serial(blocks, fine, x0))


def test_block_gate_serves_the_earliest_iteration_and_coarse_first():
    async def scenario():
        gate, order = parareal._BlockGate(), []

        async def solve(priority):
            async with gate.turn(priority):
                order.append(priority)
                await asyncio.sleep(0)

        async with gate.turn((0, 0)):  # busy while the others queue up
            tasks = [asyncio.ensure_future(solve(p)) for p in [(2, 1), (1, 1), (3, 0), (1, 0)]]
            await asyncio.sleep(0)
            tasks[2].cancel()  # a cancelled waiter gives up its place
            await asyncio.sleep(0)
        await asyncio.gather(*tasks, return_exceptions=True)
        return order

    assert asyncio.run(scenario()) == [(1, 0), (1, 1), (2, 1)]


def test_progress_reports_the_exact_steps_after_each_iteration():
    blocks = partition_steps(12, 4)
    fine, coarse = toy_solvers(blocks)
    seen = []
    x0 = torch.linspace(0.1, 3.0, 9, dtype=torch.float64)
    _, stats = asyncio.run(parareal.parareal(x0, blocks, fine, coarse, on_iteration=lambda k, s: seen.append((k, s))))
    assert stats.iterations == 4 and seen == [(1, 3), (2, 6), (3, 9)]  # the last iteration ends the solve


def test_changes_are_reported_per_iteration():
    blocks = partition_steps(12, 4)
    fine, coarse = toy_solvers(blocks)
    _, stats = asyncio.run(parareal.parareal(torch.linspace(0.1, 3.0, 9, dtype=torch.float64), blocks, fine, coarse))
    assert len(stats.changes) == stats.iterations == 4
    assert stats.changes[-1] == stats.final_change


def test_the_local_path_runs_parareal_from_inside_an_event_loop(tiny_model, image):
    """A server or the bench calls the single-process path from async code: no 'asyncio.run() cannot be called
    from a running event loop'."""
    params = resolve_params(VideoParams(num_inference_steps=4, seed=2, num_frames=2), tiny_model.spec)
    blocks = partition_steps(4, 2)
    state = stages.encode(tiny_model, image, params, "req")
    outside, _ = solve_parareal(tiny_model, state, blocks)

    async def inside():
        return solve_parareal(tiny_model, state, blocks)

    solved, stats = asyncio.run(inside())
    assert stats.exact and torch.equal(solved.latents, outside.latents)
