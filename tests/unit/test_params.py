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
    assert model_spec("tiny") == ModelSpec(64, 64, 4, 8)
    assert model_spec("random-full") == ModelSpec(768, 768, 14, 8)
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
