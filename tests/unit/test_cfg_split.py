"""CFG split: each step's guidance halves computed apart and combined must still equal diffusers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from svdpipe import sampler, stages
from svdpipe.config import VideoParams, resolve_params
from svdpipe.partition import partition_steps
from tests.conftest import diffusers_frames

TOLERANCE = 1e-5


def in_process_helper(model, state):
    """The other half computed right here (what a helper actor does), returned through a waiter."""

    def start(latents, i):
        cond = stages.predict_half(model, state, latents, i, 1)
        return lambda: cond

    return start


def run_split_cfg(model, image, params, num_stages: int) -> np.ndarray:
    state = stages.encode(model, image, params, "req")
    for steps in partition_steps(params.num_inference_steps, num_stages):
        state = stages.denoise_split(model, state, steps, in_process_helper(model, state))
    return stages.decode(model, state)


@pytest.mark.parametrize(
    ("steps", "num_stages", "extra"),
    [
        (7, 3, {"seed": 0}),
        (5, 5, {"seed": 3, "min_guidance_scale": 1.5, "max_guidance_scale": 2.5}),
        (6, 4, {"seed": 4, "height": 48, "width": 80, "num_frames": 5}),
        (4, 1, {"seed": 6, "num_frames": 3}),
    ],
)
def test_cfg_split_equals_diffusers(tiny_model, reference_pipe, image, steps, num_stages, extra):
    params = resolve_params(VideoParams(num_inference_steps=steps, **extra), tiny_model.spec)
    ours = run_split_cfg(tiny_model, image, params, num_stages)
    ref = diffusers_frames(reference_pipe, image, params)
    assert ours.shape == ref.shape
    assert float(np.abs(ours - ref).max()) <= TOLERANCE


def test_halves_match_the_batch_of_two(tiny_model, image):
    """A batch-of-one UNet call per half gives the rows of the batch-of-two call, up to kernel rounding."""
    params = resolve_params(VideoParams(num_inference_steps=4, seed=2), tiny_model.spec)
    state = stages.encode(tiny_model, image, params)
    halves = [stages.predict_half(tiny_model, state, state.latents, 1, h) for h in (0, 1)]
    timesteps = torch.tensor(state.timesteps, dtype=torch.float32)
    with torch.no_grad():
        both = stages._predict(tiny_model, state, torch.cat([state.latents] * 2), 1, timesteps, slice(None))
    assert halves[0].shape == (1, *both.shape[1:])
    for h in (0, 1):
        assert float((both[h : h + 1] - halves[h]).abs().max()) <= 1e-5
    assert not torch.equal(halves[0], halves[1])  # the halves are conditioned differently


def test_guide_is_apply_guidance():
    gen = torch.Generator().manual_seed(0)
    uncond, cond = torch.randn(1, 3, 4, 2, 2, generator=gen), torch.randn(1, 3, 4, 2, 2, generator=gen)
    scale = sampler.guidance_scales(1.0, 3.0, 3, 1, 5)
    assert torch.equal(sampler.guide(uncond, cond, scale), sampler.apply_guidance(torch.cat([uncond, cond]), scale))


def test_split_needs_guidance(tiny_model, image):
    params = resolve_params(VideoParams(num_inference_steps=2, seed=0, max_guidance_scale=1.0), tiny_model.spec)
    state = stages.encode(tiny_model, image, params)
    with pytest.raises(RuntimeError, match="no guidance halves"):
        stages.denoise_split(tiny_model, state, range(0, 2), in_process_helper(tiny_model, state))
    with pytest.raises(RuntimeError, match="no guidance halves"):
        stages.predict_half(tiny_model, state, state.latents, 0, 1)


def test_simulated_half_costs_half_a_step(image, monkeypatch):
    """With the stand-in UNet a split step's halves each wait half of a full step (a batch of one)."""
    from svdpipe import simulate
    from svdpipe.models import load_model

    model = load_model("tiny", "fp32", "cpu")
    simulate.install_stand_ins(model, simulate.SimulatedCosts(step_s=0.02))
    params = resolve_params(VideoParams(num_inference_steps=2, seed=0), model.spec)
    state = stages.encode(model, image, params)
    waits: list[float] = []
    monkeypatch.setattr(simulate.time, "sleep", waits.append)
    stages.denoise_split(model, state, range(0, 2), lambda latents, i: lambda: None)  # helper declines
    stages.predict_half(model, state, state.latents, 0, 1)
    stages.denoise(model, state, range(0, 1))
    assert waits == [0.01] * 5 + [0.02]


def test_coarse_step_over_one_step_is_the_step(tiny_model, image):
    params = resolve_params(VideoParams(num_inference_steps=3, seed=5), tiny_model.spec)
    state = stages.encode(tiny_model, image, params)
    fine = stages.denoise(tiny_model, state, range(0, 1))
    coarse = stages.coarse_step(tiny_model, state, range(0, 1))
    assert torch.equal(fine.latents, coarse.latents) and coarse.step == 1
    jump = stages.coarse_step(tiny_model, state, range(0, 3))
    assert jump.step == 3 and not torch.equal(jump.latents, stages.denoise(tiny_model, state, range(0, 3)).latents)


def test_a_declining_helper_changes_nothing(tiny_model, image):
    """When the helper declines (None), the owner computes the half itself: the same bits as a helper's."""
    params = resolve_params(VideoParams(num_inference_steps=4, seed=8), tiny_model.spec)
    state = stages.encode(tiny_model, image, params)
    helped = stages.denoise_split(tiny_model, state, range(0, 4), in_process_helper(tiny_model, state))
    calls = []

    def sometimes(latents, i):
        calls.append(i)
        if i % 2:
            return lambda: None
        return in_process_helper(tiny_model, state)(latents, i)

    mixed = stages.denoise_split(tiny_model, state, range(0, 4), sometimes)
    assert calls == [0, 1, 2, 3]
    assert torch.equal(helped.latents, mixed.latents)
