"""Request and engine configuration validation."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from svdpipe.config import EngineConfig, VideoParams, resolve_params
from svdpipe.errors import InvalidRequestError
from svdpipe.models import ModelSpec, model_spec

SVD = ModelSpec(default_height=768, default_width=768, default_num_frames=14, size_multiple=8)


def test_defaults_match_diffusers():
    p = VideoParams()
    assert (p.num_inference_steps, p.min_guidance_scale, p.max_guidance_scale) == (25, 1.0, 3.0)
    assert (p.fps, p.motion_bucket_id, p.noise_aug_strength) == (7, 127, 0.02)
    r = resolve_params(p, SVD)
    assert (r.height, r.width, r.num_frames, r.decode_chunk_size) == (768, 768, 14, 14)
    assert 0 <= r.seed < 2**63


def test_model_specs_from_configs():
    assert model_spec("tiny") == ModelSpec(64, 64, 4, 8, (32, 32, 32, 32), 32, (32, 64))
    assert model_spec("random-full") == ModelSpec(768, 768, 14, 8, (128, 256, 512, 512), 32, (320, 640, 1280, 1280))
    assert model_spec("random-full-xt").default_num_frames == 25


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_frames": 0}, "num_frames"),
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"min_guidance_scale": 3.0, "max_guidance_scale": 2.0}, "must not exceed"),
        ({"max_guidance_scale": -1}, "max_guidance_scale"),
        ({"fps": 0}, "fps"),
        ({"seed": -1}, "seed"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_request_fields(kwargs, message):
    with pytest.raises(ValidationError, match=message):
        VideoParams(**kwargs)


def test_size_must_match_the_vae():
    with pytest.raises(InvalidRequestError, match=r"multiples of 8.*Nearest valid: 576x1024"):
        resolve_params(VideoParams(height=574, width=1020), SVD)
    assert resolve_params(VideoParams(height=576, width=1024), SVD).width == 1024


def test_fewer_steps_than_stages_is_a_valid_request():
    # the planner gives such a request one stage per step (tests/unit/test_planner.py)
    assert resolve_params(VideoParams(num_inference_steps=1), SVD).num_inference_steps == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"transport": "nccl"}, "needs GPU actors"),
        ({"transport": "cuda_ipc"}, "needs GPU actors"),
        ({"transport": "nccl", "num_gpus_per_actor": 0.5}, "one GPU per actor"),
        ({"transport": "carrier-pigeon"}, "transport"),
        ({"num_stages": 0}, "num_stages"),
        ({"device": "cuda"}, "needs num_gpus_per_actor"),
    ],
)
def test_engine_config_errors(kwargs, message):
    with pytest.raises(ValidationError, match=message):
        EngineConfig(**kwargs)


def test_engine_config_is_frozen():
    cfg = EngineConfig()
    with pytest.raises(ValidationError):
        cfg.num_stages = 5  # type: ignore[misc]


TINY = model_spec("tiny")


@pytest.mark.parametrize(
    ("height", "width", "frames", "runs"),
    [
        # on the tiny model, checked by running each (its channels leave 1-value GroupNorm groups at 1x1 latents)
        (8, 8, 1, False),
        (8, 8, 256, False),  # the VAE encoder sees one image whatever the frames
        (8, 16, 1, False),  # the UNet's second level: 1x1 with one channel per group, one frame
        (8, 16, 2, True),
        (16, 16, 1, False),
        (16, 24, 1, True),
        (24, 24, 1, True),
        (8, 4096, 4, True),
    ],
)
def test_the_smallest_size_follows_from_the_models_norms(height, width, frames, runs):
    params = VideoParams(height=height, width=width, num_frames=frames)
    if runs:
        assert resolve_params(params, TINY).height == height
    else:
        with pytest.raises(InvalidRequestError, match=r"^height and width: .* too small .* it runs from \d+x\d+"):
            resolve_params(params, TINY)


def test_svd_runs_every_size_its_vae_divides():
    assert resolve_params(VideoParams(height=8, width=8, num_frames=1), SVD).height == 8


def test_the_video_pixel_cap_names_its_fields_and_limit():
    params = VideoParams(height=64, width=64, num_frames=5)
    assert resolve_params(params, TINY, max_video_pixels=5 * 64 * 64).num_frames == 5
    with pytest.raises(InvalidRequestError, match=r"^num_frames x height x width: 5x64x64 = 20480 .* limit of 16384"):
        resolve_params(params, TINY, max_video_pixels=16384)


def test_one_pixel_sides_are_repeated_for_clip_and_nothing_else_changes():
    import PIL.Image

    from svdpipe.images import clip_ready

    for size, fixed in [((1, 1), (2, 2)), ((1, 300), (2, 300)), ((300, 1), (300, 2))]:
        image = PIL.Image.new("RGB", size, (10, 20, 30))
        out = clip_ready(image)
        assert out.size == fixed and set(out.getdata()) == {(10, 20, 30)}
    image = PIL.Image.new("RGB", (2, 5))
    assert clip_ready(image) is image


def test_an_image_side_over_the_limit_is_rejected_by_name():
    import io

    import PIL.Image

    from svdpipe.images import load_image

    buf = io.BytesIO()
    PIL.Image.new("RGB", (300, 1)).save(buf, "PNG")
    assert load_image(buf.getvalue(), max_side=300).size == (300, 1)
    with pytest.raises(InvalidRequestError, match=r"^image: 300x1 has a side over the limit of 299"):
        load_image(buf.getvalue(), max_side=299)
