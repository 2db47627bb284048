"""The central promise: encode -> any split of the steps -> decode equals diffusers' pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from svdpipe import stages
from svdpipe.config import VideoParams, resolve_params
from svdpipe.models import load_model
from svdpipe.partition import partition_steps
from tests.conftest import diffusers_frames

TOLERANCE = 1e-5


def run_split(model, image, params, num_stages: int) -> np.ndarray:
    state = stages.encode(model, image, params, "req")
    for steps in partition_steps(params.num_inference_steps, num_stages):
        state = stages.denoise(model, state, steps)
    return stages.decode(model, state)


CASES = [
    # (steps, stages, extra params)
    (7, 3, {"seed": 0}),
    (25, 7, {"seed": 1, "num_frames": 3}),
    (4, 1, {"seed": 2, "max_guidance_scale": 1.0}),  # guidance off
    (5, 5, {"seed": 3, "min_guidance_scale": 1.5, "max_guidance_scale": 2.5}),
    (6, 4, {"seed": 4, "height": 48, "width": 80, "num_frames": 5}),  # non-square, uneven split
    (3, 2, {"seed": 5, "fps": 12, "motion_bucket_id": 30, "noise_aug_strength": 0.1, "decode_chunk_size": 2}),
]


@pytest.mark.parametrize(("steps", "num_stages", "extra"), CASES)
def test_split_equals_diffusers(tiny_model, reference_pipe, image, steps, num_stages, extra):
    params = resolve_params(VideoParams(num_inference_steps=steps, **extra), tiny_model.spec)
    ours = run_split(tiny_model, image, params, num_stages)
    ref = diffusers_frames(reference_pipe, image, params)
    assert ours.shape == ref.shape == (params.num_frames, params.height, params.width, 3)
    assert ours.dtype == np.float32
    assert float(np.abs(ours - ref).max()) <= TOLERANCE
    assert ours.min() >= 0.0 and ours.max() <= 1.0


def test_every_split_gives_the_same_frames(tiny_model, image):
    params = resolve_params(VideoParams(num_inference_steps=6, seed=11), tiny_model.spec)
    outputs = [run_split(tiny_model, image, params, n) for n in (1, 2, 3, 6)]
    for out in outputs[1:]:
        np.testing.assert_array_equal(out, outputs[0])


def test_seed_changes_output(tiny_model, image):
    a = run_split(tiny_model, image, resolve_params(VideoParams(num_inference_steps=2, seed=1), tiny_model.spec), 1)
    b = run_split(tiny_model, image, resolve_params(VideoParams(num_inference_steps=2, seed=2), tiny_model.spec), 1)
    assert float(np.abs(a - b).max()) > 1e-3


def test_saved_directory_round_trip(tmp_path, reference_pipe, image):
    reference_pipe.save_pretrained(tmp_path / "tiny")
    model = load_model(str(tmp_path / "tiny"), "fp32", "cpu")
    params = resolve_params(VideoParams(num_inference_steps=5, seed=7, num_frames=3), model.spec)
    ours = run_split(model, image, params, 2)
    ref = diffusers_frames(reference_pipe, image, params)
    assert float(np.abs(ours - ref).max()) <= TOLERANCE


def test_parts_loaded_separately_match(image, tiny_model):
    """Encoder, UNet and decoder built in different processes get identical weights (fixed seeds)."""
    enc = load_model("tiny", parts=["encoder"])
    unet = load_model("tiny", parts=["unet"])
    dec = load_model("tiny", parts=["decoder"])
    assert enc.pipe.unet is None and unet.pipe.vae is None and dec.pipe.image_encoder is None
    params = resolve_params(VideoParams(num_inference_steps=3, seed=9), tiny_model.spec)
    state = stages.encode(enc, image, params)
    state = stages.denoise(unet, state, range(0, 3))
    np.testing.assert_array_equal(stages.decode(dec, state), run_split(tiny_model, image, params, 1))


def test_denoise_rejects_a_state_at_the_wrong_step(tiny_model, image):
    params = resolve_params(VideoParams(num_inference_steps=4, seed=0), tiny_model.spec)
    state = stages.encode(tiny_model, image, params)
    with pytest.raises(RuntimeError, match="at step 0"):
        stages.denoise(tiny_model, state, range(2, 4))
    with pytest.raises(RuntimeError, match="decoded at step 0"):
        stages.decode(tiny_model, state)


def test_decode_chunks_equal_the_whole_decode(tiny_model, reference_pipe, image):
    """Each of diffusers' decode chunks, decoded on its own (as on another actor), equals those frames of the
    whole decode, which equals diffusers; uint8 video frames equal diffusers' own rounding."""
    from svdpipe.planner import decode_chunks
    from svdpipe.video import to_uint8

    params = resolve_params(
        VideoParams(num_inference_steps=3, num_frames=5, decode_chunk_size=2, seed=9), tiny_model.spec
    )
    state = stages.encode(tiny_model, image, params, "req")
    state = stages.denoise(tiny_model, state, range(3))
    whole = stages.decode(tiny_model, state)
    pieces = [stages.decode(tiny_model, state, chunk) for chunk in decode_chunks(5, 2)]
    np.testing.assert_array_equal(np.concatenate(pieces), whole)
    np.testing.assert_allclose(whole, diffusers_frames(reference_pipe, image, params), atol=TOLERANCE)
    np.testing.assert_array_equal(to_uint8(whole), (whole * 255).round().astype("uint8"))  # numpy_to_pil's rounding
    with pytest.raises(ValueError, match="decode chunks"):
        stages.decode(tiny_model, state, (1, 3))


def test_encode_leaves_the_shared_pipeline_alone(tiny_model, image):
    """encode must not touch shared state: two requests may be in one actor at once."""
    scheduler = tiny_model.pipe.scheduler
    before = (scheduler.num_inference_steps, scheduler.timesteps.clone() if scheduler.timesteps is not None else None)
    a = stages.encode(tiny_model, image, resolve_params(VideoParams(num_inference_steps=4, seed=1), tiny_model.spec))
    b = stages.encode(tiny_model, image, resolve_params(VideoParams(num_inference_steps=9, seed=1), tiny_model.spec))
    assert (a.num_steps, b.num_steps) == (4, 9)
    assert scheduler.num_inference_steps == before[0]
    if before[1] is not None:
        assert torch.equal(scheduler.timesteps, before[1])
    assert tiny_model.pipe.vae.dtype == torch.float32
