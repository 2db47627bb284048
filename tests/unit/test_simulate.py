"""The stand-in model: waits scale with the work asked of it; the sampler path runs unchanged on it."""

from __future__ import annotations

import pytest
import torch

from svdpipe import simulate, stages
from svdpipe.config import EngineConfig, VideoParams, resolve_params
from svdpipe.models import load_model
from svdpipe.simulate import SimulatedCosts, install_stand_ins


@pytest.fixture
def waits(monkeypatch) -> list[float]:
    """What the stand-ins asked time.sleep for (no wall clock in tests)."""
    seen: list[float] = []
    monkeypatch.setattr(simulate.time, "sleep", seen.append)
    return seen


def test_costs_from_config():
    c = SimulatedCosts.from_config(EngineConfig(simulate_step_ms=20, simulate_encode_ms=2, simulate_decode_frame_ms=45))
    assert (c.step_s, c.encode_s, c.decode_frame_s) == (0.02, 0.002, 0.045) and c.any
    assert not SimulatedCosts.from_config(EngineConfig()).any


@pytest.mark.parametrize(("guidance", "per_call"), [(3.0, 0.020), (1.0, 0.010)])
def test_unet_wait_scales_with_the_batch(image, waits, guidance, per_call):
    """A guidance batch of two waits the full step; a batch of one (no guidance) half."""
    model = load_model("tiny", "fp32", "cpu")
    install_stand_ins(model, SimulatedCosts(step_s=0.020, encode_s=0.002, decode_frame_s=0.045))
    params = resolve_params(
        VideoParams(num_inference_steps=3, num_frames=4, decode_chunk_size=2, seed=0, max_guidance_scale=guidance),
        model.spec,
    )
    state = stages.encode(model, image, params)
    assert waits == [pytest.approx(0.002)]  # one encode
    waits.clear()
    state = stages.denoise(model, state, range(3))  # the sampler's own loop, unchanged
    assert waits == [pytest.approx(per_call)] * 3
    waits.clear()
    frames = stages.decode(model, state, (0, 2))  # a 2-frame chunk waits 2 x 45 ms
    assert waits == [pytest.approx(0.090)] and frames.shape == (2, 64, 64, 3)


def test_unsimulated_parts_stay_real(image, waits):
    model = load_model("tiny", "fp32", "cpu")
    real_vae = model.pipe.vae
    install_stand_ins(model, SimulatedCosts(step_s=0.01))
    assert model.pipe.vae is real_vae and not isinstance(model.pipe.image_encoder, simulate.StandInImageEncoder)
    params = resolve_params(VideoParams(num_inference_steps=2, seed=0), model.spec)
    state = stages.denoise(model, stages.encode(model, image, params), range(2))
    assert waits == [pytest.approx(0.01)] * 2
    assert torch.isfinite(torch.as_tensor(stages.decode(model, state))).all()
