"""Accepted means done: every request the API's validation accepts runs to a video on the tiny model (local
engine, no Ray), over the API's parameter space and input images of any size (1 pixel, extreme aspect ratios).

Bounded so it stays fast: at most 3 denoising steps (the schedule of every accepted step count is checked on its
own below) and a deployment cap of 2**16 output pixels (num_frames x height x width), which still reaches the
fuzzer's failures (8x4096, 256 frames, 8x8).
"""

from __future__ import annotations

import io

import numpy as np
import PIL.Image
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from svdpipe.config import EngineConfig, VideoParams, resolve_params
from svdpipe.errors import InvalidRequestError
from svdpipe.images import load_image
from svdpipe.video import encode_video

MAX_VIDEO_PIXELS = 2**16
FIELDS = set(VideoParams.model_fields)


@pytest.fixture(scope="module")
def pipeline():
    from svdpipe.local import LocalPipeline

    return LocalPipeline(EngineConfig(model="tiny", num_stages=2, torch_threads=1, max_video_pixels=MAX_VIDEO_PIXELS))


@st.composite
def requests(draw: st.DrawFn) -> tuple[dict, str]:
    """API fields (None: left to the model's default) and an output format, sized to fit the pixel cap."""
    frames = draw(st.one_of(st.none(), st.integers(1, 4), st.integers(1, 256)))
    budget = MAX_VIDEO_PIXELS // ((frames or 4) * 64)  # in 8x8 blocks
    height_blocks = draw(st.integers(1, max(1, min(512, budget))))
    width_blocks = draw(st.integers(1, max(1, min(512, budget // height_blocks))))
    high = draw(st.one_of(st.sampled_from([0.0, 1.0, 100.0]), st.floats(0.0, 100.0)))
    fields = {
        "height": draw(st.sampled_from([None, 8 * height_blocks])),
        "width": draw(st.sampled_from([None, 8 * width_blocks])),
        "num_frames": frames,
        "num_inference_steps": draw(st.integers(1, 3)),
        "min_guidance_scale": draw(st.one_of(st.just(high), st.floats(0.0, high))),  # the schema: min <= max
        "max_guidance_scale": high,
        "fps": draw(st.integers(1, 240)),
        "motion_bucket_id": draw(st.integers(0, 1023)),
        "noise_aug_strength": draw(st.floats(0.0, 10.0)),
        "decode_chunk_size": draw(st.one_of(st.none(), st.integers(1, 256))),
        "seed": draw(st.one_of(st.none(), st.integers(0, 2**63 - 1))),
    }
    return fields, draw(st.sampled_from(["mp4", "webm", "gif"]))


@st.composite
def images(draw: st.DrawFn) -> bytes:
    """A PNG of any size up to 256 a side, 1-pixel and 1:256 shapes included, noise or flat, RGB or RGBA."""
    side = st.one_of(st.just(1), st.integers(1, 8), st.integers(1, 256))
    width, height = draw(side), draw(side)
    mode = draw(st.sampled_from(["RGB", "RGBA", "L"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    pixels = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
    buf = io.BytesIO()
    PIL.Image.fromarray(pixels[..., 0] if mode == "L" else pixels, mode).save(buf, "PNG")
    return buf.getvalue()


@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,  # the same examples on every run: a CI failure reproduces
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(request=requests(), png=images())
def test_every_accepted_request_completes(pipeline, request, png):
    fields, fmt = request
    # 1. the service's validation at the door (schema, image, model limits, the deployment's cap)
    params = VideoParams.model_validate({k: v for k, v in fields.items() if v is not None}, strict=False)
    image = load_image(png)
    try:
        resolved = resolve_params(params, pipeline.model.spec, MAX_VIDEO_PIXELS)
    except InvalidRequestError as exc:
        event("rejected")
        assert str(exc).split(":")[0] in {"height and width", "num_frames x height x width"}, exc
        return
    event("accepted")
    # 2. accepted: it must run to the end, video file included
    result = pipeline.generate(image, params.model_copy(update={"seed": resolved.seed}))
    assert result.frames.shape == (resolved.num_frames, resolved.height, resolved.width, 3)
    assert np.isfinite(result.frames).all()
    assert encode_video(result.frames, fmt, resolved.fps)


@pytest.mark.parametrize("steps", [1, 2, 3, 7, 25, 100, 999, 1000])
def test_every_accepted_step_count_has_a_schedule(steps):
    from diffusers import EulerDiscreteScheduler

    from svdpipe.architectures import SVD_SCHEDULER_CONFIG

    scheduler = EulerDiscreteScheduler(**SVD_SCHEDULER_CONFIG)
    scheduler.set_timesteps(steps)
    sigmas = scheduler.sigmas.numpy()
    assert len(scheduler.timesteps) == steps and np.isfinite(sigmas).all() and (np.diff(sigmas) <= 0).all()
